"""The audit hash chain and what an archived message says about itself: pure, no I/O.

The archive keeps every message's bytes verbatim, whatever they are; what it indexes is read from a
message only when it is sane and bounded, so that nothing a message contains can stop the archive
(a row too large for an index, a NUL, a lone surrogate, a time out of range, a wrong JSON type).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared.contract.binding import Unbound, bind
from shared.contract.events import EVENT_CLASSES, Event, event_from
from shared.contract.reasons import printable
from shared.pki.crypto import normalise_serial

GENESIS = bytes(32)
DETAIL_MAX = 2048  # characters of a finding's detail (an event's `Text` bound)
SHORT_MAX = 128
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SERIAL = re.compile(r"[0-9a-f]{1,64}")
_TIME_MAX = 64  # characters of an ISO 8601 time worth parsing


def _exact(subject: str) -> bytes:
    # surrogateescape: a subject decoded with it (bytes that are not UTF-8) hashes as its own bytes.
    return subject.encode("utf-8", "surrogateescape")


def canonical(seq: int, subject: str, raw: bytes) -> bytes:
    """The bytes the chain covers for one event: its position, subject and exact payload."""
    return f"{seq}\n".encode() + _exact(subject) + b"\n" + raw


def link(previous: bytes, seq: int, subject: str, raw: bytes) -> bytes:
    """hash = SHA-256(previous hash || canonical bytes)."""
    digest = hashlib.sha256(previous)  # fed piece by piece: the same hash, without copying the payload
    digest.update(b"%d\n" % seq)
    digest.update(_exact(subject))
    digest.update(b"\n")
    digest.update(raw)
    return digest.digest()


def _encodable(value: str) -> str:
    """`value` with lone surrogates escaped (no UTF-8 encoder, so no database or JSON, takes them)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_text(value: str, limit: int = DETAIL_MAX) -> str:
    """`value` as text any database column, terminal or JSON encoder takes: control characters and
    lone surrogates escaped, then cut to `limit` characters (the last one an ellipsis if cut)."""
    text = printable(_encodable(value[: limit * 2]))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stored_subject(subject: str) -> tuple[str, bytes | None]:
    """The subject as the `subject` column holds it, and its exact bytes when that column cannot
    (a NUL or a lone surrogate: Postgres text refuses both); the chain covers the exact subject."""
    if subject.isascii() and subject.isprintable():  # the usual case: no control character, no surrogate
        return subject, None
    shown = printable(_encodable(subject))
    return (subject, None) if shown == subject else (shown, _exact(subject))


def exact_subject(shown: str, exact: bytes | None) -> str:
    """The subject a message arrived on, from its two archive columns (see `stored_subject`)."""
    return exact.decode("utf-8", "surrogateescape") if exact is not None else shown


@dataclass(frozen=True)
class Problem:
    """Why an archived message is not a valid event on its subject: the `shared.contract.binding` code
    (oversize, malformed, unknown_type, subject_mismatch), or `malformed` for a body its class
    refuses; `detail` is bounded and printable."""

    check: str
    detail: str


@dataclass(frozen=True)
class Reading:
    """A message read against its subject: its JSON object if it binds to the subject, the event if
    its class also accepts it, and the problem otherwise."""

    data: dict[str, Any] | None
    event: Event | None
    problem: Problem | None


def read(subject: str, root: str, raw: bytes, *, validate: bool = True) -> Reading:
    """Bind `raw` to `subject` under `root`, then (unless `validate` is false) validate it against its
    class; never raises. Without validation a bound message reads with no event and no problem."""
    try:
        data = bind(subject, root, raw)
    except Unbound as exc:
        detail = str(exc) if exc.code == "subject_mismatch" else f"{exc}, on {subject[:200]!r}"
        return Reading(None, None, Problem(exc.code, safe_text(detail)))
    if not validate:
        return Reading(data, None, None)
    try:
        return Reading(data, event_from(data), None)
    except ValidationError as exc:
        return Reading(data, None, Problem("malformed", safe_text(_invalid(subject, data, exc))))


