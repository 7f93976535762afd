"""Request-reply queries (on the query root, never captured by the stream) and their answers."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.contract.reasons import Reason


class Query(BaseModel):
    """Base of every query and answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class StatusQuery(Query):
    """The status of a serial (hex)."""

    serial: str


class StatusAnswer(Query):
    """What validation knows of a serial: good, revoked, expired, destroyed or unknown.

    A destroyed certificate is also revoked (`revoked_at`, `reason`); a superseded one stays good
    (until it expires or is revoked) and names its replacement in `superseded_by`."""

    serial: str
    status: str
    cert_id: str | None = None
    issuer_id: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    dns_names: list[str] = []
    revoked_at: datetime | None = None
    reason: str | None = None
    superseded_by: str | None = None
    superseded_by_id: str | None = None
    destroyed_at: datetime | None = None
    fingerprint_sha256: str | None = None


class ValidateQuery(Query):
    """Validate a PEM certificate: chain, time, revocation."""

    cert_pem: str


class ValidateAnswer(Query):
    """The verdict on a certificate."""

    status: str
    detail: str
    serial: str
    chain: list[str] = []
    revoked_at: datetime | None = None
    reason: str | None = None


class CrlQuery(Query):
    """The newest CRL of an issuer (the current issuing CA when none is named), or of one of its
    shards (a sharded CA has no CRL without a shard)."""

    ca_id: str | None = None
    shard: int | None = Field(default=None, ge=0)


class CrlAnswer(Query):
    """A CRL in DER, base64-encoded."""

    ca_id: str
    crl_number: int
    this_update: datetime
    next_update: datetime
    der_b64: str
    shard: int | None = None


class HistoryQuery(Query):
    """Every event of one certificate, by serial (hex) or certificate id."""

    serial: str


class HistoryEntry(Query):
    """One archived event."""

    stream_seq: int
    event_type: str
    subject: str
    producer: str
    actor: str = ""
    occurred_at: datetime
    event: dict[str, Any]


class HistoryAnswer(Query):
    """A certificate's events in log order."""

    serial: str
    cert_id: str | None
    events: list[HistoryEntry]


class IssuedQuery(Query):
    """The certificate issued for one request (what its requester may fetch), by request id."""

    request_id: str


class IssuedAnswer(Query):
    """The request's `CertificateIssued` event as archived (None: none archived yet)."""

    request_id: str
    event: dict[str, Any] | None = None


class RevocationsQuery(Query):
    """Revocations archived after stream sequence `after` (and at or after `since`, if given), in log
    order: how a subscriber catches up on what it missed (`CertbusClient.revocations(since=...)`)."""

    after: int = Field(default=0, ge=0)
    since: datetime | None = None
    limit: int = Field(default=500, ge=1, le=1000)


class RevocationsAnswer(Query):
    """A page of archived `CertificateRevoked` events with their stream sequences; fewer than the
    limit asked for means there are no more (yet)."""

    events: list[tuple[int, dict[str, Any]]]
    through: int = 0  # the archive holds every message up to this stream sequence


class ReplayQuery(Query):
    """Rebuild the archive from stream sequence 1; with `verify`, verify the result afterwards."""

    verify: bool = False


class ReplayAnswer(Query):
    """What replay rebuilt, and whether it equals what the archive held."""

    events: int
    seconds: float
    rate_per_s: float
    last_seq: int
    head_hash: str
    previous_head_hash: str | None
    previous_events: int
    equal: bool
    verified: VerifyAnswer | None = None


class Failure(Query):
    """A query that could not be answered, and why (`code`: a stable name for the case, if it has one)."""

    error: str
    code: str | None = None


class RequestsQuery(Query):
    """Enrollment requests, newest first, optionally only those in one status."""

    status: str | None = None
    limit: int = 100


class RequestSummary(Query):
    """One enrollment request and where it stands."""

    request_id: str
    requester: str
    profile: str
    status: str
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    emails: list[str] = []
    requested_at: datetime
    decided_at: datetime | None = None
    expires_at: datetime | None = None
    decided_by: str | None = None
    serial: str | None = None
    reasons: list[dict[str, str]] = []


class RequestsAnswer(Query):
    """Enrollment requests."""

    requests: list[RequestSummary]


class RequestQuery(Query):
    """One enrollment request's whole state."""

    request_id: str


class RequestDetail(RequestSummary):
    """Everything enrollment knows of one request."""

    csr_pem: str | None = None
    validity_days: int | None = None
    provisioner_id: str | None = None
    token_id: str | None = None
    profile_digest: str | None = None
    issuer_id: str | None = None
    not_after: datetime | None = None
    renews_serial: str | None = None  # a renewal: the serial of the certificate it renews
    accepted_at: datetime | None = None  # when the ingress stream took it


class RetireCheckQuery(Query):
    """May this CA be retired now? (`certbus ca retire` asks signing before publishing anything.)"""

    ca_id: str


