"""The audit hash chain and what an archived event says about itself: pure, no I/O."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.crypto import normalise_serial
from shared.reasons import printable

GENESIS = bytes(32)


def canonical(seq: int, subject: str, raw: bytes) -> bytes:
    """The bytes the chain covers for one event: its position, subject and exact payload."""
    return f"{seq}\n{subject}\n".encode() + raw


def link(previous: bytes, seq: int, subject: str, raw: bytes) -> bytes:
    """hash = SHA-256(previous hash || canonical bytes)."""
    return hashlib.sha256(previous + canonical(seq, subject, raw)).digest()


@dataclass(frozen=True)
class Described:
    """The indexable facts of an archived event (whatever its schema, even if malformed)."""

    event_id: str | None
    event_type: str
    aggregate_id: str | None
    producer: str | None
    occurred_at: datetime | None
    serial: str | None
    cert_id: str | None


def describe(subject: str, raw: bytes) -> Described:
    """Read the envelope fields of a raw event; a malformed one is archived as `malformed`."""
    try:
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        occurred = datetime.fromisoformat(str(data["occurred_at"])) if "occurred_at" in data else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Described(None, "malformed", None, None, None, None, None)
    parts = subject.split(".")
    cert_id = parts[2] if len(parts) == 4 and parts[1] == "cert" else None
    serial = data.get("serial")
    # Every text is made printable: a hostile NUL must not stop the archive (Postgres text refuses it).
    return Described(
        event_id=str(data.get("event_id")) if data.get("event_id") else None,
        event_type=printable(str(data.get("event_type", "unknown"))),
        aggregate_id=printable(str(data.get("aggregate_id"))) if data.get("aggregate_id") else None,
        producer=printable(str(data.get("producer"))) if data.get("producer") else None,
        occurred_at=occurred,
        serial=printable(normalise_serial(serial)) if isinstance(serial, str) else None,
        cert_id=cert_id,
    )


# Who acted, by the field each event type records it in (the first present wins).
_ACTOR_FIELDS = (
    "operator",
    "approved_by",
    "requested_by",
    "rejected_by",
    "declared_by",
    "retired_by",
    "applied_by",
    "blocked_by",
    "requester",
)


def actor(event: dict[str, Any]) -> str:
    """Who did what an event records: the operator or requester it names, else the service that
    published it (`signing` issued, `enrollment` approved by policy). Made printable."""
    for name in _ACTOR_FIELDS:
        value = event.get(name)
        if isinstance(value, str) and value:
            who = value if value != "policy" else f"{event.get('producer', '?')} (policy)"
            return printable(who)
    return printable(str(event.get("producer") or "?"))
