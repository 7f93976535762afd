"""Request-reply queries (on the query root, never captured by the stream) and their answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class Query(BaseModel):
    """Base of every query and answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class StatusQuery(Query):
    """The status of a serial (hex)."""

    serial: str


class StatusAnswer(Query):
    """What validation knows of a serial: good, revoked or unknown."""

    serial: str
    status: str
    cert_id: str | None = None
    issuer_id: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None
    dns_names: list[str] = []
    revoked_at: datetime | None = None
    reason: str | None = None


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
    """The newest CRL of an issuer (the current issuing CA when none is named)."""

    ca_id: str | None = None


class CrlAnswer(Query):
    """A CRL in DER, base64-encoded."""

    ca_id: str
    crl_number: int
    this_update: datetime
    next_update: datetime
    der_b64: str


class HistoryQuery(Query):
    """Every event of one certificate, by serial (hex) or certificate id."""

    serial: str


class HistoryEntry(Query):
    """One archived event."""

    stream_seq: int
    event_type: str
    subject: str
    producer: str
    occurred_at: datetime
    event: dict[str, Any]


class HistoryAnswer(Query):
    """A certificate's events in log order."""

    serial: str
    cert_id: str | None
    events: list[HistoryEntry]


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


class Failure(Query):
    """A query that could not be answered, and why."""

    error: str