class RetireCheckAnswer(Query):
    """Why the CA cannot be retired now; empty if it can."""

    reasons: list[Reason] = []


class IssuingRequestQuery(Query):
    """Which issuing CA key waits for the offline root's ceremony (`certbus ca csr`)?"""


class IssuingRequestAnswer(Query):
    """The issuing CA key waiting for the ceremony to certify it (ca_id None: none waits), and what
    the ceremony's next root CRL must name: every serial revoked under the offline root."""

    ca_id: str | None = None
    parent_id: str | None = None
    csr_pem: str | None = None
    requested_at: datetime | None = None
    root_id: str | None = None  # the offline root (None: signing runs an online root)
    root_revoked: list[str] = []  # each as the ceremony's `crl --revoked` takes it: SERIAL:REASON@TIME
    root_crl_number: int = 0  # the last root CRL served (0: none yet)
    root_crl_next_update: datetime | None = None


class ProfileInfo(Query):
    """A current profile, and whether signing's lint of its templates passed."""

    name: str
    digest: str
    body: dict[str, Any]
    applied_at: datetime
    applied_by: str
    lint_failed: bool
    lint_findings: list[dict[str, Any]] = []


class ProfilesAnswer(Query):
    """Every current profile."""

    profiles: list[ProfileInfo]


class ProvisionerInfo(Query):
    """A provisioner (public key only) and its status."""

    provisioner_id: str
    name: str
    public_key_pem: str
    registered_at: datetime
    registered_by: str
    status: str
    status_reason: str | None = None
    status_by: str | None = None
    status_at: datetime | None = None


class ProvisionersAnswer(Query):
    """Every provisioner."""

    provisioners: list[ProvisionerInfo]


class FindingsQuery(Query):
    """Lint findings and profile lint verdicts, newest first."""

    limit: int = 100


class FindingsAnswer(Query):
    """Archived finding events."""

    findings: list[HistoryEntry]


class VerifyProblem(Query):
    """One position where the archive departs from the log or its checkpoints."""

    stream_seq: int
    kind: str
    detail: str


class VerifyAnswer(Query):
    """The verdict of `audit verify`: clean, or the first position that is not and how."""

    clean: bool
    first_seq: int | None = None
    kind: str | None = None
    detail: str | None = None
    problems: list[VerifyProblem] = []
    positions_with_problems: int = 0
    stream_last_seq: int
    archived_events: int
    checkpoints_checked: int
    seconds: float
    rate_per_s: float


class CheckFinding(Query):
    """One inconsistency on the log."""

    check: str
    stream_seq: int
    detail: str


class LintCoverage(Query):
    """Post-issuance pkilint's coverage over the archive: certificates issued, linted clean, linted
    failing, passed over (its backlog had reached its bound) and still waiting; `through_seq` is how
    far in the log it has gone, `by_profile` the linted ones per profile."""

    issued: int
    clean: int
    failed: int
    passed_over: int
    waiting: int
    through_seq: int
    by_profile: dict[str, dict[str, int]] = Field(default_factory=dict, max_length=10_000)


class CheckAnswer(Query):
    """The consistency checks' findings over the whole archive."""

    events: int
    findings: list[CheckFinding]
    seconds: float


class ReplayProgress(Query):
    """How far a running replay is."""

    running: bool
    done: int
    total: int
    rate_per_s: float


class ReportQuery(Query):
    """An inventory report over the whole archive; `now` (default: audit's clock) judges expiry."""

    expiring_days: int = Field(default=30, ge=0, le=3650)
    limit: int = Field(default=1000, ge=0, le=2000)
    now: datetime | None = None


class Tally(Query):
    """How many certificates have one value (an issuer, a profile, a state, a reason...)."""

    key: str
    count: int


class Breakdown(Query):
    """Counts by value, largest first; values past the first few are summed in `others`."""

    top: list[Tally]
    others: int = 0
    other_keys: int = 0


class DayCount(Query):
    """How many certificates on one UTC day."""

    day: date
    count: int


class ExpiringCertificate(Query):
    """A valid certificate that expires within the report's window."""

    serial: str
    issuer_id: str
    profile: str
    requester: str
    not_after: datetime
    dns_names: list[str] = []


class ReportAnswer(Query):
    """Aggregates of every certificate on the log, judged at `generated_at` (no per-certificate list
    but the capped expiring one, so the answer stays small at any inventory size)."""

    generated_at: datetime
    through_seq: int
    events: int
    malformed: int
    ignored: int
    certificates: int
    by_state: Breakdown
    by_issuer: Breakdown
    by_profile: Breakdown
    by_requester: Breakdown
    revoked_by_reason: Breakdown
    issued_per_day: list[DayCount]
    expiry_timeline: list[DayCount]
    timeline_days: int
    expiring_days: int
    expiring_total: int
    expiring: list[ExpiringCertificate]
    seconds: float = 0.0
