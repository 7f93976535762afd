"""The certificate inventory for `certbus audit report`, folded from the archived log: pure, no I/O.

`Inventory.add` reads messages in log order and, like the consistency checks, never raises on what
it cannot read, whatever JSON value any field holds: a message that is not an event (over the
bounds, not one JSON object, an unknown type) or whose fields are not what its type says is counted
as `malformed`; a body on a subject other than its own (a forgery), an event whose body names
another producer than its type's publisher, duplicates, and events about certificates never issued
are counted as `ignored` (`certbus audit check` says why). `summarise` judges every certificate at
a given time and returns aggregates only, plus the capped list of certificates expiring soon, so
the answer stays small whatever the inventory's size.

A certificate's state, first that applies: destroyed, revoked, superseded, expired (not_after
before the time of the report), valid. `CertificateSuperseded` and `CertificateDestroyed` are not
published yet; they are read by name, matched on (issuer_id, serial) or on the certificate id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.audit.domain import safe_text, utc_time
from shared.contract.binding import Unbound, bind
from shared.contract.events import producer_allowed
from shared.contract.queries import Breakdown, DayCount, ExpiringCertificate, ReportAnswer, Tally

STATES = ("valid", "expired", "revoked", "superseded", "destroyed")
TOP = 100  # values listed per breakdown; the certificates of the others are summed
TEXT_MAX = 200  # characters kept of any text from an event (requesters choose theirs)
NAMES_MAX = 10  # DNS names kept per expiring certificate
TIMELINE_MIN_DAYS = 90
UNKNOWN = "(unknown)"


@dataclass(slots=True)
class Certificate:
    """What the report needs of one issued certificate."""

    serial: str
    issuer_id: str
    profile: str
    requester: str
    issued_at: datetime
    not_after: datetime
    dns_names: list[str]
    revoked_reason: str | None = None
    superseded: bool = False
    destroyed: bool = False

    def state(self, now: datetime) -> str:
        """valid, expired, revoked, superseded or destroyed, at `now`."""
        if self.destroyed:
            return "destroyed"
        if self.revoked_reason is not None:
            return "revoked"
        if self.superseded:
            return "superseded"
        return "expired" if self.not_after < now else "valid"


@dataclass
class Inventory:
    """Feed messages in log order with `add`; read `certificates` or pass it to `summarise`. `root`
    is the log's subject root, against which each message is bound to its subject."""

    root: str
    events: int = 0
    malformed: int = 0
    ignored: int = 0
    through_seq: int = 0
    certificates: dict[tuple[str, str], Certificate] = field(default_factory=dict)
    _by_id: dict[str, tuple[str, str]] = field(default_factory=dict)
    _requesters: dict[str, str] = field(default_factory=dict)

    def add(self, seq: int, subject: str, raw: bytes) -> None:
        """Fold one archived message (on `subject`) into the inventory."""
        self.events += 1
        self.through_seq = max(self.through_seq, seq)
        try:
            data = bind(subject, self.root, raw)
        except Unbound as exc:
            if exc.code == "subject_mismatch":
                self.ignored += 1
            else:
                self.malformed += 1
            return
        kind: str = data["event_type"]  # bind checked it names a type Certbus defines
        fold = _FOLDS.get(kind)
        if fold is None:
            return
        producer = data.get("producer")
        if not isinstance(producer, str) or not producer_allowed(kind, producer):
            self.ignored += 1
            return
        try:
            fold(self, data)
        except (KeyError, TypeError, ValueError, OverflowError):
            self.malformed += 1

    def _requested(self, data: dict[str, Any]) -> None:
        self._requesters.setdefault(_text(data["aggregate_id"]), _text(data["requester"]) or UNKNOWN)

    def _approved(self, data: dict[str, Any]) -> None:
        # Enrollment's approval names the requester it accepted: it outranks the request's own claim.
        self._requesters[_text(data["aggregate_id"])] = _text(data["requester"]) or UNKNOWN

    def _issued(self, data: dict[str, Any]) -> None:
        cert_id = _text(data["aggregate_id"])
        key = (_text(data["issuer_id"]), _text(data["serial"]))
        if key in self.certificates:
            self.ignored += 1  # the same serial again: the first issuance stands
            return
        names = data.get("dns_names") or []
        if not isinstance(names, list):
            raise TypeError("dns_names is not a list")
        self.certificates[key] = Certificate(
            serial=key[1],
            issuer_id=key[0],
            profile=_text(data["profile"]),
            requester=self._requesters.get(cert_id, UNKNOWN),
            issued_at=_time(data["occurred_at"]),
            not_after=_time(data["not_after"]),
            dns_names=[_text(n) for n in names[:NAMES_MAX]],
        )
        self._by_id.setdefault(cert_id, key)

    def _revoked(self, data: dict[str, Any]) -> None:
        cert = self.certificates.get((_text(data["issuer_id"]), _text(data["serial"])))
        if cert is None or cert.revoked_reason is not None:
            self.ignored += 1  # never issued, or revoked before: a revocation is final
            return
        cert.revoked_reason = _text(data["reason"])

    def _superseded(self, data: dict[str, Any]) -> None:
        cert = self._find(data)
        if cert is None:
            self.ignored += 1
            return
        cert.superseded = True

    def _destroyed(self, data: dict[str, Any]) -> None:
        cert = self._find(data)
        if cert is None:
            self.ignored += 1
            return
        cert.destroyed = True

    def _find(self, data: dict[str, Any]) -> Certificate | None:
        """The certificate an event names by (issuer_id, serial), or else by certificate id."""
        if isinstance(data.get("issuer_id"), str) and isinstance(data.get("serial"), str):
            return self.certificates.get((_text(data["issuer_id"]), _text(data["serial"])))
        key = self._by_id.get(_text(data["aggregate_id"]))
        return self.certificates.get(key) if key is not None else None


