"""The ingress stream: how a requester's request reaches the log.

A requester never publishes on the log. It puts its request on the ingress stream, on a subject
that names its own identity and the kind of request (`<ingress_root>.<identity>.<kind>`), which
NATS lets only that identity publish. The service that owns the kind admits it onto the log:
enrollment admits enrollment and renewal requests, revocation admits revocation requests and
key-destroyed attestations. Admission is where a request is bounded and its sender named:

- backlog: the ingress stream keeps at most `ingress_backlog` requests of one kind per identity
  that are not admitted yet, and refuses more at publish time, so one requester's flood queues in
  front of nobody but itself for long (work-queue retention: an admitted request leaves the stream);
- size and shape: a request over `MAX_REQUEST_BYTES`, or not a valid event of its kind, is refused
  (`request_malformed`);
- identity: the admitted event's requester field is the identity the subject names, whatever the
  body said, and `accepted_at` is when the ingress stream accepted it (a token is judged then);
- rate: an identity gets at most `admission_rate_per_min` requests admitted a minute, and is
  refused beyond (`rate_limited`);
- one request per id: a request id (its aggregate id) is admitted once, for one identity; a second
  message with the same id is dropped (a retry) or refused, never allowed to answer for another's.

A refused request with a usable id gets its kind's rejection event on the log (as many a minute per
identity as it may have admitted: a flood of junk cannot flood the log); everything refused is also
parked with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from shared.contract.binding import Unbound, loads
from shared.contract.bounds import MAX_REQUEST_BYTES
from shared.contract.events import (
    EnrollmentRequested,
    Event,
    KeyDestroyed,
    RenewalRequested,
    RevocationRequested,
    new_event_id,
)

Kind = Literal["enroll", "renew", "revoke", "key_destroyed"]
_IDENTITY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Intake:
    """One kind of request: the event it is, and the field that names who sent it."""

    kind: Kind
    event: type[Event]
    identity_field: str


INTAKES: dict[Kind, Intake] = {
    "enroll": Intake("enroll", EnrollmentRequested, "requester"),
    "renew": Intake("renew", RenewalRequested, "requester"),
    "revoke": Intake("revoke", RevocationRequested, "requested_by"),
    "key_destroyed": Intake("key_destroyed", KeyDestroyed, "destroyed_by"),
}
KIND_OF: dict[type[Event], Kind] = {intake.event: kind for kind, intake in INTAKES.items()}


def valid_identity(identity: str) -> bool:
    """Whether `identity` can name a requester (one subject token, like an id)."""
    return bool(_IDENTITY.match(identity))


def ingress_subject(root: str, identity: str, kind: Kind) -> str:
    """The subject `identity` puts a request of `kind` on."""
    if not valid_identity(identity):
        raise ValueError(f"identity {identity!r} must be 1-64 letters, digits, '_' or '-'")
    return f"{root}.{identity}.{kind}"


def ingress_filter(root: str, kind: Kind) -> str:
    """The filter that takes every identity's requests of `kind`."""
    return f"{root}.*.{kind}"


class Refused(ValueError):
    """A request that is not admitted: `code` says why, `request_id` is its id if it had a usable one."""

    def __init__(self, code: str, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Admitted:
    """A request fit for the log: `event` names its sender as the subject did."""

    identity: str
    kind: Kind
    event: Event


def sender(subject: str, root: str) -> tuple[str, Kind]:
    """The identity and kind an ingress subject names; raises Refused for any other subject."""
    parts = subject[len(root) + 1 :].split(".") if subject.startswith(root + ".") else []
    if len(parts) != 2 or parts[1] not in INTAKES or not valid_identity(parts[0]):
        raise Refused("request_malformed", f"{subject[:200]!r} is not an ingress subject")
    return parts[0], parts[1]


def admit(subject: str, root: str, raw: bytes, accepted_at: datetime, producer: str) -> Admitted:
    """The event to put on the log for one ingress message, or Refused saying why not.

    The body must be one valid event of the kind its subject names. The sender is the identity the
    subject names (NATS let only that identity publish it), written into the event's requester
    field; `producer` is the admitting service; the event gets a fresh event id (the requester's
    id keeps deduplicating its retries on the ingress stream only) and records the requester's
    event id as its cause and `accepted_at` as when the ingress stream took it.
    """
    identity, kind = sender(subject, root)
    intake = INTAKES[kind]
    try:
        data = loads(raw, MAX_REQUEST_BYTES)
    except Unbound as exc:
        raise Refused("request_malformed", f"the {kind} request is not one JSON event: {exc}") from None
    request_id = _usable_id(data.get("aggregate_id"))
    wanted = intake.event.__name__
    if data.get("event_type") != wanted:
        shown = str(data.get("event_type"))[:64]
        raise Refused("request_malformed", f"a {kind} request must be a {wanted}, not {shown!r}", request_id)
    requester_event_id = data.get("event_id")
    data.update(
        {
            "event_id": str(new_event_id()),
            "producer": producer,
            intake.identity_field: identity,
            "causation_id": str(requester_event_id)[:128] if requester_event_id is not None else None,
            "accepted_at": accepted_at.astimezone(UTC).isoformat(),
        }
    )
    try:
        event = intake.event.model_validate(data)
    except ValidationError as exc:
        raise Refused("request_malformed", _first_error(exc, wanted), request_id) from None
    return Admitted(identity, kind, event)


def _usable_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _ID.match(value) else None


def _first_error(exc: ValidationError, wanted: str) -> str:
    """The first thing wrong with a request, said briefly (never the whole hostile input)."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])[:100]
    return f"not a valid {wanted}: {where}: {error['msg'][:200]} ({exc.error_count()} problem(s) in all)"
