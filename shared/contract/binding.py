"""What a message on the log is, decided by the subject it arrived on (which NATS lets only one
identity publish), never by what its body says about itself.

`bind` is the one check every consumer runs before an event is parsed into its class (see
`Runtime.consumer`), audit runs on every message it archives, and the SDK runs on every outcome it
hears: a message is accepted only if it is small enough, is one JSON object of bounded depth, names
an event type Certbus defines, and arrived on exactly the subject that type and its aggregate id
give (`<root>.<aggregate>.<aggregate_id>.<verb>`). Anything else is parked and flagged with the
reason's code.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from shared.contract.bounds import MAX_EVENT_BYTES, MAX_JSON_DEPTH
from shared.contract.events import BY_SUBJECT, EVENT_CLASSES, Event, Publisher

UnboundCode = Literal["oversize", "malformed", "unknown_type", "subject_mismatch"]


class Unbound(ValueError):
    """A message that is not a valid event on its subject; `code` says which check it failed."""

    def __init__(self, code: UnboundCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: UnboundCode = code


def loads(raw: bytes, limit: int = MAX_EVENT_BYTES) -> dict[str, Any]:
    """One JSON object from `raw`, within `limit` bytes and `MAX_JSON_DEPTH` levels; raises Unbound."""
    if len(raw) > limit:
        raise Unbound("oversize", f"{len(raw)} bytes, more than the {limit} an event may have")
    # Measured before parsing: the JSON decoder recurses, and a recursion error inside it leaves
    # CPython 3.11's recursion accounting broken for the rest of the process.
    if _too_deep(raw):
        raise Unbound("malformed", f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Unbound("malformed", f"not JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise Unbound("malformed", f"a JSON {type(data).__name__}, not an object")
    return data


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def _too_deep(raw: bytes) -> bool:
    """Whether `raw` opens more than MAX_JSON_DEPTH arrays or objects inside one another (brackets
    inside strings do not count). A document with few brackets is not scanned at all."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    depth, in_string, escaped_at = 0, False, -2
    for match in _STRUCTURE.finditer(raw):
        char, at = match.group(), match.start()
        if in_string:
            if char == b"\\" and escaped_at != at - 1:
                escaped_at = at
            elif char == b'"' and escaped_at != at - 1:
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def subject_class(subject: str, root: str) -> type[Event] | None:
    """The event type a subject carries under `root` (`<root>.<aggregate>.<id>.<verb>`), or None."""
    if not subject.startswith(root + "."):
        return None
    parts = subject[len(root) + 1 :].split(".")
    if len(parts) != 3:
        return None
    return BY_SUBJECT.get((parts[0], parts[2]))


def publisher_of(subject: str, root: str) -> Publisher | None:
    """Who may publish on `subject`: the publisher of the event type the subject carries."""
    cls = subject_class(subject, root)
    return cls.publisher if cls is not None else None


def bind(subject: str, root: str, raw: bytes, accept: tuple[type[Event], ...] | None = None) -> dict[str, Any]:
    """The JSON object of a message that is a valid `accept`-able event on its own subject; raises
    Unbound otherwise. The object is not yet validated against its class (pydantic does that)."""
    data = loads(raw)
    event_type = data.get("event_type")
    cls = EVENT_CLASSES.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        shown = event_type[:64] if isinstance(event_type, str) else type(event_type).__name__
        raise Unbound("unknown_type", f"event type {shown!r} is not one Certbus defines")
    aggregate_id = data.get("aggregate_id")
    expected = f"{root}.{cls.aggregate}.{aggregate_id}.{cls.verb}"
    if not isinstance(aggregate_id, str) or subject != expected:
        carried = subject_class(subject, root)
        what = carried.__name__ if carried is not None else "no event type"
        raise Unbound(
            "subject_mismatch",
            f"a {cls.__name__} body on {subject[:200]!r}, which carries {what}"
            + (f" (its own subject is {expected[:200]!r})" if isinstance(aggregate_id, str) else ""),
        )
    if accept is not None and cls not in accept:
        raise Unbound("subject_mismatch", f"{cls.__name__} on {subject[:200]!r} is not an event this consumer takes")
    return data
