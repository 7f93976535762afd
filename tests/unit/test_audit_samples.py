"""A valid sample of every event type, and the log rows audit's tests build from them: each message on
the subject its type and aggregate id give (`<root>.<aggregate>.<id>.<verb>`)."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.domain import read
from shared.contract.events import (
    EVENT_CLASSES,
    EVENT_TYPES,
    PRODUCERS,
    Event,
    LintResult,
    OperatorCommand,
    OperatorSignature,
    event_from,
)
from shared.contract.profiles import Profile
from shared.contract.reasons import Reason
from shared.pki.crypto import PrivateKey
from shared.trust.operators import registration, sign

ROOT = "pki"
AT = datetime(2026, 1, 1, tzinfo=UTC)
PEM = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
HEX64 = "ab" * 32
PROFILE = Profile(name="tls-server", usage="server", dns_suffixes=["corp.internal"])
JUNK_SUBJECT = f"{ROOT}.cert.junk.requested"  # where a message that names no subject of its own is put

_SIGNED = {"signatures": [OperatorSignature(operator="alice", signature="c2ln").model_dump()]}
_CERT = {"serial": "a1", "issuer_id": "ca1"}
_FIELDS: dict[str, dict[str, Any]] = {
    "OperatorRegistered": {"aggregate_id": "alice", **_SIGNED, "public_key": "cHVi", "registered_by": "alice"},
    "OperatorRemoved": {"aggregate_id": "bob", **_SIGNED, "reason": "left", "removed_by": "alice"},
    "QuorumSet": {"aggregate_id": "operator", **_SIGNED, "required": 2, "set_by": "alice"},
    "ProvisionerRegistered": {
        "aggregate_id": "prov-1",
        "name": "prov-1",
        "public_key_pem": PEM,
        "registered_by": "ops",
        "profiles": ["tls-server"],
        "name_suffixes": ["corp.internal"],
    },
    "ProvisionerDisabled": {"aggregate_id": "prov-1", "reason": "key lost", "disabled_by": "ops"},
    "ProvisionerRemoved": {"aggregate_id": "prov-1", "removed_by": "ops"},
    "ProfileApplied": {
        "aggregate_id": PROFILE.name,
        "profile": PROFILE.model_dump(mode="json"),
        "digest": PROFILE.digest(),
        "applied_by": "ops",
    },
    "ProfileLinted": {
        "aggregate_id": PROFILE.name,
        "digest": PROFILE.digest(),
        "issuer_id": "ca1",
        "usable": True,
        "findings": [LintResult(severity="WARNING", code="w.example", message="fine").model_dump()],
    },
    "KeyBlocked": {"aggregate_id": HEX64, "spki_sha256": HEX64, "reason": "leaked", "blocked_by": "ops"},
    "EnrollmentRequested": {
        "aggregate_id": "r1",
        "csr_pem": PEM,
        "token": "t.o.k",
        "token_proof": "cHJvb2Y=",
        "requester": "alice",
        "validity_days": 30,
    },
    "EnrollmentPending": {
        "aggregate_id": "r1",
        "profile": "tls-server",
        "dns_names": ["web.corp.internal"],
        "validity_days": 30,
        "requester": "alice",
        "expires_at": (AT + timedelta(days=1)).isoformat(),
    },
    "ApprovalGranted": {"aggregate_id": "r1", **_SIGNED, "operator": "carol", "comment": "ok"},
    "ApprovalDenied": {"aggregate_id": "r1", **_SIGNED, "operator": "carol", "reason": "no"},
    "EnrollmentApproved": {
        "aggregate_id": "r1",
        "csr_pem": PEM,
        "profile": "tls-server",
        "dns_names": ["web.corp.internal"],
        "validity_days": 30,
        "provisioner_id": "prov-1",
        "token_id": "tok-1",
        "requester": "alice",
    },
    "EnrollmentRejected": {
        "aggregate_id": "r1",
        "reasons": [Reason(code="name", message="not allowed").model_dump()],
        "rejected_by": "policy",
    },
    "IssuanceRefused": {"aggregate_id": "r1", "reasons": [Reason(code="ca", message="retired").model_dump()]},
    "CertificateIssued": {
        "aggregate_id": "r1",
        **_CERT,
        "profile": "tls-server",
        "cert_pem": PEM,
        "chain_pem": PEM,
        "not_before": AT.isoformat(),
        "not_after": (AT + timedelta(days=30)).isoformat(),
        "dns_names": ["web.corp.internal"],
        "spki_sha256": HEX64,
        "fingerprint_sha256": HEX64,
    },
    "CertificateRevoked": {
        "aggregate_id": "r1",
        **_CERT,
        "reason": "keyCompromise",
        "revoked_at": AT.isoformat(),
        "revocation_request_id": "rev-1",
        "requested_by": "alice",
        "authorised_by": "holder",
    },
    "CertificateRenewalDue": {
        "aggregate_id": "r1",
        **_CERT,
        "due_at": AT.isoformat(),
        "cause": "schedule",
    },
    "RenewalRequested": {
        "aggregate_id": "r2",
        "csr_pem": PEM,
        "renews_serial": "a1",
        "proof": "cHJvb2Y=",
        "requester": "alice",
    },
    "CertificateSuperseded": {
        "aggregate_id": "r1",
        **_CERT,
        "superseded_by": "b2",
        "superseded_by_id": "r2",
        "not_after": (AT + timedelta(days=30)).isoformat(),
    },
    "CertificateExpired": {"aggregate_id": "r1", **_CERT, "not_after": AT.isoformat()},
    "KeyDestroyed": {
        "aggregate_id": HEX64,
        "serial": "a1",
        "spki_sha256": HEX64,
        "destroyed_at": AT.isoformat(),
        "destroyed_by": "agent-1",
        "proof": "cHJvb2Y=",
        "public_key": "cHVi",
    },
    "CertificateDestroyed": {
        "aggregate_id": "r1",
        **_CERT,
        "fingerprint_sha256": HEX64,
        "destroyed_at": AT.isoformat(),
        "destruction_request_id": "d1",
        "ordered_by": "carol",
    },
    "RevocationRequested": {
        "aggregate_id": "rev-1",
        "serial": "a1",
        "reason": "keyCompromise",
        "requested_by": "alice",
        "proof": "cHJvb2Y=",
    },
    "RevocationOrdered": {
        "aggregate_id": "rev-2",
        **_SIGNED,
        "serial": "a1",
        "reason": "superseded",
        "operator": "carol",
    },
    "DestructionOrdered": {"aggregate_id": "d1", **_SIGNED, "serial": "a1", "operator": "carol", "reason": "gone"},
    "RevocationRejected": {
        "aggregate_id": "rev-1",
        "serial": "a1",
        "reason": Reason(code="proof", message="bad proof").model_dump(),
    },
    "CaCreated": {
        "aggregate_id": "ca1",
        "ca_id": "ca1",
        "role": "issuing",
        "parent_id": "root1",
        "subject_dn": "CN=Issuing",
        "cert_pem": PEM,
        "not_before": AT.isoformat(),
        "not_after": (AT + timedelta(days=365)).isoformat(),
        "spki_sha256": HEX64,
    },
    "IssuingCaKeyGenerated": {
        "aggregate_id": "ca2",
        "ca_id": "ca2",
        "parent_id": "root1",
        "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n",
        "spki_sha256": HEX64,
        "key_type": "ec-p384",
    },
    "CrlPublished": {
        "aggregate_id": "ca1",
        "ca_id": "ca1",
        "crl_number": 1,
        "this_update": AT.isoformat(),
        "next_update": (AT + timedelta(days=1)).isoformat(),
        "revoked_count": 0,
        "object_bucket": "crls",
        "object_name": "ca1-1.crl",
        "sha256": HEX64,
        "size": 100,
    },
    "CaCompromised": {"aggregate_id": "ca1", **_SIGNED, "ca_id": "ca1", "reason": "leak", "declared_by": "alice"},
    "CaRetired": {"aggregate_id": "ca1", **_SIGNED, "ca_id": "ca1", "reason": "rotated", "retired_by": "alice"},
    "RootCaCreated": {
        "aggregate_id": "root1",
        **_SIGNED,
        "ca_id": "root1",
        "subject_dn": "CN=Root",
        "cert_pem": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "not_before": AT.isoformat(),
        "not_after": AT.isoformat(),
        "spki_sha256": HEX64,
        "created_by": "alice",
    },
    "IssuingCaCertified": {
        "aggregate_id": "ca1",
        **_SIGNED,
        "ca_id": "ca1",
        "parent_id": "root1",
        "subject_dn": "CN=Issuing",
        "cert_pem": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "root_cert_pem": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        "not_before": AT.isoformat(),
        "not_after": AT.isoformat(),
        "spki_sha256": HEX64,
        "certified_by": "alice",
    },
    "RootCrlSigned": {
        "aggregate_id": "root1",
        **_SIGNED,
        "ca_id": "root1",
        "crl_number": 1,
        "this_update": AT.isoformat(),
        "next_update": AT.isoformat(),
        "revoked_count": 0,
        "crl_pem": "-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n",
        "sha256": HEX64,
        "signed_by": "alice",
    },
    "CaKeyDestroyed": {
        "aggregate_id": "ca1",
        "ca_id": "ca1",
        "spki_sha256": HEX64,
        "destroyed_at": AT.isoformat(),
        "final_crl_number": 3,
    },
    "CertificateLintFailed": {
        "aggregate_id": "lint-1",
        "stage": "pre-release",
        "request_id": "r1",
        "serial": "a1",
        "profile": "tls-server",
        "findings": [LintResult(severity="ERROR", code="e.example", message="bad").model_dump()],
    },
    "AuditCheckpointSigned": {
        "aggregate_id": "7",
        "stream_seq": 7,
        "chain_hash": HEX64,
        "events": 7,
        "signed_at": AT.isoformat(),
        "public_key": "cHVi",
        "signature": "c2ln",
    },
    "AuditFindingRaised": {
        "aggregate_id": "approval-7",
        "check": "approval",
        "stream_seq": 7,
        "detail": "no approval",
        "serial": "a1",
    },
}


def sample(kind: str, **changes: Any) -> dict[str, Any]:
    """A valid event of type `kind` as its JSON object, with `changes` applied."""
    cls = EVENT_CLASSES[kind]
    data: dict[str, Any] = {
        "event_id": "0b7e4f3c-6c7e-4b9a-9a39-5a3e0c7c1f00",
        "event_type": kind,
        "occurred_at": AT.isoformat(),
        "correlation_id": "corr-1",
        "producer": PRODUCERS[cls.__name__],
        "schema_version": 1,
        **copy.deepcopy(_FIELDS[kind]),  # callers may change nested values
    }
    data.update(changes)
    return data


def encode(data: Any) -> bytes:
    return json.dumps(data, default=str).encode()


def event(kind: str, **changes: Any) -> bytes:
    """The bytes of a valid event of type `kind` (with `changes`)."""
    return encode(sample(kind, **changes))


ALICE = Ed25519PrivateKey.generate()  # the genesis operator of the logs audit's tests build


def genesis(name: str = "alice", key: PrivateKey = ALICE) -> bytes:
    """The first operator's self-signed registration, which starts a log with operator commands."""
    return registration(name, key, name, AT).model_dump_json().encode()


