"""Every lifecycle event on the Certbus log, declared once.

Subjects are `<root>.<aggregate>.<id>.<verb>`. A certificate's aggregate id is the id of the
enrollment request that created it, so one filter (`pki.cert.<id>.>`) reads the certificate's
whole life, from request to revocation, and a requester waits on its own request id.
Schemas only grow: add optional fields, never rename or retype (tests/contract snapshots them).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.profiles import Profile
from shared.reasons import Reason

SCHEMA_VERSION = 1


def new_event_id() -> uuid.UUID:
    """A random, unguessable event id (never derived from a request id)."""
    return uuid.uuid4()


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aggregate: ClassVar[str]
    verb: ClassVar[str]

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    event_type: str
    aggregate_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    occurred_at: datetime
    correlation_id: str
    causation_id: str | None = None
    producer: str
    schema_version: int = SCHEMA_VERSION

    def subject(self, root: str) -> str:
        """The log subject this event is published on."""
        return f"{root}.{self.aggregate}.{self.aggregate_id}.{self.verb}"

    @classmethod
    def filter(cls, root: str) -> str:
        """The subject filter that matches every event of this type."""
        return f"{root}.{cls.aggregate}.*.{cls.verb}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# --- provisioners and profiles (operator policy; every change is on the audited log) --------


class ProvisionerRegistered(Event):
    """An operator added (or re-keyed) a provisioner whose key signs one-time enrollment tokens.

    The key is Ed25519 (tokens signed with EdDSA) or EC P-256 (ES256). Registering again enables
    a disabled provisioner.
    """

    aggregate: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "registered"
    event_type: Literal["ProvisionerRegistered"] = "ProvisionerRegistered"

    name: str
    public_key_pem: str
    registered_by: str


class ProvisionerDisabled(Event):
    """An operator disabled a provisioner: its tokens stop working at once."""

    aggregate: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "disabled"
    event_type: Literal["ProvisionerDisabled"] = "ProvisionerDisabled"

    reason: str
    disabled_by: str


class ProvisionerRemoved(Event):
    """An operator removed a provisioner for good (its tokens never work again)."""

    aggregate: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "removed"
    event_type: Literal["ProvisionerRemoved"] = "ProvisionerRemoved"

    removed_by: str


class ProfileApplied(Event):
    """An operator applied a certificate profile (aggregate id: the profile name)."""

    aggregate: ClassVar[str] = "profile"
    verb: ClassVar[str] = "applied"
    event_type: Literal["ProfileApplied"] = "ProfileApplied"

    profile: Profile
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    applied_by: str


class LintResult(BaseModel):
    """One pkilint finding (or a structural-check finding) on a certificate or template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: str
    code: str
    message: str = ""
    key_type: str | None = None


class ProfileLinted(Event):
    """Signing linted a profile's certificate templates (one per key type) under an issuing CA."""

    aggregate: ClassVar[str] = "profile"
    verb: ClassVar[str] = "linted"
    event_type: Literal["ProfileLinted"] = "ProfileLinted"

    digest: str
    issuer_id: str
    usable: bool
    findings: list[LintResult]


class KeyBlocked(Event):
    """A public key (by SPKI SHA-256) may never be certified again (aggregate id: the hash)."""

    aggregate: ClassVar[str] = "key"
    verb: ClassVar[str] = "blocked"
    event_type: Literal["KeyBlocked"] = "KeyBlocked"

    spki_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reason: str
    blocked_by: str


# --- enrollment -----------------------------------------------------------------------------


class EnrollmentRequested(Event):
    """A requester asks for a certificate: a CSR plus a one-time token and its holder proof.

    The token carries no secret: it names a holder public key, and `token_proof` is that key's
    signature over this request, so a reader of the log cannot reuse the token.
    """

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "requested"
    event_type: Literal["EnrollmentRequested"] = "EnrollmentRequested"

    csr_pem: str
    profile: str = "tls-server"
    token: str
    token_proof: str
    requester: str
    validity_days: int | None = None