_FOLDS: dict[str, Callable[[Inventory, dict[str, Any]], None]] = {
    "EnrollmentRequested": Inventory._requested,
    "EnrollmentApproved": Inventory._approved,
    "CertificateIssued": Inventory._issued,
    "CertificateRevoked": Inventory._revoked,
    "CertificateSuperseded": Inventory._superseded,
    "CertificateDestroyed": Inventory._destroyed,
}


def inventory_of(rows: Iterable[tuple[int, str, bytes]], root: str) -> Inventory:
    """Fold (seq, subject, raw) rows of the log under `root`, in log order."""
    inventory = Inventory(root)
    for seq, subject, raw in rows:
        inventory.add(seq, subject, raw)
    return inventory


def summarise(inventory: Inventory, now: datetime, expiring_days: int = 30, limit: int = 1000) -> ReportAnswer:
    """Every certificate judged at `now`: counts by state, issuer, profile, requester and revocation
    reason; issuance per UTC day; the expiry timeline of valid certificates (the next 90 days or
    `expiring_days`, whichever is longer); the first `limit` valid certificates expiring within
    `expiring_days`, soonest first."""
    if expiring_days < 0 or limit < 0:
        raise ValueError(f"expiring_days and limit must not be negative (got {expiring_days} and {limit})")
    now = _utc(now)
    timeline_days = max(TIMELINE_MIN_DAYS, expiring_days)
    window_end, timeline_end = now + timedelta(days=expiring_days), now + timedelta(days=timeline_days)
    states: Counter[str] = Counter(dict.fromkeys(STATES, 0))
    issuers: Counter[str] = Counter()
    profiles: Counter[str] = Counter()
    requesters: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    issued: Counter[date] = Counter()
    timeline: Counter[date] = Counter()
    expiring: list[Certificate] = []
    for cert in inventory.certificates.values():
        state = cert.state(now)
        states[state] += 1
        issuers[cert.issuer_id] += 1
        profiles[cert.profile] += 1
        requesters[cert.requester] += 1
        issued[cert.issued_at.date()] += 1
        if cert.revoked_reason is not None:
            reasons[cert.revoked_reason] += 1
        if state == "valid" and cert.not_after <= timeline_end:
            timeline[cert.not_after.date()] += 1
            if cert.not_after <= window_end:
                expiring.append(cert)
    expiring.sort(key=lambda c: (c.not_after, c.issuer_id, c.serial))
    return ReportAnswer(
        generated_at=now,
        through_seq=inventory.through_seq,
        events=inventory.events,
        malformed=inventory.malformed,
        ignored=inventory.ignored,
        certificates=len(inventory.certificates),
        by_state=Breakdown(top=[Tally(key=s, count=states[s]) for s in STATES]),
        by_issuer=_breakdown(issuers),
        by_profile=_breakdown(profiles),
        by_requester=_breakdown(requesters),
        revoked_by_reason=_breakdown(reasons),
        issued_per_day=_days(issued),
        expiry_timeline=_days(timeline),
        timeline_days=timeline_days,
        expiring_days=expiring_days,
        expiring_total=len(expiring),
        expiring=[
            ExpiringCertificate(
                serial=c.serial,
                issuer_id=c.issuer_id,
                profile=c.profile,
                requester=c.requester,
                not_after=c.not_after,
                dns_names=c.dns_names,
            )
            for c in expiring[:limit]
        ],
    )


def _breakdown(counts: Counter[str], top: int = TOP) -> Breakdown:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    rest = ranked[top:]
    return Breakdown(
        top=[Tally(key=k, count=n) for k, n in ranked[:top]],
        others=sum(n for _, n in rest),
        other_keys=len(rest),
    )


def _days(counts: Counter[date]) -> list[DayCount]:
    return [DayCount(day=d, count=n) for d, n in sorted(counts.items())]


def _text(value: Any) -> str:
    """Text from an event, printable and at most TEXT_MAX characters (ValueError if not text)."""
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return safe_text(value, TEXT_MAX)


def _time(value: Any) -> datetime:
    """A time from an event, in UTC (ValueError if not an ISO 8601 time)."""
    at = utc_time(value)
    if at is None:
        raise ValueError(f"expected an ISO 8601 time, got {type(value).__name__}")
    return at


def _utc(at: datetime) -> datetime:
    """`at` in UTC (a time without a zone is taken to be UTC already)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