def signed(kind: str, *by: tuple[str, PrivateKey], **changes: Any) -> bytes:
    """The bytes of an operator command of type `kind` (with `changes` and an event id of its own),
    signed by each (operator, key) of `by` (alice's genesis key if none)."""
    data = sample(kind, event_id=str(uuid.uuid4()), **changes)
    data.pop("signatures", None)  # some commands' samples carry none
    command = event_from(data)
    assert isinstance(command, OperatorCommand)
    for name, key in by or (("alice", ALICE),):
        command = sign(command, name, key)
    return command.model_dump_json().encode()


def subject_of(raw: bytes, root: str = ROOT) -> str:
    """The subject a message's own type and aggregate id give, else `JUNK_SUBJECT`."""
    try:
        data = json.loads(raw)
        cls = EVENT_CLASSES[data["event_type"]]
        return f"{root}.{cls.aggregate}.{data['aggregate_id']}.{cls.verb}"
    except (ValueError, TypeError, KeyError):
        return JUNK_SUBJECT


def rows(*raws: bytes) -> list[tuple[int, str, bytes]]:
    """(seq, subject, raw) from seq 1, each message on its own subject."""
    return [(seq, subject_of(raw), raw) for seq, raw in enumerate(raws, start=1)]


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda cls: cls.__name__)
def test_every_sample_is_a_valid_event_on_its_own_subject(cls: type[Event]) -> None:
    raw = event(cls.__name__)
    parsed = event_from(json.loads(raw))
    assert type(parsed) is cls
    assert subject_of(raw) == parsed.subject(ROOT)
    assert read(subject_of(raw), ROOT, raw).problem is None


def test_there_is_a_sample_of_every_event_type() -> None:
    assert set(_FIELDS) == set(EVENT_CLASSES)
