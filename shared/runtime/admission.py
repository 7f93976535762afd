"""Admitting requests from the ingress stream onto the log (see `shared.contract.ingress` for the rules).

A service that owns some kinds of request (enrollment: enroll, renew; revocation: revoke,
key_destroyed) builds one `Admission`: a durable consumer of the ingress stream whose group
commit, in one transaction per pull, claims each request id, applies the per-identity rate, puts
the admitted events (and the refusals' rejection events) in the outbox and parks what it refuses.
The stream's message is acknowledged (and so leaves the work queue) only after that commit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from prometheus_client import Counter

from shared.contract.events import Event
from shared.contract.ingress import INTAKES, Admitted, Kind, Refused, admit, sender
from shared.contract.reasons import Reason, printable
from shared.runtime.consumer import Delivery
from shared.runtime.outbox import OutboxEntry, enqueue_many
from shared.runtime.service import Runtime

log = logging.getLogger("certbus.admission")
ADMITTED = Counter("certbus_requests_admitted_total", "Requests admitted from the ingress stream", ["service", "kind"])
REFUSED = Counter("certbus_requests_refused_total", "Requests refused at admission", ["service", "code"])

# Builds the rejection event of a refused request of `kind` with a usable id (None: the kind has
# none), in the admission's transaction (it may also record the refusal in the service's tables).
Refusal = Callable[[asyncpg.Connection, Kind, str, str, Reason, bytes], Awaitable[Event | None]]
WINDOW = timedelta(minutes=1)


@dataclass
class _Window:
    admitted: int
    refused: int
    changed: bool = False


@dataclass
class _Verdict:
    """What admission does with one message."""

    subject: str
    raw: bytes
    seq: int
    outcome: Admitted | Refused
    identity: str | None
    window: datetime
    publish: bool = True  # the admitted event, or the refusal's rejection, goes on the log
    park: bool = True  # a refusal is parked with its reason


def _window_of(at: datetime) -> datetime:
    return at - timedelta(seconds=at.timestamp() % WINDOW.total_seconds())


class Admission:
    """Admits the requests of `kinds` for service `rt` (register it before the service starts)."""

    def __init__(self, rt: Runtime, kinds: Sequence[Kind], refusal: Refusal, rate_per_min: int) -> None:
        self._rt = rt
        self._kinds = tuple(kinds)
        self._refusal = refusal
        self._rate = rate_per_min
        self._swept_before: datetime | None = None  # rate windows before this are deleted

    def register(self) -> None:
        """Attach the ingress consumer to the runtime."""

        self._rt.ingress_batch_consumer("admit", self._kinds, self._process)

    async def _process(self, items: list[tuple[tuple[str, bytes], Delivery]]) -> list[OutboxEntry]:
        rt = self._rt
        verdicts = []
        for (subject, raw), delivery in items:
            try:
                outcome: Admitted | Refused = admit(
                    subject, rt.settings.ingress_root, raw, delivery.accepted_at, rt.name
                )
            except Refused as refused:
                outcome = refused
            identity = outcome.identity if isinstance(outcome, Admitted) else _identity_of(subject, rt)
            verdicts.append(_Verdict(subject, raw, delivery.seq, outcome, identity, _window_of(delivery.accepted_at)))
        async with rt.pool.acquire() as conn, conn.transaction():
            windows = await _lock_windows(conn, {(v.identity, v.window) for v in verdicts if v.identity})
            claimed = await _claimed(conn, [_claim_key(v) for v in verdicts if _claim_key(v)])
            for verdict in verdicts:
                self._judge(verdict, windows, claimed)
            events = await self._events(conn, verdicts)
            swept = await _save_windows(conn, windows, self._swept_before)
            await _park(conn, rt.durable("admit"), [v for v in verdicts if isinstance(v.outcome, Refused) and v.park])
            entries = await enqueue_many(conn, events, rt.root)
        self._swept_before = swept  # committed (a rolled-back sweep is done again)
        return entries

    def _judge(
        self,
        verdict: _Verdict,
        windows: dict[tuple[str, datetime], _Window],
        claimed: dict[tuple[str, str], str],
    ) -> None:
        """Decide, in stream order, whether a message is admitted, refused with an event, or dropped."""
        key = _claim_key(verdict)
        if key is not None and key in claimed:
            # The id was answered before: a retry of the same identity's request is dropped quietly;
            # anyone else's use of the id is refused without an event (the id is not theirs).
            verdict.publish = False
            if claimed[key] == verdict.identity:
                verdict.park = False
                if isinstance(verdict.outcome, Admitted):
                    verdict.outcome = Refused("request_duplicate", "already answered", key[1])
                return
            verdict.outcome = Refused(
                "request_id_taken", f"request id {key[1]} was already used by another requester", key[1]
            )
            return
        window = windows.get((verdict.identity, verdict.window)) if verdict.identity else None
        if isinstance(verdict.outcome, Admitted):
            assert window is not None
            if window.admitted < self._rate:
                window.admitted += 1
                window.changed = True
                if key is not None:
                    claimed[key] = verdict.outcome.identity
                return
            verdict.outcome = Refused(
                "rate_limited",
                f"{verdict.outcome.identity} sent more than {self._rate} requests in a minute: "
                "send fewer, or ask an operator for a higher limit",
                verdict.outcome.event.aggregate_id,
            )
        # A refusal goes on the log (and is parked) only within the identity's budget per minute.
        if window is None or window.refused >= self._rate or verdict.outcome.request_id is None:
            verdict.publish = False
            verdict.park = window is not None and window.refused < self._rate
            if window is not None and verdict.park:
                window.refused += 1
                window.changed = True
        else:
            window.refused += 1
            window.changed = True
        if key is not None and verdict.publish:
            claimed[key] = verdict.identity or ""

    async def _events(self, conn: asyncpg.Connection, verdicts: list[_Verdict]) -> list[Event]:
        """Claim, in one statement, the ids of what goes on the log, then build its events (in
        stream order): the admitted requests, and the rejections of refusals within the budget."""
        going = [v for v in verdicts if isinstance(v.outcome, Admitted) or v.publish]
        claims = [(_claim_key(v), _identity_of(v.subject, self._rt) or "", _label(v.outcome)) for v in going]
        won = await _claim_all(conn, [(key, identity, label) for key, identity, label in claims if key is not None])
        events: list[Event] = []
        for verdict in verdicts:
            outcome = verdict.outcome
            if isinstance(outcome, Refused):
                REFUSED.labels(self._rt.name, outcome.code).inc()
                if verdict.park or verdict.publish:  # beyond the budget a flood is only counted
                    log.warning(
                        "refused a request at admission",
                        extra={
                            "identity": verdict.identity,
                            "request": outcome.request_id,
                            "code": outcome.code,
                            "reason": printable(outcome.message[:300]),
                        },
                    )
            key = _claim_key(verdict)
            if key is None or key not in won or not (isinstance(outcome, Admitted) or verdict.publish):
                continue
            if isinstance(outcome, Admitted):
                events.append(outcome.event)
                ADMITTED.labels(self._rt.name, outcome.kind).inc()
            elif outcome.request_id is not None and verdict.identity is not None:
                _, kind = sender(verdict.subject, self._rt.settings.ingress_root)
                reason = Reason(code=outcome.code, message=outcome.message)
                rejection = await self._refusal(conn, kind, outcome.request_id, verdict.identity, reason, verdict.raw)
                if rejection is not None:
                    events.append(rejection)
        return events


def _identity_of(subject: str, rt: Runtime) -> str | None:
    """The identity an ingress subject names (None: not an ingress subject)."""
    try:
        return sender(subject, rt.settings.ingress_root)[0]
    except Refused:
        return None


def _claim_key(verdict: _Verdict) -> tuple[str, str] | None:
    """The (aggregate, id) a message would answer for, if it names a usable id."""
    outcome = verdict.outcome
    if isinstance(outcome, Admitted):
        return outcome.event.aggregate, outcome.event.aggregate_id
    if outcome.request_id is None or verdict.identity is None:
        return None
    return INTAKES[verdict.subject.rsplit(".", 1)[-1]].event.aggregate, outcome.request_id  # type: ignore[index]


async def _claimed(conn: asyncpg.Connection, keys: list[tuple[str, str] | None]) -> dict[tuple[str, str], str]:
    wanted = [k for k in keys if k is not None]
    if not wanted:
        return {}
    rows = await conn.fetch(
        "SELECT c.aggregate, c.aggregate_id, c.identity FROM admission_claims c "
        "JOIN unnest($1::text[], $2::text[]) AS k(a, i) ON c.aggregate = k.a AND c.aggregate_id = k.i",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {(r["aggregate"], r["aggregate_id"]): r["identity"] for r in rows}


def _label(outcome: Admitted | Refused) -> str:
    return "admitted" if isinstance(outcome, Admitted) else outcome.code


async def _claim_all(conn: asyncpg.Connection, claims: list[tuple[tuple[str, str], str, str]]) -> set[tuple[str, str]]:
    """Claim request ids for good, in one statement: the ids this transaction won (another
    replica may have answered some first)."""
    if not claims:
        return set()
    rows = await conn.fetch(
        "INSERT INTO admission_claims (aggregate, aggregate_id, identity, outcome) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING "
        "RETURNING aggregate, aggregate_id",
        [key[0] for key, _, _ in claims],
        [key[1] for key, _, _ in claims],
        [identity for _, identity, _ in claims],
        [label for _, _, label in claims],
    )
    return {(r["aggregate"], r["aggregate_id"]) for r in rows}


async def _lock_windows(
    conn: asyncpg.Connection, keys: set[tuple[str | None, datetime]]
) -> dict[tuple[str, datetime], _Window]:
    """The rate windows of these (identity, minute) pairs, created if new and locked to the commit."""
    wanted = sorted((identity, at) for identity, at in keys if identity is not None)
    if not wanted:
        return {}
    # One statement: a new window is inserted, an existing one locked by a no-op update (in key
    # order, as FOR UPDATE would), and either way its latest committed counts are returned.
    rows = await conn.fetch(
        "INSERT INTO admission_windows AS w (identity, window_start) "
        "SELECT i, s FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS k(i, s, n) ORDER BY n "
        "ON CONFLICT (identity, window_start) DO UPDATE SET admitted = w.admitted "
        "RETURNING w.identity, w.window_start, w.admitted, w.refused",
        [k[0] for k in wanted],
        [k[1] for k in wanted],
    )
    return {(r["identity"], r["window_start"]): _Window(r["admitted"], r["refused"]) for r in rows}


async def _save_windows(
    conn: asyncpg.Connection, windows: dict[tuple[str, datetime], _Window], swept_before: datetime | None
) -> datetime | None:
    """Write the windows' new counts, and delete windows more than an hour older than the oldest
    of them when that bound has moved since the last sweep (`swept_before`, a minute at most: a
    window is a minute); returns the bound swept to."""
    changed = [(k, w) for k, w in windows.items() if w.changed]
    if changed:
        await conn.execute(
            "UPDATE admission_windows w SET admitted = v.a, refused = v.r "
            "FROM unnest($1::text[], $2::timestamptz[], $3::int[], $4::int[]) AS v(i, s, a, r) "
            "WHERE w.identity = v.i AND w.window_start = v.s",
            [k[0] for k, _ in changed],
            [k[1] for k, _ in changed],
            [w.admitted for _, w in changed],
            [w.refused for _, w in changed],
        )
    if windows:
        oldest = min(start for _, start in windows) - timedelta(hours=1)
        if swept_before is None or oldest > swept_before:
            await conn.execute("DELETE FROM admission_windows WHERE window_start < $1", oldest)
            return oldest
    return swept_before


async def _park(conn: asyncpg.Connection, consumer: str, verdicts: list[_Verdict]) -> None:
    if verdicts:
        await conn.executemany(
            "INSERT INTO parked (consumer, subject, stream_seq, payload, reason) VALUES ($1, $2, $3, $4, $5)",
            [(consumer, printable(v.subject[:500]), v.seq, v.raw, str(v.outcome)[:4000]) for v in verdicts],
        )
