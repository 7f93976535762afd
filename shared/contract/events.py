"""Every lifecycle event on the Certbus log, declared once.

Subjects are `<root>.<aggregate>.<id>.<verb>`. A certificate's aggregate id is the id of the
enrollment request that created it, so one filter (`pki.cert.<id>.>`) reads the certificate's
whole life, from request to revocation, and a requester waits on its own request id.

Each event type has exactly one publisher (`Event.publisher`): a service, or an operator. NATS
lets only that identity publish the type's subject, and a consumer accepts an event only on the
subject its class names (`shared.contract.binding`), so the subject an event arrived on says what it is and
who published it; the `producer` field in a body is data, never authority. Every string and list
is bounded (`shared.contract.bounds`).
Schemas only grow: add optional fields, never rename or retype (tests/contract snapshots them).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from shared.contract.bounds import (
    MAX_FINDINGS,
    MAX_REASONS,
    MAX_SCOPE,
    MAX_SIGNATURES,
    Base64,
    ChainPem,
    Id,
    Jws,
    Names,
    NameText,
    Pem,
    Ref,
    Serial,
    SerialText,
    Sha256Hex,
    Short,
    Text,
    Token,
)
from shared.contract.profiles import Profile
from shared.contract.reasons import Reason

SCHEMA_VERSION = 1

# Who may publish an event type: one of the services, or an operator (a person, whose commands are
# signed with a key registered on the log). Requesters publish nothing on the log itself: their
# requests go to the ingress stream, and the service that owns them admits them onto the log.
Publisher = Literal["enrollment", "signing", "validation", "revocation", "audit", "operator"]
PUBLISHERS: tuple[Publisher, ...] = ("enrollment", "signing", "validation", "revocation", "audit", "operator")

Count = Annotated[int, Field(ge=0, lt=2**63)]
Days = Annotated[int, Field(ge=-(2**31), lt=2**31)]  # judged by policy, bounded here only as a number
EmptyOrSha256 = Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")]


def new_event_id() -> uuid.UUID:
    """A random, unguessable event id (never derived from a request id)."""
    return uuid.uuid4()


class Event(BaseModel):
    """The envelope every event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    aggregate: ClassVar[str]
    verb: ClassVar[str]
    publisher: ClassVar[Publisher]

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    event_type: str
    aggregate_id: Id
    occurred_at: datetime
    correlation_id: Short
    causation_id: Short | None = None
    producer: Short  # data: who the body says published it; the subject is the authority
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, lt=2**31)

    @classmethod
    def caused_by(
        cls, cause: Event, *, producer: str, at: datetime, aggregate_id: str | None = None, **fields: Any
    ) -> Self:
        """A new event caused by `cause`: its correlation carried on, `cause` its causation, and on
        `cause`'s aggregate unless `aggregate_id` says otherwise."""
        return cls(
            aggregate_id=cause.aggregate_id if aggregate_id is None else aggregate_id,
            occurred_at=at,
            correlation_id=cause.correlation_id,
            causation_id=str(cause.event_id),
            producer=producer,
            **fields,
        )

    @classmethod
    def first(
        cls, aggregate_id: str, *, producer: str, at: datetime, correlation_id: str | None = None, **fields: Any
    ) -> Self:
        """A new event that no event on the log caused: it correlates with its own aggregate unless
        `correlation_id` says otherwise."""
        return cls(
            aggregate_id=aggregate_id,
            occurred_at=at,
            correlation_id=aggregate_id if correlation_id is None else correlation_id,
            producer=producer,
            **fields,
        )

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


