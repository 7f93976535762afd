"""The audit hash chain and what an archived event says about itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from services.audit.domain import GENESIS, actor, canonical, describe, link

EVENTS = [
    (1, "pki.cert.req-1.requested", b'{"event_type": "EnrollmentRequested", "n": 1}'),
    (2, "pki.cert.req-1.approved", b'{"event_type": "EnrollmentApproved", "n": 2}'),
    (3, "pki.cert.req-1.issued", b'{"event_type": "CertificateIssued", "n": 3}'),
]


def _head(events: list[tuple[int, str, bytes]]) -> bytes:
    head = GENESIS
    for seq, subject, raw in events:
        head = link(head, seq, subject, raw)
    return head


def test_link_is_deterministic() -> None:
    assert _head(EVENTS) == _head(list(EVENTS))


def test_link_is_a_sha256_digest() -> None:
    assert len(_head(EVENTS)) == 32


def test_genesis_is_32_zero_bytes() -> None:
    assert bytes(32) == GENESIS


def test_canonical_covers_seq_subject_and_payload() -> None:
    assert canonical(7, "pki.cert.x.issued", b"{}") == b"7\npki.cert.x.issued\n{}"


def test_changing_one_byte_changes_the_head() -> None:
    seq, subject, raw = EVENTS[1]
    tampered = [EVENTS[0], (seq, subject, raw.replace(b"2", b"9")), EVENTS[2]]
    assert _head(tampered) != _head(EVENTS)


def test_swapping_two_events_changes_the_head() -> None:
    swapped = [EVENTS[1], EVENTS[0], EVENTS[2]]
    assert _head(swapped) != _head(EVENTS)


def test_swapping_payloads_but_keeping_seqs_changes_the_head() -> None:
    (s1, subj1, raw1), (s2, subj2, raw2) = EVENTS[0], EVENTS[1]
    swapped = [(s1, subj2, raw2), (s2, subj1, raw1), EVENTS[2]]
    assert _head(swapped) != _head(EVENTS)


def test_changing_the_seq_changes_the_head() -> None:
    seq, subject, raw = EVENTS[1]
    renumbered = [EVENTS[0], (seq + 10, subject, raw), EVENTS[2]]
    assert _head(renumbered) != _head(EVENTS)


def test_changing_the_subject_changes_the_head() -> None:
    seq, _, raw = EVENTS[1]
    moved = [EVENTS[0], (seq, "pki.cert.req-2.approved", raw), EVENTS[2]]
    assert _head(moved) != _head(EVENTS)


def test_dropping_an_event_changes_the_head() -> None:
    assert _head([EVENTS[0], EVENTS[2]]) != _head(EVENTS)


def test_each_link_depends_on_the_previous_hash() -> None:
    seq, subject, raw = EVENTS[0]
    assert link(GENESIS, seq, subject, raw) != link(b"\x01" * 32, seq, subject, raw)


def test_describe_reads_the_envelope() -> None:
    raw = json.dumps(
        {
            "event_id": "0b7e4f3c-6c7e-4b9a-9a39-5a3e0c7c1f00",
            "event_type": "CertificateIssued",
            "aggregate_id": "req-1",
            "producer": "signing",
            "occurred_at": "2026-01-01T00:00:00+00:00",
            "serial": "abc",
        }
    ).encode()
    described = describe("pki.cert.req-1.issued", raw)
    assert described.event_id == "0b7e4f3c-6c7e-4b9a-9a39-5a3e0c7c1f00"
    assert described.event_type == "CertificateIssued"
    assert described.aggregate_id == "req-1"
    assert described.producer == "signing"
    assert described.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert described.serial == "abc"


def test_describe_takes_cert_id_from_a_cert_subject() -> None:
    assert describe("pki.cert.req-1.issued", b"{}").cert_id == "req-1"


def test_describe_gives_no_cert_id_for_other_aggregates() -> None:
    assert describe("pki.ca.issuing-1.created", b"{}").cert_id is None


def test_describe_ignores_a_non_string_serial() -> None:
    assert describe("pki.cert.req-1.issued", b'{"serial": 171}').serial is None


def test_describe_of_object_without_event_type_is_unknown() -> None:
    assert describe("pki.cert.req-1.issued", b"{}").event_type == "unknown"


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe\xfa", b'{"occurred_at": "yesterday"}'],
    ids=["broken_json", "empty", "array", "string", "invalid_utf8", "bad_occurred_at"],
)
def test_describe_of_malformed_payload_is_malformed(raw: bytes) -> None:
    described = describe("pki.cert.req-1.issued", raw)
    assert described.event_type == "malformed"
    assert described.cert_id is None


def test_describe_of_deeply_nested_payload_is_malformed() -> None:
    assert describe("pki.cert.req-1.issued", b"[" * 100_000).event_type == "malformed"


def test_the_actor_is_the_person_named_else_the_service() -> None:
    assert actor({"producer": "requester", "requester": "alice"}) == "alice"
    assert actor({"producer": "enrollment", "requester": "alice", "approved_by": "policy"}) == ("enrollment (policy)")
    assert actor({"producer": "enrollment", "requester": "alice", "approved_by": "bob"}) == "bob"
    assert actor({"producer": "operator", "operator": "carol"}) == "carol"
    assert actor({"producer": "signing", "serial": "ab"}) == "signing"
    assert actor({"producer": "requester", "requested_by": "eve\x00\x1b[2J"}) == "eve\\x00\\x1b[2J"
