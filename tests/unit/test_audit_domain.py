"""The audit hash chain and what an archived event says about itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from test_audit_samples import ROOT, event

from services.audit.domain import GENESIS, actor, canonical, describe, exact_subject, link

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
    raw = event("CertificateIssued", aggregate_id="req-1", serial="abc")
    described = describe("pki.cert.req-1.issued", raw, root=ROOT)
    assert described.event_id == uuid.UUID("0b7e4f3c-6c7e-4b9a-9a39-5a3e0c7c1f00")
    assert described.event_type == "CertificateIssued"
    assert described.aggregate_id == "req-1"
    assert described.producer == "signing"
    assert described.occurred_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert described.serial == "abc"
    assert described.problem is None


def test_describe_takes_cert_id_from_a_cert_event() -> None:
    assert describe("pki.cert.req-1.issued", event("CertificateIssued", aggregate_id="req-1"), root=ROOT).cert_id == (
        "req-1"
    )


def test_describe_gives_no_cert_id_for_other_aggregates() -> None:
    assert describe("pki.ca.ca1.created", event("CaCreated"), root=ROOT).cert_id is None


def test_describe_ignores_a_non_string_serial_and_flags_the_event() -> None:
    described = describe("pki.cert.r1.issued", event("CertificateIssued", serial=171), root=ROOT)
    assert (described.serial, described.event_type, described.aggregate_id) == (None, "CertificateIssued", "r1")
    assert described.problem is not None and described.problem.check == "malformed"
    assert "serial" in described.problem.detail


def test_describe_of_an_object_without_event_type_is_an_unknown_type() -> None:
    described = describe("pki.cert.req-1.issued", b"{}", root=ROOT)
    assert (described.event_type, described.cert_id, described.aggregate_id) == ("unknown_type", None, None)


def test_describe_of_an_event_on_another_types_subject_indexes_nothing_of_it() -> None:
    described = describe("pki.cert.req-1.requested", event("ProvisionerRegistered"), root=ROOT)
    assert described.event_type == "subject_mismatch"
    assert (described.aggregate_id, described.producer, described.occurred_at, described.serial) == (None,) * 4
    assert described.problem is not None and "ProvisionerRegistered" in described.problem.detail


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe\xfa", b"[" * 100_000, b"9" * 5000],
    ids=["broken_json", "empty", "array", "string", "invalid_utf8", "deep", "huge_number"],
)
def test_describe_of_a_payload_that_is_no_json_object_is_malformed(raw: bytes) -> None:
    described = describe("pki.cert.req-1.issued", raw, root=ROOT)
    assert described.event_type == "malformed"
    assert described.cert_id is None


def test_describe_of_a_payload_over_the_bounds_is_oversize_and_not_parsed() -> None:
    raw = event("EnrollmentRequested", token="x" * 250_000)
    assert describe("pki.cert.r1.requested", raw, root=ROOT).event_type == "oversize"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("event_id", ["0b7e4f3c-6c7e-4b9a-9a39-5a3e0c7c1f00"]),
        ("producer", ["enrollment"]),
        ("producer", "x" * 50_000),
        ("producer", "\x00\ud800"),
        ("occurred_at", "yesterday"),
        ("occurred_at", "0001-01-01T00:00:00+14:00"),
        ("occurred_at", "9999-12-31T23:59:59-14:00"),
        ("occurred_at", 1700000000),
    ],
)
def test_describe_indexes_a_field_only_if_it_is_sane(field: str, value: object) -> None:
    described = describe("pki.cert.r1.requested", event("EnrollmentRequested", **{field: value}), root=ROOT)
    assert described.event_type == "EnrollmentRequested" and described.aggregate_id == "r1"
    indexed = {"event_id": described.event_id, "producer": described.producer, "occurred_at": described.occurred_at}
    shown = indexed[field]
    assert shown is None or (isinstance(shown, str) and len(shown) <= 128 and "\x00" not in shown), shown
    shown.encode() if isinstance(shown, str) else None  # no lone surrogate either


def test_a_subject_the_text_column_cannot_hold_is_kept_exactly_for_the_chain() -> None:
    subject = "pki.cert.a\x00b.requested"
    described = describe(subject, b"{}", root=ROOT)
    assert "\x00" not in described.subject and described.subject_exact == subject.encode()
    assert exact_subject(described.subject, described.subject_exact) == subject
    plain = describe("pki.cert.r1.requested", b"{}", root=ROOT)
    assert (plain.subject, plain.subject_exact) == ("pki.cert.r1.requested", None)


def test_the_chain_covers_a_subject_that_is_not_utf8_as_its_own_bytes() -> None:
    subject = b"pki.cert.\xff.requested".decode("utf-8", "surrogateescape")
    assert canonical(1, subject, b"{}") == b"1\npki.cert.\xff.requested\n{}"


def test_the_actor_is_the_person_named_else_the_service() -> None:
    assert actor({"producer": "requester", "requester": "alice"}) == "alice"
    assert actor({"producer": "enrollment", "requester": "alice", "approved_by": "policy"}) == ("enrollment (policy)")
    assert actor({"producer": "enrollment", "requester": "alice", "approved_by": "bob"}) == "bob"
    assert actor({"producer": "operator", "operator": "carol"}) == "carol"
    # an operator's command: whoever signed it, not the name it carries
    signed = [{"operator": "alice", "signature": "c2ln"}, {"operator": "bob", "signature": "c2ln"}]
    assert actor({"producer": "operator", "operator": "carol", "signatures": signed}) == "alice+bob"
    assert actor({"producer": "signing", "serial": "ab"}) == "signing"
    # a certificate names its requester, but signing issued it
    issued = {"event_type": "CertificateIssued", "producer": "signing", "serial": "ab", "requester": "alice"}
    assert actor(issued) == "signing"
    assert actor({"producer": "requester", "requested_by": "eve\x00\x1b[2J"}) == "eve\\x00\\x1b[2J"


def test_the_actor_of_an_event_with_fields_of_any_type_is_still_text() -> None:
    assert actor({"producer": ["signing"], "operator": {"name": "x"}}) == "?"
    assert actor({"producer": None, "requester": 7, "approved_by": "policy"}) == "? (policy)"
    assert actor({"producer": "\ud800" * 500}).encode() and len(actor({"producer": "p" * 10_000})) <= 128


def test_a_serial_as_a_requester_typed_it_is_indexed_normalised() -> None:
    raw = event("RevocationRequested", aggregate_id="rev-1", serial="0x00:AB:C")
    assert describe("pki.revoke.rev-1.requested", raw, root=ROOT).serial == "abc"