class OperatorSignature(BaseModel):
    """One operator's signature over a command (`operator_message`), by the key registered for them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operator: Id  # the operator's registered name: whose key made the signature
    signature: Base64


class OperatorCommand(Event):
    """An event only an operator publishes. It counts only with enough valid `signatures` by
    operator keys registered on the log before it (`shared.trust.operators`): the NATS credential that
    carried it is not enough, and the operator recorded is whoever signed it."""

    publisher: ClassVar[Publisher] = "operator"

    signatures: list[OperatorSignature] = Field(default=[], max_length=MAX_SIGNATURES)


# --- operators (who may command Certbus, and how many must agree) ----------------------------


class OperatorRegistered(OperatorCommand):
    """An operator's public key (aggregate id: the operator's name), with which they sign commands.

    The first registration on an empty log is the genesis: signed by its own key. Every later one
    (a new operator, or a new key) is signed by operators already registered, as many as the
    `operator` quorum asks."""

    aggregate: ClassVar[str] = "operator"
    verb: ClassVar[str] = "registered"
    event_type: Literal["OperatorRegistered"] = "OperatorRegistered"

    public_key: Base64  # base64 SubjectPublicKeyInfo DER: Ed25519 or EC P-256
    registered_by: Short


class OperatorRemoved(OperatorCommand):
    """An operator's key no longer counts (aggregate id: the operator's name)."""

    aggregate: ClassVar[str] = "operator"
    verb: ClassVar[str] = "removed"
    event_type: Literal["OperatorRemoved"] = "OperatorRemoved"

    reason: Text = ""
    removed_by: Short


QuorumCommand = Literal["operator", "ca_compromise", "ca_retire", "ca_ceremony"]


class QuorumSet(OperatorCommand):
    """How many operators must sign one kind of command (aggregate id: the kind): the two-person
    rule. `operator` covers registering and removing operators and changing quorums; approvals take
    their count from the profile (`approvals_required`)."""

    aggregate: ClassVar[str] = "quorum"
    verb: ClassVar[str] = "set"
    event_type: Literal["QuorumSet"] = "QuorumSet"

    required: int = Field(ge=1, le=MAX_SIGNATURES)
    set_by: Short


# --- provisioners and profiles (operator policy; every change is on the audited log) --------


class ProvisionerRegistered(OperatorCommand):
    """An operator added (or re-keyed) a provisioner whose key signs one-time enrollment tokens.

    The key is Ed25519 (tokens signed with EdDSA) or EC P-256 (ES256). Registering again enables
    a disabled provisioner. A provisioner may be scoped: to some profiles, to names under some
    suffixes, to some requesters (their authenticated identities), and to a number of
    certificates an hour; None means no limit of that kind.
    """

    aggregate: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "registered"
    event_type: Literal["ProvisionerRegistered"] = "ProvisionerRegistered"

    name: Short
    public_key_pem: Pem
    registered_by: Short
    profiles: list[Short] | None = Field(default=None, max_length=MAX_SCOPE)
    name_suffixes: list[NameText] | None = Field(default=None, max_length=MAX_SCOPE)
    requesters: list[Short] | None = Field(default=None, max_length=MAX_SCOPE)
    max_per_hour: int | None = Field(default=None, ge=0, lt=2**31)


class ProvisionerDisabled(OperatorCommand):
    """An operator disabled a provisioner: its tokens stop working at once."""

    aggregate: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "disabled"
    event_type: Literal["ProvisionerDisabled"] = "ProvisionerDisabled"

    reason: Text
    disabled_by: Short


class ProvisionerRemoved(OperatorCommand):
    """An operator removed a provisioner for good (its tokens never work again)."""

    aggregate: ClassVar[str] = "provisioner"
    verb: ClassVar[str] = "removed"
    event_type: Literal["ProvisionerRemoved"] = "ProvisionerRemoved"

    removed_by: Short


class ProfileApplied(OperatorCommand):
    """An operator applied a certificate profile (aggregate id: the profile name)."""

    aggregate: ClassVar[str] = "profile"
    verb: ClassVar[str] = "applied"
    event_type: Literal["ProfileApplied"] = "ProfileApplied"

    profile: Profile
    digest: Sha256Hex
    applied_by: Short


class LintResult(BaseModel):
    """One pkilint finding (or a structural-check finding) on a certificate or template."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Short
    code: Short
    message: Text = ""
    key_type: Short | None = None

    @field_validator("message", mode="before")
    @classmethod
    def _shortened(cls, value: object) -> object:
        """Lint messages quote what they read: cut to the bound rather than lose the finding."""
        return value[:2048] if isinstance(value, str) else value


