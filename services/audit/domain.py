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
    # Serials of other certificates the event is about (a renewal's old certificate): its history
    # lists the event, but the event's certificate id is not theirs.
    related_serials: tuple[str, ...] = ()


# Fields that name another certificate's serial: the one a renewal request renews, the one a
# renewal's approval and certificate supersede.
_RELATED_SERIAL_FIELDS = ("renews_serial", "supersedes")


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
    related = {
        printable(normalise_serial(value))
        for value in (data.get(name) for name in _RELATED_SERIAL_FIELDS)
        if isinstance(value, str) and value
    }
    # Every text is made printable: a hostile NUL must not stop the archive (Postgres text refuses it).
    return Described(
        event_id=str(data.get("event_id")) if data.get("event_id") else None,
        event_type=printable(str(data.get("event_type", "unknown"))),
        aggregate_id=printable(str(data.get("aggregate_id"))) if data.get("aggregate_id") else None,
        producer=printable(str(data.get("producer"))) if data.get("producer") else None,
        occurred_at=occurred,
        serial=printable(normalise_serial(serial)) if isinstance(serial, str) else None,
        cert_id=cert_id,
        related_serials=tuple(sorted(related)),
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
    "ordered_by",
    "destroyed_by",
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
