"""What the agent knows of each certificate, its renewal in progress, and its backoff: no I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.client.agent.config import CertificateEntry
from shared.contract.events import CertificateIssued, EnrollmentRequested, KeyDestroyed, RenewalRequested


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: after n failures, wait uniformly in [0, min(cap, base * 2^(n-1)))."""

    base_s: float
    cap_s: float

    def ceiling(self, failures: int) -> float:
        """The longest wait after `failures` consecutive failures."""
        return min(self.cap_s, self.base_s * math.pow(2, min(max(failures - 1, 0), 64)))

    def delay(self, failures: int, rng: random.Random) -> float:
        """How long to wait after `failures` consecutive failures."""
        return rng.uniform(0, self.ceiling(failures))


def renewal_point(not_before: datetime, not_after: datetime, fraction: float) -> datetime:
    """When less than `fraction` of the certificate's lifetime is left."""
    return not_after - (not_after - not_before) * fraction


@dataclass
class Tracked:
    """What the agent knows of one certificate (in memory; the renewal in progress is on disk)."""

    entry: CertificateEntry
    serial: str = ""
    not_before: datetime | None = None
    not_after: datetime | None = None
    revoked_reason: str | None = None  # from a revocation event or a status check
    due_cause: str | None = None  # from a renewal-due event
    use_token: bool = False  # renewal was refused: re-enroll with a token (if a token_command is set)
    failures: int = 0  # consecutive failures of `failure_kind`
    failure_kind: Literal["transient", "terminal"] = "transient"
    retry_at: datetime | None = None
    waiting_for_connection: bool = False
    check_status: bool = False
    renewals: int = 0

    def renewal_reason(self, now: datetime, fraction: float) -> str | None:
        """Why this certificate should be renewed now, or None."""
        if self.revoked_reason is not None:
            return f"revoked ({self.revoked_reason})"
        if self.due_cause is not None:
            return f"renewal due ({self.due_cause})"
        if self.not_before is None or self.not_after is None:
            return None
        if now >= self.not_after:
            return "expired"
        if now >= renewal_point(self.not_before, self.not_after, fraction):
            return "less than the renewal fraction of its lifetime left"
        return None

    def method(self) -> Literal["renewal", "enrollment"]:
        """Renew with the current key's proof, or (revoked other than by CA compromise, or renewal
        refused) re-enroll with a one-time token, if the entry can get one."""
        lost_proof = self.revoked_reason is not None and self.revoked_reason != "cACompromise"
        if self.entry.token_command and (self.use_token or lost_proof):
            return "enrollment"
        return "renewal"


class RenewalState(BaseModel):
    """A renewal in progress, as kept in `<key>.renewal.json` (no secret: requests, certificates, proofs)."""

    model_config = ConfigDict(extra="forbid")

    renews_serial: str
    request: Annotated[RenewalRequested | EnrollmentRequested, Field(discriminator="event_type")]
    issued: CertificateIssued | None = None
    installed: bool = False
    reloaded: bool = False
    attestation: KeyDestroyed | None = None