class ProfileLinted(Event):
    """Signing linted a profile's certificate templates (one per key type) under an issuing CA."""

    aggregate: ClassVar[str] = "profile"
    verb: ClassVar[str] = "linted"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["ProfileLinted"] = "ProfileLinted"

    digest: Sha256Hex
    issuer_id: Id
    usable: bool
    findings: list[LintResult] = Field(max_length=MAX_FINDINGS)


class KeyBlocked(OperatorCommand):
    """An operator ruled that a public key (by SPKI SHA-256) may never be certified again (aggregate
    id: the hash). A key revoked for keyCompromise is blocked by enrollment itself, from the
    revocation, without an event of its own."""

    aggregate: ClassVar[str] = "key"
    verb: ClassVar[str] = "blocked"
    event_type: Literal["KeyBlocked"] = "KeyBlocked"

    spki_sha256: Sha256Hex
    reason: Text
    blocked_by: Short


# --- enrollment -----------------------------------------------------------------------------


class EnrollmentRequested(Event):
    """A requester asks for a certificate: a CSR plus a one-time token and its holder proof.

    The requester puts it on the ingress stream; enrollment admits it onto the log, with
    `requester` set to the identity NATS authenticated (whatever the requester wrote there).
    The token carries no secret: it names a holder public key, and `token_proof` is that key's
    signature over this request, so a reader of the log cannot reuse the token.
    """

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "requested"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["EnrollmentRequested"] = "EnrollmentRequested"

    csr_pem: Pem
    profile: Short = "tls-server"
    token: Token
    token_proof: Base64
    requester: Short
    validity_days: Days | None = None
    accepted_at: datetime | None = None  # when the ingress stream took it (set on admission)
    # The serial of a certificate this request replaces (ACME's ARI `replaces`): enrollment records
    # the new certificate as superseding it when the same requester obtained it and they share a name.
    replaces: Serial | None = None


class EnrollmentApproved(Event):
    """Enrollment checked identity, CSR and names: signing may issue exactly this."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "approved"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["EnrollmentApproved"] = "EnrollmentApproved"

    csr_pem: Pem
    profile: Short
    dns_names: Names
    ip_addresses: Names = []
    validity_days: Days
    provisioner_id: Short
    token_id: Short
    requester: Short
    emails: Names = []
    profile_digest: Sha256Hex | None = None
    approved_by: Short = "policy"
    supersedes: Serial | None = None  # a renewal: the serial of the certificate it replaces
    approvers: list[Short] = Field(default=[], max_length=MAX_SIGNATURES)  # operators whose approvals counted


class EnrollmentPending(Event):
    """The profile needs an operator's approval: the request waits until `expires_at`."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "pending"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["EnrollmentPending"] = "EnrollmentPending"

    profile: Short
    dns_names: Names
    ip_addresses: Names = []
    emails: Names = []
    validity_days: Days
    requester: Short
    expires_at: datetime
    approvals_required: int = Field(default=1, ge=1, le=MAX_SIGNATURES)


class ApprovalGranted(OperatorCommand):
    """An operator approved a pending enrollment request (a profile may ask for several)."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "granted"
    event_type: Literal["ApprovalGranted"] = "ApprovalGranted"

    operator: Short
    comment: Text = ""


class ApprovalDenied(OperatorCommand):
    """An operator refused a pending enrollment request."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "denied"
    event_type: Literal["ApprovalDenied"] = "ApprovalDenied"

    operator: Short
    reason: Text


