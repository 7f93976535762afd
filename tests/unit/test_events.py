"""Event schemas: parsing, strictness, subjects and filters."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pydantic
import pytest

from pki_builders import NOW, shipped_profiles
from shared.contract.events import (
    EVENT_TYPES,
    PRODUCERS,
    ApprovalDenied,
    ApprovalGranted,
    AuditCheckpointSigned,
    AuditFindingRaised,
    CaCompromised,
    CaCreated,
    CaKeyDestroyed,
    CaRetired,
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateLintFailed,
    CertificateRenewalDue,
    CertificateRevoked,
    CertificateSuperseded,
    CrlPublished,
    DestructionOrdered,
    EnrollmentApproved,
    EnrollmentPending,
    EnrollmentRejected,
    EnrollmentRequested,
    Event,
    IssuanceRefused,
    IssuingCaCertified,
    IssuingCaKeyGenerated,
    KeyBlocked,
    KeyDestroyed,
    LintResult,
    OperatorCommand,
    OperatorRegistered,
    OperatorRemoved,
    OperatorSignature,
    ProfileApplied,
    ProfileLinted,
    ProvisionerDisabled,
    ProvisionerRegistered,
    ProvisionerRemoved,
    QuorumSet,
    RenewalRequested,
    RevocationOrdered,
    RevocationRejected,
    RevocationRequested,
    RootCaCreated,
    RootCrlSigned,
    event_json_schemas,
    operator_message,
    parse_event,
    revocation_message,
)
from shared.contract.reasons import Reason

ENVELOPE: dict[str, Any] = {
    "aggregate_id": "req-1",
    "occurred_at": NOW,
    "correlation_id": "corr-1",
    "causation_id": "cause-1",
}
PEM = "-----BEGIN X-----\nAA==\n-----END X-----\n"
PROFILE = shipped_profiles()["high-assurance"]
FINDING = LintResult(severity="ERROR", code="pkix.example_finding", message="bad", key_type="rsa")

SAMPLES: dict[type[Event], Event] = {
    ProvisionerRegistered: ProvisionerRegistered(
        **ENVELOPE, producer="operator", name="prov-1", public_key_pem=PEM, registered_by="ops"
    ),
    ProvisionerDisabled: ProvisionerDisabled(**ENVELOPE, producer="operator", reason="key lost", disabled_by="ops"),
    ProvisionerRemoved: ProvisionerRemoved(**ENVELOPE, producer="operator", removed_by="ops"),
    ProfileApplied: ProfileApplied(
        **{**ENVELOPE, "aggregate_id": PROFILE.name},
        producer="operator",
        profile=PROFILE,
        digest=PROFILE.digest(),
        applied_by="ops",
    ),
    ProfileLinted: ProfileLinted(
        **{**ENVELOPE, "aggregate_id": PROFILE.name},
        producer="signing",
        digest=PROFILE.digest(),
        issuer_id="issuing-1",
        usable=False,
        findings=[FINDING],
    ),
    KeyBlocked: KeyBlocked(
        **{**ENVELOPE, "aggregate_id": "44" * 32},
        producer="operator",
        spki_sha256="44" * 32,
        reason="keyCompromise",
        blocked_by="alice",
    ),
    EnrollmentRequested: EnrollmentRequested(
        **ENVELOPE, producer="enrollment", csr_pem=PEM, token="a.b.c", token_proof="sig", requester="alice"
    ),
    EnrollmentApproved: EnrollmentApproved(
        **ENVELOPE,
        producer="enrollment",
        csr_pem=PEM,
        profile="high-assurance",
        dns_names=["www.example.internal"],
        ip_addresses=["10.0.0.1"],
        validity_days=90,
        provisioner_id="prov-1",
        token_id="tok-1",
        requester="alice",
        emails=["ops@example.internal"],
        profile_digest=PROFILE.digest(),
        approved_by="bob",
    ),
    EnrollmentPending: EnrollmentPending(
        **ENVELOPE,
        producer="enrollment",
        profile="high-assurance",
        dns_names=["www.example.internal"],
        ip_addresses=["10.0.0.1"],
        emails=["ops@example.internal"],
        validity_days=90,
        requester="alice",
        expires_at=NOW + timedelta(hours=72),
    ),
    ApprovalGranted: ApprovalGranted(**ENVELOPE, producer="operator", operator="bob", comment="checked by phone"),
    ApprovalDenied: ApprovalDenied(**ENVELOPE, producer="operator", operator="bob", reason="unknown service"),
    EnrollmentRejected: EnrollmentRejected(
        **ENVELOPE,
        producer="enrollment",
        reasons=[Reason(code="key_weak", message="too weak")],
        rejected_by="enrollment",
    ),
    CertificateIssued: CertificateIssued(
        **ENVELOPE,
        producer="signing",
        serial="abc123",
        issuer_id="issuing-1",
        profile="tls-server",
        cert_pem=PEM,
        chain_pem=PEM,
        not_before=NOW,
        not_after=NOW + timedelta(days=90),
        dns_names=["www.example.internal"],
        spki_sha256="00" * 32,
        fingerprint_sha256="11" * 32,
    ),
    CertificateRevoked: CertificateRevoked(
        **ENVELOPE,
        producer="revocation",
        serial="abc123",
        issuer_id="issuing-1",
        reason="keyCompromise",
        revoked_at=NOW,
        revocation_request_id="rev-1",
        requested_by="alice",
        authorised_by="holder",
    ),
    RevocationRequested: RevocationRequested(
        **ENVELOPE, producer="revocation", serial="0xABC123", reason="superseded", requested_by="alice", proof="AAAA"
    ),
    RevocationOrdered: RevocationOrdered(
        **ENVELOPE, producer="operator", serial="abc123", reason="keyCompromise", operator="bob"
    ),
    RevocationRejected: RevocationRejected(
        **ENVELOPE,
        producer="revocation",
        serial="abc123",
        reason=Reason(code="serial_unknown", message="no such serial"),
    ),
    CaCreated: CaCreated(
        **ENVELOPE,
        producer="signing",
        ca_id="issuing-1",
        role="issuing",
        parent_id="root-1",
        subject_dn="CN=Issuing",
        cert_pem=PEM,
        not_before=NOW,
        not_after=NOW + timedelta(days=365),
        spki_sha256="22" * 32,
    ),
    CrlPublished: CrlPublished(
        **ENVELOPE,
        producer="signing",
        ca_id="issuing-1",
        crl_number=7,
        this_update=NOW,
        next_update=NOW + timedelta(days=7),
        revoked_count=3,
        object_bucket="crls",
        object_name="issuing-1.crl",
        sha256="33" * 32,
        size=512,
    ),
    CertificateRenewalDue: CertificateRenewalDue(
        **ENVELOPE, producer="enrollment", serial="abc123", issuer_id="issuing-1", due_at=NOW, cause="ca_compromise"
    ),
    RenewalRequested: RenewalRequested(
        **ENVELOPE, producer="enrollment", csr_pem=PEM, renews_serial="abc123", proof="c2ln", requester="svc"
    ),
    CertificateSuperseded: CertificateSuperseded(
        **ENVELOPE,
        producer="enrollment",
        serial="abc123",
        issuer_id="issuing-1",
        superseded_by="def456",
        superseded_by_id="req-2",
        not_after=NOW,
    ),
    CertificateExpired: CertificateExpired(
        **ENVELOPE, producer="enrollment", serial="abc123", issuer_id="issuing-1", not_after=NOW
    ),
    KeyDestroyed: KeyDestroyed(
        **ENVELOPE,
        producer="revocation",
        serial="abc123",
        spki_sha256="33" * 32,
        destroyed_at=NOW,
        destroyed_by="svc",
        proof="c2ln",
        public_key="cHVi",
    ),
    CertificateDestroyed: CertificateDestroyed(
        **ENVELOPE,
        producer="revocation",
        serial="abc123",
        issuer_id="issuing-1",
        fingerprint_sha256="44" * 32,
        destroyed_at=NOW,
        destruction_request_id="req-9",
        ordered_by="alice",
        reason="service decommissioned",
    ),
    DestructionOrdered: DestructionOrdered(
        **ENVELOPE, producer="operator", serial="abc123", operator="alice", reason="service decommissioned"
    ),
    CaCompromised: CaCompromised(
        **ENVELOPE, producer="operator", ca_id="issuing-1", reason="key copied off the HSM", declared_by="alice"
    ),
    CaRetired: CaRetired(**ENVELOPE, producer="operator", ca_id="issuing-1", reason="rotated", retired_by="alice"),
    RootCaCreated: RootCaCreated(
        **ENVELOPE,
        producer="operator",
        ca_id="root-1",
        subject_dn="CN=Certbus Root CA root-1,O=Certbus",
        cert_pem="-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
        not_before=NOW,
        not_after=NOW,
        spki_sha256="33" * 32,
        created_by="alice",
    ),
    IssuingCaCertified: IssuingCaCertified(
        **ENVELOPE,
        producer="operator",
        ca_id="issuing-1",
        parent_id="root-1",
        subject_dn="CN=Certbus Issuing CA issuing-1,O=Certbus",
        cert_pem="-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
        root_cert_pem="-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n",
        not_before=NOW,
        not_after=NOW,
        spki_sha256="44" * 32,
        certified_by="alice",
    ),
    RootCrlSigned: RootCrlSigned(
        **ENVELOPE,
        producer="operator",
        ca_id="root-1",
        crl_number=2,
        this_update=NOW,
        next_update=NOW,
        revoked_count=1,
        crl_pem="-----BEGIN X509 CRL-----\n...\n-----END X509 CRL-----\n",
        sha256="55" * 32,
        signed_by="alice",
    ),
    IssuingCaKeyGenerated: IssuingCaKeyGenerated(
        **ENVELOPE,
        producer="signing",
        ca_id="issuing-2",
        parent_id="root-1",
        csr_pem="-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n",
        spki_sha256="66" * 32,
        key_type="ec-p384",
    ),
    CaKeyDestroyed: CaKeyDestroyed(
        **ENVELOPE, producer="signing", ca_id="issuing-1", spki_sha256="22" * 32, destroyed_at=NOW, final_crl_number=8
    ),
    CertificateLintFailed: CertificateLintFailed(
        **ENVELOPE,
        producer="signing",
        stage="pre-release",
        request_id="req-1",
        serial="abc123",
        profile="tls-server",
        findings=[FINDING],
    ),
    IssuanceRefused: IssuanceRefused(
        **ENVELOPE, producer="signing", reasons=[Reason(code="ca_compromised", message="the CA may not issue")]
    ),
    OperatorRegistered: OperatorRegistered(
        **{**ENVELOPE, "aggregate_id": "alice"},
        producer="operator",
        public_key="MCowBQYDK2VwAyEA" + "A" * 44,
        registered_by="alice",
        signatures=[OperatorSignature(operator="alice", signature="c2ln")],
    ),
    OperatorRemoved: OperatorRemoved(
        **{**ENVELOPE, "aggregate_id": "bob"}, producer="operator", reason="left", removed_by="alice"
    ),
    QuorumSet: QuorumSet(
        **{**ENVELOPE, "aggregate_id": "ca_compromise"}, producer="operator", required=2, set_by="alice"
    ),
    AuditFindingRaised: AuditFindingRaised(
        **{**ENVELOPE, "aggregate_id": "approval-7"},
        producer="audit",
        check="approval",
        stream_seq=7,
        detail="certificate abc for request r has 0 approved enrollments before it, not 1",
    ),
    AuditCheckpointSigned: AuditCheckpointSigned(
        **{**ENVELOPE, "aggregate_id": "42"},
        producer="audit",
        stream_seq=42,
        chain_hash="ab" * 32,
        events=42,
        signed_at=NOW,
        public_key="AAAA",
        signature="BBBB",
    ),
}


def _json(event: Event, **changes: Any) -> str:
    data = json.loads(event.model_dump_json())
    data.update(changes)
    return json.dumps(data)


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


def test_every_event_type_has_a_producer() -> None:
    assert set(PRODUCERS) == {cls.__name__ for cls in EVENT_TYPES}


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_parse_event_round_trips(event_type: type[Event]) -> None:
    event = SAMPLES[event_type]
    parsed = parse_event(event.model_dump_json())
    assert type(parsed) is event_type
    assert parsed == event


def test_parse_event_accepts_bytes() -> None:
    event = SAMPLES[CertificateRevoked]
    assert parse_event(event.model_dump_json().encode()) == event


def test_parse_event_refuses_unknown_event_type() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(_json(SAMPLES[CertificateRevoked], event_type="CertificateHeld"))


def test_parse_event_refuses_extra_field() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(_json(SAMPLES[CertificateRevoked], is_admin=True))


def test_parse_event_refuses_missing_field() -> None:
    data = json.loads(SAMPLES[CertificateRevoked].model_dump_json())
    del data["serial"]
    with pytest.raises(pydantic.ValidationError):
        parse_event(json.dumps(data))


def test_parse_event_refuses_non_json() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(b"not json")


def test_parse_event_refuses_upper_case_issued_serial() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(_json(SAMPLES[CertificateIssued], serial="ABC123"))


def test_event_types_are_fixed_by_class() -> None:
    with pytest.raises(pydantic.ValidationError):
        CertificateRevoked.model_validate(
            {**json.loads(SAMPLES[CertificateRevoked].model_dump_json()), "event_type": "CertificateIssued"}
        )


def test_events_are_immutable() -> None:
    with pytest.raises(pydantic.ValidationError):
        SAMPLES[CertificateRevoked].reason = "superseded"  # type: ignore[misc]


def test_events_get_distinct_random_ids() -> None:
    first = RevocationRequested(**ENVELOPE, producer="requester", serial="1", reason="superseded", requested_by="a")
    second = RevocationRequested(**ENVELOPE, producer="requester", serial="1", reason="superseded", requested_by="a")
    assert first.event_id != second.event_id
    assert first.event_id.version == 4


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        (EnrollmentRequested, "pki.cert.req-1.requested"),
        (EnrollmentApproved, "pki.cert.req-1.approved"),
        (CertificateIssued, "pki.cert.req-1.issued"),
        (RevocationRequested, "pki.revoke.req-1.requested"),
        (RevocationOrdered, "pki.revoke.req-1.ordered"),
        (CrlPublished, "pki.ca.req-1.crl_published"),
        (ProvisionerRegistered, "pki.provisioner.req-1.registered"),
        (ProvisionerDisabled, "pki.provisioner.req-1.disabled"),
        (ProvisionerRemoved, "pki.provisioner.req-1.removed"),
        (ProfileApplied, "pki.profile.high-assurance.applied"),
        (ProfileLinted, "pki.profile.high-assurance.linted"),
        (KeyBlocked, f"pki.key.{'44' * 32}.blocked"),
        (EnrollmentPending, "pki.cert.req-1.pending"),
        (ApprovalGranted, "pki.cert.req-1.granted"),
        (ApprovalDenied, "pki.cert.req-1.denied"),
        (CertificateLintFailed, "pki.finding.req-1.lint_failed"),
        (CaCompromised, "pki.ca.req-1.compromised"),
        (CaKeyDestroyed, "pki.ca.req-1.key_destroyed"),
        (IssuingCaKeyGenerated, "pki.ca.req-1.key_generated"),
        (CertificateRenewalDue, "pki.cert.req-1.renewal_due"),
        (RenewalRequested, "pki.cert.req-1.renewal_requested"),
        (CertificateSuperseded, "pki.cert.req-1.superseded"),
        (CertificateExpired, "pki.cert.req-1.expired"),
        (CertificateDestroyed, "pki.cert.req-1.destroyed"),
        (KeyDestroyed, "pki.key.req-1.destroyed"),
        (DestructionOrdered, "pki.revoke.req-1.destroy_ordered"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else v,
)
def test_subject_is_root_aggregate_id_verb(event_type: type[Event], subject: str) -> None:
    assert SAMPLES[event_type].subject("pki") == subject


@pytest.mark.parametrize(
    ("event_type", "pattern"),
    [
        (EnrollmentApproved, "pki.cert.*.approved"),
        (CertificateRevoked, "pki.cert.*.revoked"),
        (RevocationRejected, "pki.revoke.*.rejected"),
        (RevocationOrdered, "pki.revoke.*.ordered"),
        (CaCreated, "pki.ca.*.created"),
        (ProfileApplied, "pki.profile.*.applied"),
        (KeyBlocked, "pki.key.*.blocked"),
        (EnrollmentPending, "pki.cert.*.pending"),
        (CertificateLintFailed, "pki.finding.*.lint_failed"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else v,
)
def test_filter_matches_every_aggregate(event_type: type[Event], pattern: str) -> None:
    assert event_type.filter("pki") == pattern


@pytest.mark.parametrize(
    "aggregate_id",
    ["a.b", "*", ">", "", "a" * 65, "a b", "req-1\n", "a/b"],
    ids=["dot", "star", "gt", "empty", "too_long", "space", "trailing_newline", "slash"],
)
def test_aggregate_id_refuses_subject_tokens(aggregate_id: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        RevocationRequested(
            **{**ENVELOPE, "aggregate_id": aggregate_id},
            producer="requester",
            serial="1",
            reason="superseded",
            requested_by="a",
        )


def test_aggregate_id_accepts_64_url_safe_characters() -> None:
    event = RevocationRequested(
        **{**ENVELOPE, "aggregate_id": "aZ0_-" * 12 + "abcd"},
        producer="requester",
        serial="1",
        reason="superseded",
        requested_by="a",
    )
    assert len(event.aggregate_id) == 64


def test_json_schemas_cover_every_event_type() -> None:
    assert set(event_json_schemas()) == {cls.__name__ for cls in EVENT_TYPES}


def test_profile_applied_carries_the_whole_profile() -> None:
    parsed = parse_event(SAMPLES[ProfileApplied].model_dump_json())
    assert isinstance(parsed, ProfileApplied)
    assert parsed.profile == PROFILE
    assert parsed.profile.digest() == parsed.digest


@pytest.mark.parametrize(
    "change",
    [
        {"default_validity_days": 400},
        {"dns_suffixes": [], "dns_patterns": []},
        {"ip_ranges": ["10.0.0.0/33"]},
        {"usage": "code-signing"},
        {"is_admin": True},
    ],
    ids=["validity_over_ceiling", "no_names", "bad_cidr", "bad_usage", "extra_field"],
)
def test_profile_applied_refuses_an_invalid_profile(change: dict[str, Any]) -> None:
    data = json.loads(SAMPLES[ProfileApplied].model_dump_json())
    data["profile"].update(change)
    with pytest.raises(pydantic.ValidationError):
        parse_event(json.dumps(data))


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        (ProfileApplied, "digest", "AB" * 32),
        (ProfileApplied, "digest", "ab" * 31),
        (KeyBlocked, "spki_sha256", "not-a-hash"),
        (CertificateLintFailed, "stage", "whenever"),
        (EnrollmentPending, "expires_at", "tomorrow"),
    ],
    ids=["upper_case_digest", "short_digest", "spki_not_hex", "unknown_stage", "expiry_not_a_time"],
)
def test_parse_event_refuses_bad_new_fields(event_type: type[Event], field: str, value: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(_json(SAMPLES[event_type], **{field: value}))


def test_a_revocation_request_without_proof_or_authority_still_parses() -> None:
    data = json.loads(SAMPLES[RevocationRequested].model_dump_json())
    del data["proof"]
    parsed = parse_event(json.dumps(data))
    assert isinstance(parsed, RevocationRequested) and parsed.proof is None
    revoked = json.loads(SAMPLES[CertificateRevoked].model_dump_json())
    del revoked["authorised_by"]
    assert parse_event(json.dumps(revoked)).authorised_by is None  # type: ignore[attr-defined]


def test_a_revocation_order_is_the_operators_alone() -> None:
    assert PRODUCERS["RevocationOrdered"] == "operator"
    assert PRODUCERS["RevocationRequested"] == "revocation"  # admitted from the ingress stream


def test_every_subject_has_exactly_one_publisher() -> None:
    subjects = [(cls.aggregate, cls.verb) for cls in EVENT_TYPES]
    assert len(set(subjects)) == len(subjects)
    assert all(isinstance(cls.publisher, str) for cls in EVENT_TYPES)


def test_operator_commands_are_the_operators_and_carry_signatures() -> None:
    commands = {cls for cls in EVENT_TYPES if issubclass(cls, OperatorCommand)}
    assert commands == {cls for cls in EVENT_TYPES if cls.publisher == "operator"}
    assert all("signatures" in cls.model_fields for cls in commands)


def test_the_operator_message_leaves_out_the_signatures_and_ignores_key_order() -> None:
    body = json.loads(SAMPLES[OperatorRegistered].model_dump_json())
    signed = operator_message(body)
    reordered = dict(reversed(list({**body, "signatures": []}.items())))
    assert operator_message(reordered) == signed
    assert b"signatures" not in signed
    assert operator_message({**body, "registered_by": "mallory"}) != signed


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        (EnrollmentRequested, "csr_pem", "A" * (40 * 1024)),
        (EnrollmentApproved, "dns_names", ["a.internal"] * 1001),
        (CertificateRevoked, "requested_by", "x" * 129),
        (ApprovalGranted, "comment", "c" * 2049),
        (CrlPublished, "crl_number", 2**160),
        (EnrollmentRejected, "reasons", [{"code": "x", "message": "y"}] * 33),
        (CertificateIssued, "serial", "a" * 65),
    ],
    ids=["pem", "names", "short", "text", "crl_number", "reasons", "serial"],
)
def test_every_field_is_bounded(event_type: type[Event], field: str, value: Any) -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(_json(SAMPLES[event_type], **{field: value}))


def test_the_revocation_message_has_its_own_context() -> None:
    assert revocation_message("req-1", "abc123", "keyCompromise") == b"certbus-revocation-v1|req-1|abc123|keyCompromise"


@pytest.mark.parametrize(
    "other",
    [("req-2", "abc123", "keyCompromise"), ("req-1", "abc124", "keyCompromise"), ("req-1", "abc123", "superseded")],
    ids=["request", "serial", "reason"],
)
def test_the_revocation_message_changes_with_each_field(other: tuple[str, str, str]) -> None:
    assert revocation_message(*other) != revocation_message("req-1", "abc123", "keyCompromise")


def test_authorised_by_takes_only_known_authorities() -> None:
    with pytest.raises(pydantic.ValidationError):
        parse_event(_json(SAMPLES[CertificateRevoked], authorised_by="anyone"))


def test_caused_by_carries_the_correlation_and_names_the_cause() -> None:
    cause = RevocationRequested.first(
        "req-1", producer="requester", at=NOW, serial="01", reason="superseded", requested_by="svc-a"
    )
    later = NOW + timedelta(seconds=1)
    rejected = RevocationRejected.caused_by(
        cause, producer="revocation", at=later, serial="01", reason=Reason(code="x", message="y")
    )
    assert (rejected.aggregate_id, rejected.correlation_id) == ("req-1", "req-1")
    assert rejected.causation_id == str(cause.event_id)
    assert (rejected.producer, rejected.occurred_at) == ("revocation", later)
    assert rejected.event_id != cause.event_id


def test_caused_by_may_name_another_aggregate() -> None:
    cause = RevocationRequested.first(
        "req-1", producer="requester", at=NOW, serial="01", reason="superseded", requested_by="svc-a"
    )
    alert = CertificateLintFailed.caused_by(
        cause,
        producer="signing",
        at=NOW,
        aggregate_id="alert-1",
        stage="pre-release",
        request_id="req-1",
        profile="web",
        findings=[],
    )
    assert (alert.aggregate_id, alert.correlation_id) == ("alert-1", "req-1")


def test_first_correlates_with_its_own_aggregate_unless_told() -> None:
    own = CrlPublished.first("ca-1", producer="signing", at=NOW, **_crl_fields())
    told = CrlPublished.first("ca-1", producer="signing", at=NOW, correlation_id="crl-ca-1-2", **_crl_fields())
    assert (own.correlation_id, own.causation_id) == ("ca-1", None)
    assert told.correlation_id == "crl-ca-1-2"


def _crl_fields() -> dict[str, Any]:
    return {
        "ca_id": "ca-1",
        "crl_number": 2,
        "this_update": NOW,
        "next_update": NOW + timedelta(days=1),
        "revoked_count": 0,
        "object_bucket": "crls",
        "object_name": "ca-1/2.crl",
        "sha256": "0" * 64,
        "size": 1,
    }
