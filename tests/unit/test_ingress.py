"""shared.contract.ingress.admit: a request is admitted in the name its subject gives, or refused saying why."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from test_events import SAMPLES

from shared.contract.bounds import MAX_REQUEST_BYTES
from shared.contract.events import EnrollmentRequested, KeyDestroyed, RevocationRequested
from shared.contract.ingress import INTAKES, Refused, admit, ingress_subject, sender

ROOT = "certbus.in"
AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def _raw(event: object, **changes: object) -> bytes:
    data = json.loads(event.model_dump_json())  # type: ignore[attr-defined]
    data.update(changes)
    return json.dumps(data).encode()


def test_a_request_is_admitted_in_the_name_its_subject_gives_whatever_its_body_says() -> None:
    request = SAMPLES[EnrollmentRequested]
    admitted = admit(
        ingress_subject(ROOT, "mallory", "enroll"), ROOT, _raw(request, requester="alice"), AT, "enrollment"
    )
    event = admitted.event
    assert isinstance(event, EnrollmentRequested)
    assert (admitted.identity, admitted.kind, event.requester) == ("mallory", "enroll", "mallory")
    assert event.producer == "enrollment"
    assert event.accepted_at == AT
    assert event.event_id != request.event_id  # a fresh id: the requester's dedups its retries only
    assert event.causation_id == str(request.event_id)
    assert event.aggregate_id == request.aggregate_id and event.csr_pem == request.csr_pem


@pytest.mark.parametrize(
    ("kind", "event_type", "field"),
    [("revoke", RevocationRequested, "requested_by"), ("key_destroyed", KeyDestroyed, "destroyed_by")],
)
def test_every_kind_names_its_sender(kind: str, event_type: type, field: str) -> None:
    subject = ingress_subject(ROOT, "holder-7", kind)  # type: ignore[arg-type]
    admitted = admit(subject, ROOT, _raw(SAMPLES[event_type], **{field: "someone-else"}), AT, "revocation")
    assert getattr(admitted.event, field) == "holder-7"


def test_a_body_of_another_kind_is_refused_with_its_id() -> None:
    renewal = _raw(SAMPLES[RevocationRequested], aggregate_id="req-42")
    with pytest.raises(Refused) as refused:
        admit(ingress_subject(ROOT, "tests", "enroll"), ROOT, renewal, AT, "enrollment")
    assert (refused.value.code, refused.value.request_id) == ("request_malformed", "req-42")
    assert "must be a EnrollmentRequested" in refused.value.message


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"event_type": "EnrollmentRequested"}',
        b"{" * 40 + b"}" * 40,
        b" " * (MAX_REQUEST_BYTES + 1),
    ],
    ids=["not-json", "array", "missing-fields", "deep", "oversize"],
)
def test_junk_is_refused_as_malformed(raw: bytes) -> None:
    with pytest.raises(Refused) as refused:
        admit(ingress_subject(ROOT, "tests", "enroll"), ROOT, raw, AT, "enrollment")
    assert refused.value.code == "request_malformed"


def test_a_hostile_value_is_not_echoed_whole() -> None:
    raw = _raw(SAMPLES[EnrollmentRequested], csr_pem="X" * 60_000)
    with pytest.raises(Refused) as refused:
        admit(ingress_subject(ROOT, "tests", "enroll"), ROOT, raw, AT, "enrollment")
    assert len(refused.value.message) < 500 and "csr_pem" in refused.value.message


@pytest.mark.parametrize(
    "subject",
    [
        f"{ROOT}.tests",
        f"{ROOT}.tests.enroll.extra",
        f"{ROOT}.tests.issue",
        "elsewhere.tests.enroll",
        f"{ROOT}.a b.enroll",
    ],
)
def test_only_ingress_subjects_name_a_sender(subject: str) -> None:
    with pytest.raises(Refused):
        sender(subject, ROOT)


def test_an_identity_must_be_one_subject_token() -> None:
    with pytest.raises(ValueError):
        ingress_subject(ROOT, "a.b", "enroll")
    assert set(INTAKES) == {"enroll", "renew", "revoke", "key_destroyed"}
    assert sender(ingress_subject(ROOT, f"x{uuid.uuid4().hex[:8]}", "renew"), ROOT)[1] == "renew"