class EnrollmentRejected(Event):
    """Enrollment refused a request; nothing will be issued for it."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "rejected"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["EnrollmentRejected"] = "EnrollmentRejected"

    reasons: list[Reason] = Field(max_length=MAX_REASONS)
    rejected_by: Short
    # Set when the request was refused at admission (it never reached the log): who sent it.
    requester: Short | None = None


class IssuanceRefused(Event):
    """Signing refused to sign an approved request (its own policy checks, a CA that may no longer
    issue, a certificate that failed its check before release); nothing will be issued for it."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "refused"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["IssuanceRefused"] = "IssuanceRefused"

    reasons: list[Reason] = Field(max_length=MAX_REASONS)


# --- certificates ---------------------------------------------------------------------------


class CertificateIssued(Event):
    """Signing issued a certificate for an approved enrollment."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "issued"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["CertificateIssued"] = "CertificateIssued"

    serial: Serial
    issuer_id: Id
    profile: Short
    cert_pem: Pem
    chain_pem: ChainPem
    not_before: datetime
    not_after: datetime
    dns_names: Names
    ip_addresses: Names = []
    spki_sha256: Sha256Hex
    fingerprint_sha256: Sha256Hex
    emails: Names = []
    supersedes: Serial | None = None  # a renewal: the serial of the certificate this one replaces
    # The identity NATS authenticated for the request it answers (from its approval); None on
    # events from before it was recorded. Revocation lets that requester revoke it (not for
    # keyCompromise or cACompromise).
    requester: Short | None = None


class RenewalRequested(Event):
    """A holder asks to renew its certificate with a new key (aggregate id: the new request's id,
    which becomes the new certificate's id). No token: `proof` is the base64 signature, made with
    the CURRENT certificate's private key, over `renewal_message(aggregate_id, renews_serial,
    csr DER)`; the CSR's own signature proves possession of the new key. Admitted onto the log by
    enrollment from the ingress stream, like an enrollment request."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "renewal_requested"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["RenewalRequested"] = "RenewalRequested"

    csr_pem: Pem
    renews_serial: Serial
    proof: Base64
    requester: Short
    profile: Short | None = None  # None: the current certificate's profile
    validity_days: Days | None = None
    accepted_at: datetime | None = None  # when the ingress stream took it (set on admission)


class CertificateSuperseded(Event):
    """A renewal replaced this certificate (aggregate id: the old certificate's id). It stays valid
    until it expires or is revoked; its holder is expected to destroy its key."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "superseded"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["CertificateSuperseded"] = "CertificateSuperseded"

    serial: Serial
    issuer_id: Id
    superseded_by: Serial
    superseded_by_id: Id
    not_after: datetime


class CertificateExpired(Event):
    """A certificate reached its notAfter (aggregate id: the certificate id)."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "expired"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["CertificateExpired"] = "CertificateExpired"

    serial: Serial
    issuer_id: Id
    not_after: datetime


class KeyDestroyed(Event):
    """A holder attests that it destroyed a certificate's private key (aggregate id: the key's
    SPKI SHA-256). `proof` is the key's last signature, over `key_destroyed_message(serial,
    spki_sha256, destroyed_at)`, made just before the key was overwritten; `public_key` is its public
    half (hashing to `spki_sha256`), so audit checks the proof; never the private key. The holder
    puts it on the ingress stream and revocation admits it onto the log."""

    aggregate: ClassVar[str] = "key"
    verb: ClassVar[str] = "destroyed"
    publisher: ClassVar[Publisher] = "revocation"
    event_type: Literal["KeyDestroyed"] = "KeyDestroyed"

    serial: Serial
    spki_sha256: Sha256Hex
    destroyed_at: datetime
    destroyed_by: Short
    proof: Base64
    public_key: Base64  # base64 SPKI DER of the destroyed key (public), so anyone can check `proof`
    accepted_at: datetime | None = None  # when the ingress stream took it (set on admission)


class CertificateDestroyed(Event):
    """A certificate was retired for good (aggregate id: the certificate id): revoked first if it
    was still valid; projections purge their copies of its body; it can never be renewed."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "destroyed"
    publisher: ClassVar[Publisher] = "revocation"
    event_type: Literal["CertificateDestroyed"] = "CertificateDestroyed"

    serial: Serial
    issuer_id: Id
    fingerprint_sha256: EmptyOrSha256
    destroyed_at: datetime
    destruction_request_id: Id
    ordered_by: Short
    reason: Text = ""


class CertificateRevoked(Event):
    """A certificate was revoked; it never becomes good again."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "revoked"
    publisher: ClassVar[Publisher] = "revocation"
    event_type: Literal["CertificateRevoked"] = "CertificateRevoked"

    serial: Serial
    issuer_id: Id
    reason: Short
    revoked_at: datetime
    revocation_request_id: Id
    requested_by: Short
    # What authorised it: the holder's proof, the requester that obtained it, an operator's order,
    # or (for the other certificates with a compromised key) a keyCompromise revocation;
    # `ca_compromise` is kept for revocations that follow a CA's compromise. None on events from
    # before it was recorded.
    authorised_by: Literal["holder", "requester", "operator", "key_compromise", "ca_compromise"] | None = None
    invalidity_date: datetime | None = None  # RFC 5280 5.3.2: goes into the CRL entry


class CertificateRenewalDue(Event):
    """A certificate's holder should renew it now (aggregate id: the certificate id): its renewal
    point came (`schedule`), or it was revoked because its key or its CA was compromised (enrollment
    sends it when it reads such a revocation). Agents subscribe to `<root>.cert.*.renewal_due`."""

    aggregate: ClassVar[str] = "cert"
    verb: ClassVar[str] = "renewal_due"
    publisher: ClassVar[Publisher] = "enrollment"
    event_type: Literal["CertificateRenewalDue"] = "CertificateRenewalDue"

    serial: Serial
    issuer_id: Id
    due_at: datetime
    cause: Literal["schedule", "key_compromise", "ca_compromise"]
    rekey: bool = True


# --- revocation requests --------------------------------------------------------------------


class RevocationRequested(Event):
    """A certificate's holder asks for it, named by serial, to be revoked (put on the ingress stream
    by the holder, admitted onto the log by revocation with `requested_by` set to the identity NATS
    authenticated).

    `proof` is the base64 signature, made with the certificate's private key, over
    `revocation_message(aggregate_id, serial, reason)`. `proof_jws` is the other proof a holder can
    give: an ACME revokeCert request (RFC 8555 §7.6) signed with the certificate's key, its payload
    naming this certificate and reason, as the client sent it. Without a valid proof only the
    requester that obtained the certificate (`requested_by` the identity NATS authenticated for
    it) may ask, and not for keyCompromise or cACompromise; an operator revokes with
    `RevocationOrdered` instead.
    """

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "requested"
    publisher: ClassVar[Publisher] = "revocation"
    event_type: Literal["RevocationRequested"] = "RevocationRequested"

    serial: SerialText
    reason: Short
    requested_by: Short
    proof: Base64 | None = None
    invalidity_date: datetime | None = None  # when the key is known or suspected to have been compromised
    accepted_at: datetime | None = None  # when the ingress stream took it (set on admission)
    proof_jws: Jws | None = None


class RevocationOrdered(OperatorCommand):
    """An operator orders a certificate, named by serial, revoked."""

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "ordered"
    event_type: Literal["RevocationOrdered"] = "RevocationOrdered"

    serial: SerialText
    reason: Short
    operator: Short
    invalidity_date: datetime | None = None


class DestructionOrdered(OperatorCommand):
    """An operator orders a certificate, named by serial, destroyed (revoked first if still valid).
    Refusals come back as `RevocationRejected` on the same id."""

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "destroy_ordered"
    event_type: Literal["DestructionOrdered"] = "DestructionOrdered"

    serial: SerialText
    operator: Short
    reason: Text = ""


class RevocationRejected(Event):
    """A revocation request was refused; the certificate's status is unchanged."""

    aggregate: ClassVar[str] = "revoke"
    verb: ClassVar[str] = "rejected"
    publisher: ClassVar[Publisher] = "revocation"
    event_type: Literal["RevocationRejected"] = "RevocationRejected"

    serial: Text  # as the request named it (escaped), which may be no serial at all
    reason: Reason


# --- certificate authorities ----------------------------------------------------------------


class CaCreated(Event):
    """Signing created a CA (a root, or an issuing CA under a root), or adopted one whose key it does
    not make: a root from the offline ceremony (`key_offline`), an issuing CA the ceremony certified."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "created"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["CaCreated"] = "CaCreated"

    ca_id: Id
    role: Literal["root", "issuing"]
    parent_id: Id | None
    subject_dn: Text
    cert_pem: Pem
    not_before: datetime
    not_after: datetime
    spki_sha256: Sha256Hex
    # The CA's CRL shards: a leaf is on the CRL of shard `serial mod crl_shards`, served at
    # /crl/{ca_id}/{shard}.crl. None (CAs created before shards, and roots): one CRL, /crl/{ca_id}.crl.
    crl_shards: int | None = Field(default=None, ge=1, le=1024)
    # The CA's key is never online: a root made by the offline ceremony (`RootCaCreated`), which
    # signing announces without holding its key; its CRLs come from the ceremony (`RootCrlSigned`).
    key_offline: bool = False


class IssuingCaKeyGenerated(Event):
    """Signing generated the key of a new issuing CA under an offline root (aggregate id: the new
    CA's id) and asks the ceremony to certify it: its CSR, for `certbus-ceremony sign-issuing`.
    The CA issues nothing until an `IssuingCaCertified` for exactly this key is on the log."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "key_generated"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["IssuingCaKeyGenerated"] = "IssuingCaKeyGenerated"

    ca_id: Id
    parent_id: Id  # the offline root that is to certify it
    csr_pem: Pem
    spki_sha256: Sha256Hex
    key_type: Short


class CrlPublished(Event):
    """Signing signed a new CRL for an issuer (for one of its shards, if it has shards); the DER
    lives in the object store. CRL numbers increase per shard."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "crl_published"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["CrlPublished"] = "CrlPublished"

    ca_id: Id
    crl_number: int = Field(ge=0, lt=2**159)  # RFC 5280 5.2.3: at most 20 octets
    this_update: datetime
    next_update: datetime
    revoked_count: Count
    object_bucket: Short
    object_name: Ref
    sha256: Sha256Hex
    size: Count
    shard: int | None = Field(default=None, ge=0, lt=1024)  # None: the CA's only CRL (an unsharded CA)


class CaCompromised(OperatorCommand):
    """An operator declared a CA's key compromised (aggregate id: the CA id). From here on nothing
    may be issued or signed by it; its certificates are to be revoked and their holders re-enroll."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "compromised"
    event_type: Literal["CaCompromised"] = "CaCompromised"

    ca_id: Id
    reason: Text
    declared_by: Short


class CaRetired(OperatorCommand):
    """An operator retired a CA (aggregate id: the CA id): it issues nothing more; signing publishes
    a final CRL, then destroys the key."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "retired"
    event_type: Literal["CaRetired"] = "CaRetired"

    ca_id: Id
    reason: Text
    retired_by: Short


class RootCaCreated(OperatorCommand):
    """A root CA made in the offline ceremony (`certbus-ceremony root`; aggregate id: the root's
    id), published by operators: its key was generated in the ceremony's token and never online.
    CaCreated's fields for a root; CaCreated itself is signing's, for the CAs signing makes."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "root_created"
    event_type: Literal["RootCaCreated"] = "RootCaCreated"

    ca_id: Id
    subject_dn: Text
    cert_pem: Pem
    not_before: datetime
    not_after: datetime
    spki_sha256: Sha256Hex
    created_by: Short  # the operator who ran the ceremony


class IssuingCaCertified(OperatorCommand):
    """An issuing CA certificate the offline root signed in the ceremony (`certbus-ceremony
    sign-issuing`; aggregate id: the issuing CA's id) for a key generated where it is used."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "certified"
    event_type: Literal["IssuingCaCertified"] = "IssuingCaCertified"

    ca_id: Id
    parent_id: Id  # the root's id
    subject_dn: Text
    cert_pem: Pem
    root_cert_pem: Pem
    not_before: datetime
    not_after: datetime
    spki_sha256: Sha256Hex
    certified_by: Short


class RootCrlSigned(OperatorCommand):
    """A CRL the offline root signed in the ceremony (`certbus-ceremony crl`; aggregate id: the
    root's id), for the online side to serve. Full CRLs; numbers increase per root."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "root_crl_signed"
    event_type: Literal["RootCrlSigned"] = "RootCrlSigned"

    ca_id: Id
    crl_number: int = Field(ge=0, lt=2**159)  # RFC 5280 5.2.3: at most 20 octets
    this_update: datetime
    next_update: datetime
    revoked_count: Count
    crl_pem: Pem
    sha256: Sha256Hex  # of the CRL's DER
    signed_by: Short


class CaKeyDestroyed(Event):
    """Signing destroyed a CA's private key material (aggregate id: the CA id); never the key itself."""

    aggregate: ClassVar[str] = "ca"
    verb: ClassVar[str] = "key_destroyed"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["CaKeyDestroyed"] = "CaKeyDestroyed"

    ca_id: Id
    spki_sha256: Sha256Hex
    destroyed_at: datetime
    final_crl_number: int | None = Field(default=None, ge=0, lt=2**159)
    # What the key store answered: a PKCS#11 token's (e.g. "CKR_OK: C_DestroyObject on 2 objects in
    # token 'certbus-ca'"), or the file store's; None in events from before it was recorded.
    key_store_answer: Text | None = None


# --- findings ---------------------------------------------------------------------------------


class CertificateLintFailed(Event):
    """A certificate failed its check before release: signing did not publish it (aggregate id is
    random). Operators are alerted. (Audit's pkilint of issued certificates raises
    `AuditFindingRaised` with check `pkilint`; older logs have `stage: post-issuance` here.)"""

    aggregate: ClassVar[str] = "finding"
    verb: ClassVar[str] = "lint_failed"
    publisher: ClassVar[Publisher] = "signing"
    event_type: Literal["CertificateLintFailed"] = "CertificateLintFailed"

    stage: Literal["pre-release", "post-issuance"]
    request_id: Id
    serial: Serial | None = None
    profile: Short
    findings: list[LintResult] = Field(max_length=MAX_FINDINGS)


# --- audit ------------------------------------------------------------------------------------


class AuditFindingRaised(Event):
    """Audit found something wrong on the log (aggregate id: `<check>-<stream seq>`, so each finding
    is raised once): an inconsistency its scheduled checks found, a message it archived but that is
    not a valid event on its subject, or an issued certificate that fails pkilint (`pkilint`, with
    the certificate's serial and the findings)."""

    aggregate: ClassVar[str] = "finding"
    verb: ClassVar[str] = "raised"
    publisher: ClassVar[Publisher] = "audit"
    event_type: Literal["AuditFindingRaised"] = "AuditFindingRaised"

    check: Short
    stream_seq: Count
    detail: Text
    serial: Serial | None = None
    findings: list[LintResult] = Field(default=[], max_length=MAX_FINDINGS)


class AuditCheckpointSigned(Event):
    """Audit signed the head of its hash chain (aggregate id: the stream sequence it covers).

    The signature (Ed25519, audit's own key, never a CA key) covers `checkpoint_message`: whoever
    holds the public key can check that the archive up to `stream_seq` hashed to `chain_hash`.
    """

    aggregate: ClassVar[str] = "audit"
    verb: ClassVar[str] = "checkpoint"
    publisher: ClassVar[Publisher] = "audit"
    event_type: Literal["AuditCheckpointSigned"] = "AuditCheckpointSigned"

    stream_seq: Count
    chain_hash: Sha256Hex
    events: Count
    signed_at: datetime
    public_key: Base64
    signature: Base64

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


def operator_message(payload: dict[str, Any]) -> bytes:
    """What an operator signs: the command as it travels (its JSON object without `signatures`),
    canonically encoded (sorted keys, no spaces), so that a field added to the schema later cannot
    change what an old signature covers."""
    body = {k: v for k, v in payload.items() if k != "signatures"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"certbus-operator-command-v1|" + canonical.encode()


EVENT_TYPES: tuple[type[Event], ...] = (
    OperatorRegistered,
    OperatorRemoved,
    QuorumSet,
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
    IssuanceRefused,
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
    RootCaCreated,
    IssuingCaKeyGenerated,
    IssuingCaCertified,
    RootCrlSigned,
    CertificateLintFailed,
    AuditCheckpointSigned,
    AuditFindingRaised,
)

AnyEvent = Annotated[
    OperatorRegistered
    | OperatorRemoved
    | QuorumSet
    | ProvisionerRegistered
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
    | IssuanceRefused
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
    | RootCaCreated
    | IssuingCaKeyGenerated
    | IssuingCaCertified
    | RootCrlSigned
    | CertificateLintFailed
    | AuditCheckpointSigned
    | AuditFindingRaised,
    Field(discriminator="event_type"),
]

EVENT_CLASSES: dict[str, type[Event]] = {cls.__name__: cls for cls in EVENT_TYPES}
# The event type each subject carries: (aggregate, verb) names exactly one class.
BY_SUBJECT: dict[tuple[str, str], type[Event]] = {(cls.aggregate, cls.verb): cls for cls in EVENT_TYPES}
assert len(BY_SUBJECT) == len(EVENT_TYPES), "two event types share a subject"
# Who publishes each event type (NATS permissions are generated from this; audit flags any other).
PRODUCERS: dict[str, Publisher] = {cls.__name__: cls.publisher for cls in EVENT_TYPES}
# Events from older logs whose type two services published before each subject had one publisher:
# signing's refusals were `EnrollmentRejected`, audit's pkilint alerts `CertificateLintFailed`,
# revocation blocked keys and sent renewal-due itself. Audit reads them as history, and flags none.
LEGACY_PRODUCERS: dict[str, frozenset[str]] = {
    "EnrollmentRejected": frozenset({"signing"}),
    "CertificateLintFailed": frozenset({"audit"}),
    "KeyBlocked": frozenset({"revocation"}),
    "CertificateRenewalDue": frozenset({"revocation"}),
    "EnrollmentRequested": frozenset({"requester"}),
    "RenewalRequested": frozenset({"requester"}),
    "RevocationRequested": frozenset({"requester"}),
    "KeyDestroyed": frozenset({"requester"}),
}


def producer_allowed(event_type: str, producer: object) -> bool:
    """Whether a body saying `producer` is consistent with `event_type`'s publisher (an event type
    Certbus does not define: yes). This checks the data; the subject is what NATS guards."""
    publisher = PRODUCERS.get(event_type)
    if publisher is None:
        return True
    return isinstance(producer, str) and (producer == publisher or producer in LEGACY_PRODUCERS.get(event_type, ()))


_adapter: TypeAdapter[Any] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str) -> Event:
    """Parse one event from its JSON bytes; raises pydantic.ValidationError if malformed."""
    event: Event = _adapter.validate_json(data)
    return event


def event_from(data: dict[str, Any]) -> Event:
    """An event from its decoded JSON object (see `shared.contract.binding.bind`); raises ValidationError."""
    event: Event = _adapter.validate_python(data)
    return event


def event_json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schema of every event type, by name (the contract tests snapshot these)."""
    return {cls.__name__: cls.model_json_schema() for cls in EVENT_TYPES}
