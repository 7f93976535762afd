"""Consistency checks over the archived log (in the spirit of Boulder's cert-checker): pure, no I/O.

Each check reads the events in log order and reports findings with the position that shows them:
- `producer`: an event whose producer is not the service allowed to publish its type;
- `approval`: a certificate issued without exactly one approved enrollment before it;
- `issuer`: a certificate issued by a CA that signing never announced (no `CaCreated`);
- `serial`: a serial issued twice by one issuer;
- `revoked_unknown`: a revocation of a certificate that was never issued.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.events import PRODUCERS


@dataclass(frozen=True)
class Finding:
    """One inconsistency: which check, where on the log, and what is wrong."""

    check: str
    stream_seq: int
    detail: str


@dataclass
class Checker:
    """Feed events in log order with `add`; read `findings`."""

    findings: list[Finding] = field(default_factory=list)
    events: int = 0
    _approvals: dict[str, int] = field(default_factory=dict)
    _cas: set[str] = field(default_factory=set)
    _serials: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, seq: int, raw: bytes) -> None:
        """Check one archived event (malformed ones are the archive's business, not these checks')."""
        self.events += 1
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError):
            return
        if not isinstance(data, dict):
            return
        kind = str(data.get("event_type", ""))
        allowed = PRODUCERS.get(kind)
        producer = str(data.get("producer", ""))
        if allowed is not None and producer not in allowed.split("|"):
            self._flag("producer", seq, f"{kind} published by {producer!r}; only {allowed} may publish it")
        if kind == "CaCreated" and producer == "signing":
            self._cas.add(str(data.get("ca_id")))
        elif kind == "EnrollmentApproved":
            request = str(data.get("aggregate_id"))
            self._approvals[request] = self._approvals.get(request, 0) + 1
        elif kind == "CertificateIssued":
            self._issued(seq, data)
        elif kind == "CertificateRevoked":
            key = (str(data.get("issuer_id")), str(data.get("serial")))
            if key not in self._serials:
                self._flag("revoked_unknown", seq, f"serial {key[1]} of {key[0]} was revoked but never issued")

    def _issued(self, seq: int, data: dict[str, Any]) -> None:
        request, issuer, serial = str(data.get("aggregate_id")), str(data.get("issuer_id")), str(data.get("serial"))
        approvals = self._approvals.get(request, 0)
        if approvals != 1:
            self._flag(
                "approval",
                seq,
                f"certificate {serial} for request {request} has {approvals} approved enrollments before it, not 1",
            )
        if issuer not in self._cas:
            self._flag("issuer", seq, f"certificate {serial} names issuer {issuer}, which signing never announced")
        first = self._serials.setdefault((issuer, serial), seq)
        if first != seq:
            self._flag("serial", seq, f"serial {serial} of {issuer} was already issued at {first}")

    def _flag(self, check: str, seq: int, detail: str) -> None:
        self.findings.append(Finding(check, seq, detail))


def check_all(rows: Iterable[tuple[int, bytes]]) -> Checker:
    """Run every check over (seq, raw) rows in log order."""
    checker = Checker()
    for seq, raw in rows:
        checker.add(seq, raw)
    return checker