class EnrollmentApproved(Event):
    """Enrollment checked identity, CSR and names: signing may issue exactly this."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "approved"
    event_type: Literal["EnrollmentApproved"] = "EnrollmentApproved"

    csr_pem: str
    profile: str
    dns_names: list[str]
    ip_addresses: list[str] = []
    validity_days: int
    provisioner_id: str
    token_id: str
    requester: str
    emails: list[str] = []
    profile_digest: str | None = None
    approved_by: str = "policy"
    supersedes: str | None = None  # a renewal: the serial of the certificate it replaces


class EnrollmentPending(Event):
    """The profile needs an operator's approval: the request waits until `expires_at`."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "pending"
    event_type: Literal["EnrollmentPending"] = "EnrollmentPending"

    profile: str
    dns_names: list[str]
    ip_addresses: list[str] = []
    emails: list[str] = []
    validity_days: int
    requester: str
    expires_at: datetime


class ApprovalGranted(Event):
    """An operator approved a pending enrollment request."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "granted"
    event_type: Literal["ApprovalGranted"] = "ApprovalGranted"

    operator: str
    comment: str = ""


class ApprovalDenied(Event):
    """An operator refused a pending enrollment request."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "denied"
    event_type: Literal["ApprovalDenied"] = "ApprovalDenied"

    operator: str
    reason: str


class EnrollmentRejected(Event):
    """An enrollment request was refused; nothing will be issued for it."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "rejected"
    event_type: Literal["EnrollmentRejected"] = "EnrollmentRejected"

    reasons: list[Reason]
    rejected_by: str


# --- certificates ---------------------------------------------------------------------------


class CertificateIssued(Event):
    """Signing issued a certificate for an approved enrollment."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "issued"
    event_type: Literal["CertificateIssued"] = "CertificateIssued"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    issuer_id: str
    profile: str
    cert_pem: str
    chain_pem: str
    not_before: datetime
    not_after: datetime
    dns_names: list[str]
    ip_addresses: list[str] = []
    spki_sha256: str
    fingerprint_sha256: str
    emails: list[str] = []
    supersedes: str | None = None  # a renewal: the serial of the certificate this one replaces


