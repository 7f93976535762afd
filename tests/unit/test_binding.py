"""An event is what its subject says it is: shared.contract.binding.bind, the check every consumer runs."""

from __future__ import annotations

import json

import pytest
from test_events import SAMPLES

from shared.contract.binding import Unbound, bind, loads, publisher_of, subject_class
from shared.contract.bounds import MAX_EVENT_BYTES, MAX_JSON_DEPTH
from shared.contract.events import (
    EVENT_TYPES,
    CertificateIssued,
    Event,
    ProvisionerRegistered,
    RevocationOrdered,
    event_from,
)

ROOT = "pki"


def _raw(event: Event, **changes: object) -> bytes:
    data = json.loads(event.model_dump_json())
    data.update(changes)
    return json.dumps(data).encode()


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_every_event_binds_on_its_own_subject(event_type: type[Event]) -> None:
    event = SAMPLES[event_type]
    data = bind(event.subject(ROOT), ROOT, event.model_dump_json().encode())
    assert event_from(data) == event


def test_a_body_on_another_types_subject_is_refused() -> None:
    forged = SAMPLES[ProvisionerRegistered]
    with pytest.raises(Unbound) as caught:
        bind(f"{ROOT}.cert.{forged.aggregate_id}.requested", ROOT, forged.model_dump_json().encode())
    assert caught.value.code == "subject_mismatch"
    assert "EnrollmentRequested" in str(caught.value)


def test_a_body_naming_another_aggregate_is_refused() -> None:
    issued = SAMPLES[CertificateIssued]
    with pytest.raises(Unbound) as caught:
        bind(issued.subject(ROOT), ROOT, _raw(issued, aggregate_id="someone-else"))
    assert caught.value.code == "subject_mismatch"


def test_an_event_under_another_root_is_refused() -> None:
    order = SAMPLES[RevocationOrdered]
    with pytest.raises(Unbound):
        bind(order.subject("other"), ROOT, order.model_dump_json().encode())


def test_a_consumer_takes_only_the_types_it_asks_for() -> None:
    order = SAMPLES[RevocationOrdered]
    with pytest.raises(Unbound) as caught:
        bind(order.subject(ROOT), ROOT, order.model_dump_json().encode(), accept=(CertificateIssued,))
    assert caught.value.code == "subject_mismatch"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[1, 2]", "malformed"),
        (b"null", "malformed"),
        (b'{"event_type": ["CertificateIssued"]}', "unknown_type"),
        (b'{"event_type": "Nope"}', "unknown_type"),
        (b"[" * 50_000 + b"]" * 50_000, "malformed"),
        (
            json.dumps(
                {
                    "event_type": "CertificateIssued",
                    "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
                }
            ).encode(),
            "malformed",
        ),
        (b" " * (MAX_EVENT_BYTES + 1), "oversize"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "null",
        "type-is-list",
        "unknown-type",
        "deep-array",
        "deep-object",
        "oversize",
    ],
)
def test_junk_is_refused_with_its_reason(raw: bytes, code: str) -> None:
    with pytest.raises(Unbound) as caught:
        bind(f"{ROOT}.cert.x.issued", ROOT, raw)
    assert caught.value.code == code


def test_a_huge_aggregate_id_is_a_mismatch_not_a_crash() -> None:
    issued = SAMPLES[CertificateIssued]
    raw = _raw(issued, aggregate_id="a" * 50_000)
    with pytest.raises(Unbound) as caught:
        bind(issued.subject(ROOT), ROOT, raw)
    assert caught.value.code == "subject_mismatch"
    assert len(str(caught.value)) < 1000  # the reason quotes it cut short


def test_nesting_at_the_limit_is_accepted_by_loads() -> None:
    nested: object = []
    for _ in range(MAX_JSON_DEPTH - 2):
        nested = [nested]
    assert loads(json.dumps({"a": nested}).encode())


@pytest.mark.parametrize(
    ("subject", "publisher"),
    [
        ("pki.cert.r1.issued", "signing"),
        ("pki.cert.r1.requested", "enrollment"),
        ("pki.revoke.r1.ordered", "operator"),
        ("pki.cert.r1.nothing", None),
        ("pki.cert.issued", None),
        ("other.cert.r1.issued", None),
    ],
)
def test_the_subject_names_the_publisher(subject: str, publisher: str | None) -> None:
    assert publisher_of(subject, ROOT) == publisher
    assert (subject_class(subject, ROOT) is None) == (publisher is None)