def _invalid(subject: str, data: dict[str, Any], exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    shown = "; ".join(
        f"{'.'.join(str(part)[:64] for part in e['loc'][1:]) or '(body)'}: {e['msg'][:200]}" for e in errors[:3]
    )
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"malformed: a {data['event_type']} on {subject[:200]!r} that its schema refuses: {shown}{more}"


@dataclass(frozen=True)
class Described:
    """The indexable facts of an archived message: each None unless sane and bounded."""

    event_id: uuid.UUID | None
    event_type: str  # the class a bound message names, else the binding problem's code
    aggregate_id: str | None
    producer: str | None
    occurred_at: datetime | None
    serial: str | None
    cert_id: str | None
    # Serials of other certificates the event is about (a renewal's old certificate): its history
    # lists the event, but the event's certificate id is not theirs.
    related_serials: tuple[str, ...] = ()
    problem: Problem | None = None
    subject: str = ""  # as the `subject` column holds it
    subject_exact: bytes | None = None  # the exact subject, when `subject` cannot hold it


# Fields that name another certificate's serial: the one a renewal request renews, the one a
# renewal's approval and certificate supersede.
_RELATED_SERIAL_FIELDS = ("renews_serial", "supersedes")


def describe(subject: str, raw: bytes, *, root: str, validate: bool = True) -> Described:
    """What the archive indexes of a message on `subject`: a message that is not an event on its own
    subject indexes nothing but its problem (a forged body must not show in anyone's history); one
    that binds but that its class refuses is indexed field by field, each only if sane.

    What is indexed never depends on the class's validation (only `problem` does): a replay, which
    reports no problem, passes `validate=False` and writes the same row."""
    reading = read(subject, root, raw, validate=validate)
    shown, exact = stored_subject(subject)
    data = reading.data
    if data is None:
        assert reading.problem is not None
        return Described(None, reading.problem.check, None, None, None, None, None, (), reading.problem, shown, exact)
    cls = EVENT_CLASSES[data["event_type"]]  # bind checked it
    aggregate_id = _id(data.get("aggregate_id"))
    serial = _serial(data.get("serial"))
    named = [value for name in _RELATED_SERIAL_FIELDS if (value := data.get(name)) is not None]
    related = {s for s in map(_serial, named) if s and s != serial} if named else ()
    return Described(
        event_id=_uuid(data.get("event_id")),
        event_type=cls.__name__,
        aggregate_id=aggregate_id,
        producer=_short(data.get("producer")),
        occurred_at=utc_time(data.get("occurred_at")),
        serial=serial,
        cert_id=aggregate_id if cls.aggregate == "cert" else None,
        related_serials=tuple(sorted(related)),
        problem=reading.problem,
        subject=shown,
        subject_exact=exact,
    )


def _id(value: Any) -> str | None:
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _short(value: Any) -> str | None:
    return safe_text(value, SHORT_MAX) if isinstance(value, str) and value else None


def _serial(value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > SHORT_MAX:
        return None
    serial = normalise_serial(value)
    return serial if _SERIAL.fullmatch(serial) else None


def _uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str) or len(value) > _TIME_MAX:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def utc_time(value: Any) -> datetime | None:
    """An ISO 8601 time in UTC (one without a zone is taken to be UTC), or None if `value` is none."""
    if not isinstance(value, str) or len(value) > _TIME_MAX:
        return None
    try:
        at = datetime.fromisoformat(value)
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def displayable(value: Any) -> Any:
    """A decoded JSON value that any JSON encoder takes (lone surrogates escaped in strings and keys;
    `shared.contract.binding` bounds its depth)."""
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, dict):
        return {displayable(str(k)): displayable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [displayable(v) for v in value]
    return value


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
# Fields that name someone an event is about, not who acted: a certificate is issued by signing,
# for its requester.
_NOT_THE_ACTOR = {"CertificateIssued": ("requester",)}


def actor(event: dict[str, Any]) -> str:
    """Who did what an event records: for an operator's command, the operators who signed it (a
    command whose signatures do not verify is an `operator_signature` finding); else the operator
    or requester it names, else the service that published it (`signing` issued, `enrollment`
    approved by policy). Printable, short; any field of the wrong type is passed over."""
    producer = event.get("producer")
    service = safe_text(producer, SHORT_MAX) if isinstance(producer, str) and producer else "?"
    signatures = event.get("signatures")
    if isinstance(signatures, list) and signatures:
        signers = [s.get("operator") for s in signatures if isinstance(s, dict)]
        named = [name for name in signers if isinstance(name, str) and name]
        if named and len(named) == len(signatures):
            return safe_text("+".join(named), SHORT_MAX)
    about = _NOT_THE_ACTOR.get(str(event.get("event_type")), ())
    for name in _ACTOR_FIELDS:
        if name in about:
            continue
        value = event.get(name)
        if isinstance(value, str) and value:
            return f"{service} (policy)" if value == "policy" else safe_text(value, SHORT_MAX)
    return service