class RenewalRequested(Event):
    """A holder asks to renew its certificate with a new key (aggregate id: the new request's id,
    which becomes the new certificate's id). No token: `proof` is the base64 signature, made with
    the CURRENT certificate's private key, over `renewal_message(aggregate_id, renews_serial,
    csr DER)`; the CSR's own signature proves possession of the new key."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "renewal_requested"
    event_type: Literal["RenewalRequested"] = "RenewalRequested"

    csr_pem: str
    renews_serial: str = Field(pattern=r"^[0-9a-f]+$")
    proof: str
    requester: str
    profile: str | None = None  # None: the current certificate's profile
    validity_days: int | None = None


class CertificateSuperseded(Event):
    """A renewal replaced this certificate (aggregate id: the old certificate's id). It stays valid
    until it expires or is revoked; its holder is expected to destroy its key."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "superseded"
    event_type: Literal["CertificateSuperseded"] = "CertificateSuperseded"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    issuer_id: str
    superseded_by: str = Field(pattern=r"^[0-9a-f]+$")
    superseded_by_id: str
    not_after: datetime


class CertificateExpired(Event):
    """A certificate reached its notAfter (aggregate id: the certificate id)."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "expired"
    event_type: Literal["CertificateExpired"] = "CertificateExpired"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    issuer_id: str
    not_after: datetime


class KeyDestroyed(Event):
    """A holder attests that it destroyed a certificate's private key (aggregate id: the key's
    SPKI SHA-256). `proof` is the key's last signature, over `key_destroyed_message(serial,
    spki_sha256, destroyed_at)`, made just before the key was overwritten; `public_key` is its public
    half (hashing to `spki_sha256`), so audit checks the proof; never the private key."""

    aggregate: ClassVar[str] = "key"
    verb: ClassVar[str] = "destroyed"
    event_type: Literal["KeyDestroyed"] = "KeyDestroyed"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    spki_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    destroyed_at: datetime
    destroyed_by: str
    proof: str
    public_key: str  # base64 SPKI DER of the destroyed key (public), so anyone can check `proof`


class CertificateDestroyed(Event):
    """A certificate was retired for good (aggregate id: the certificate id): revoked first if it
    was still valid; projections purge their copies of its body; it can never be renewed."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "destroyed"
    event_type: Literal["CertificateDestroyed"] = "CertificateDestroyed"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    issuer_id: str
    fingerprint_sha256: str
    destroyed_at: datetime
    destruction_request_id: str
    ordered_by: str
    reason: str = ""


class CertificateRevoked(Event):
    """A certificate was revoked; it never becomes good again."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "revoked"
    event_type: Literal["CertificateRevoked"] = "CertificateRevoked"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    issuer_id: str
    reason: str
    revoked_at: datetime
    revocation_request_id: str
    requested_by: str
    # What authorised it: the holder's proof, an operator's order, or (for the other certificates
    # with a compromised key) a keyCompromise revocation; `ca_compromise` is kept for revocations
    # that follow a CA's compromise. None on events from before it was recorded.
    authorised_by: Literal["holder", "operator", "key_compromise", "ca_compromise"] | None = None
    invalidity_date: datetime | None = None  # RFC 5280 5.3.2: goes into the CRL entry


class CertificateRenewalDue(Event):
    """A certificate's holder should renew it now (aggregate id: the certificate id): its renewal
    point came (`schedule`), or it was revoked because its key or its CA was compromised. Agents
    subscribe to `<root>.cert.*.renewal_due`."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "renewal_due"
    event_type: Literal["CertificateRenewalDue"] = "CertificateRenewalDue"

    serial: str = Field(pattern=r"^[0-9a-f]+$")
    issuer_id: str
    due_at: datetime
    cause: Literal["schedule", "key_compromise", "ca_compromise"]
    rekey: bool = True


# --- revocation requests --------------------------------------------------------------------


class RevocationRequested(Event):
    """A certificate's holder asks for it, named by serial, to be revoked.

    `proof` is the base64 signature, made with the certificate's private key, over
    `revocation_message(aggregate_id, serial, reason)`; without a valid one the request is refused
    (an operator revokes with `RevocationOrdered` instead).
    """

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "requested"
    event_type: Literal["RevocationRequested"] = "RevocationRequested"

    serial: str
    reason: str
    requested_by: str
    proof: str | None = None
    invalidity_date: datetime | None = None  # when the key is known or suspected to have been compromised


class RevocationOrdered(Event):
    """An operator orders a certificate, named by serial, revoked (NATS lets only operators publish it)."""

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "ordered"
    event_type: Literal["RevocationOrdered"] = "RevocationOrdered"

    serial: str
    reason: str
    operator: str
    invalidity_date: datetime | None = None


class DestructionOrdered(Event):
    """An operator orders a certificate, named by serial, destroyed (revoked first if still valid);
    only operators may publish it. Refusals come back as `RevocationRejected` on the same id."""

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "destroy_ordered"
    event_type: Literal["DestructionOrdered"] = "DestructionOrdered"

    serial: str
    operator: str
    reason: str = ""


class RevocationRejected(Event):
    """A revocation request was refused; the certificate's status is unchanged."""

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "rejected"
    event_type: Literal["RevocationRejected"] = "RevocationRejected"

    serial: str
    reason: Reason


# --- certificate authorities ----------------------------------------------------------------


class CaCreated(Event):
    """Signing created a CA (a root, or an issuing CA under a root)."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "created"
    event_type: Literal["CaCreated"] = "CaCreated"

    ca_id: str
    role: Literal["root", "issuing"]
    parent_id: str | None
    subject_dn: str
    cert_pem: str
    not_before: datetime
    not_after: datetime
    spki_sha256: str


class CrlPublished(Event):
    """Signing signed a new CRL for an issuer; the DER lives in the object store."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "crl_published"
    event_type: Literal["CrlPublished"] = "CrlPublished"

    ca_id: str
    crl_number: int
    this_update: datetime
    next_update: datetime
    revoked_count: int
    object_bucket: str
    object_name: str
    sha256: str
    size: int


class CaCompromised(Event):
    """An operator declared a CA's key compromised (aggregate id: the CA id). From here on nothing
    may be issued or signed by it; its certificates are to be revoked and their holders re-enroll."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "compromised"
    event_type: Literal["CaCompromised"] = "CaCompromised"

    ca_id: str
    reason: str
    declared_by: str


class CaRetired(Event):
    """An operator retired a CA (aggregate id: the CA id): it issues nothing more; signing publishes
    a final CRL, then destroys the key."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "retired"
    event_type: Literal["CaRetired"] = "CaRetired"

    ca_id: str
    reason: str
    retired_by: str


class CaKeyDestroyed(Event):
    """Signing destroyed a CA's private key material (aggregate id: the CA id); never the key itself."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "key_destroyed"
    event_type: Literal["CaKeyDestroyed"] = "CaKeyDestroyed"

    ca_id: str
    spki_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    destroyed_at: datetime
    final_crl_number: int | None = None


# --- findings ---------------------------------------------------------------------------------


class CertificateLintFailed(Event):
    """A certificate failed a check: before release (signing did not publish it) or after issuance
    (audit's pkilint of every issued certificate). Operators are alerted; aggregate id is random."""

    aggregate: ClassVar[str] = "finding"
    verb: ClassVar[str] = "lint_failed"
    event_type: Literal["CertificateLintFailed"] = "CertificateLintFailed"

    stage: Literal["pre-release", "post-issuance"]
    request_id: str
    serial: str | None = None
    profile: str
    findings: list[LintResult]


# --- audit ------------------------------------------------------------------------------------


class AuditFindingRaised(Event):
    """Audit's scheduled consistency checks found an inconsistency on the log (aggregate id:
    `<check>-<stream seq>`, so each finding is raised once)."""

    aggregate: ClassVar[str] = "finding"
    verb: ClassVar[str] = "raised"
    event_type: Literal["AuditFindingRaised"] = "AuditFindingRaised"

    check: str
    stream_seq: int
    detail: str


class AuditCheckpointSigned(Event):
    """Audit signed the head of its hash chain (aggregate id: the stream sequence it covers).

    The signature (Ed25519, audit's own key, never a CA key) covers `checkpoint_message`: whoever
    holds the public key can check that the archive up to `stream_seq` hashed to `chain_hash`.
    """

    aggregate: ClassVar[str] = "audit"
    verb: ClassVar[str] = "checkpoint"
    event_type: Literal["AuditCheckpointSigned"] = "AuditCheckpointSigned"

    stream_seq: int
    chain_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    events: int
    signed_at: datetime
    public_key: str
    signature: str

    def message(self, stream: str) -> bytes:
        """The bytes the signature covers."""
        return checkpoint_message(stream, self.stream_seq, self.chain_hash, self.signed_at)


def revocation_message(request_id: str, serial: str, reason: str) -> bytes:
    """What a holder signs to ask for a revocation: this request, this (normalised) serial, this reason."""
    return f"certbus-revocation-v1|{request_id}|{serial}|{reason}".encode()


def renewal_message(request_id: str, serial: str, csr_der: bytes) -> bytes:
    """What a holder signs with its current key to renew: this request, this serial, this CSR."""
    return f"certbus-renewal-v1|{request_id}|{serial}|{hashlib.sha256(csr_der).hexdigest()}".encode()


def key_destroyed_message(serial: str, spki_sha256: str, destroyed_at: datetime) -> bytes:
    """What a key signs, as its last act, to attest its own destruction."""
    return f"certbus-key-destroyed-v1|{serial}|{spki_sha256}|{destroyed_at.isoformat()}".encode()


def checkpoint_message(stream: str, seq: int, chain_hash: str, signed_at: datetime) -> bytes:
    """What an audit checkpoint signs: the stream, the position, the chain hash and the time."""
    return f"certbus-audit-checkpoint-v1|{stream}|{seq}|{chain_hash}|{signed_at.isoformat()}".encode()


EVENT_TYPES: tuple[type[Event], ...] = (
    ProvisionerRegistered,
    ProvisionerDisabled,
    ProvisionerRemoved,
    ProfileApplied,
    ProfileLinted,
    KeyBlocked,
    EnrollmentRequested,
    EnrollmentPending,
    ApprovalGranted,
    ApprovalDenied,
    EnrollmentApproved,
    EnrollmentRejected,
    CertificateIssued,
    CertificateRevoked,
    CertificateRenewalDue,
    RenewalRequested,
    CertificateSuperseded,
    CertificateExpired,
    KeyDestroyed,
    CertificateDestroyed,
    RevocationRequested,
    RevocationOrdered,
    DestructionOrdered,
    RevocationRejected,
    CaCreated,
    CrlPublished,
    CaCompromised,
    CaRetired,
    CaKeyDestroyed,
    CertificateLintFailed,
    AuditCheckpointSigned,
    AuditFindingRaised,
)

AnyEvent = Annotated[
    ProvisionerRegistered
    | ProvisionerDisabled
    | ProvisionerRemoved
    | ProfileApplied
    | ProfileLinted
    | KeyBlocked
    | EnrollmentRequested
    | EnrollmentPending
    | ApprovalGranted
    | ApprovalDenied
    | EnrollmentApproved
    | EnrollmentRejected
    | CertificateIssued
    | CertificateRevoked
    | CertificateRenewalDue
    | RenewalRequested
    | CertificateSuperseded
    | CertificateExpired
    | KeyDestroyed
    | CertificateDestroyed
    | RevocationRequested
    | RevocationOrdered
    | DestructionOrdered
    | RevocationRejected
    | CaCreated
    | CrlPublished
    | CaCompromised
    | CaRetired
    | CaKeyDestroyed
    | CertificateLintFailed
    | AuditCheckpointSigned
    | AuditFindingRaised,
    Field(discriminator="event_type"),
]

# Which service may publish each event type (the audit flags any other producer).
PRODUCERS: dict[str, str] = {
    "ProvisionerRegistered": "operator",
    "ProvisionerDisabled": "operator",
    "ProvisionerRemoved": "operator",
    "ProfileApplied": "operator",
    "ProfileLinted": "signing",
    "KeyBlocked": "operator|revocation",
    "EnrollmentRequested": "requester",
    "EnrollmentPending": "enrollment",
    "ApprovalGranted": "operator",
    "ApprovalDenied": "operator",
    "EnrollmentApproved": "enrollment",
    "EnrollmentRejected": "enrollment|signing",
    "CertificateIssued": "signing",
    "CertificateRevoked": "revocation",
    "CertificateRenewalDue": "enrollment|revocation",
    "RenewalRequested": "requester",
    "CertificateSuperseded": "enrollment",
    "CertificateExpired": "enrollment",
    "KeyDestroyed": "requester",
    "CertificateDestroyed": "revocation",
    "RevocationRequested": "requester",
    "RevocationOrdered": "operator",
    "DestructionOrdered": "operator",
    "RevocationRejected": "revocation",
    "CaCreated": "signing",
    "CrlPublished": "signing",
    "CaCompromised": "operator",
    "CaRetired": "operator",
    "CaKeyDestroyed": "signing",
    "CertificateLintFailed": "signing|audit",
    "AuditCheckpointSigned": "audit",
    "AuditFindingRaised": "audit",
}

_ALLOWED = {event_type: frozenset(producers.split("|")) for event_type, producers in PRODUCERS.items()}


def producer_allowed(event_type: str, producer: object) -> bool:
    """Whether `producer` may publish `event_type` (an event type Certbus does not define: yes)."""
    allowed = _ALLOWED.get(event_type)
    return allowed is None or producer in allowed


_adapter: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str) -> Event:
    """Parse one event from its JSON bytes; raises pydantic.ValidationError if malformed."""
    event: Event = _adapter.validate_json(data)
    return event


def event_json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schema of every event type, by name (the contract tests snapshot these)."""
    return {cls.__name__: cls.model_json_schema() for cls in EVENT_TYPES}
