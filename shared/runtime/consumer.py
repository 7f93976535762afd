"""Exactly-once effects on at-least-once delivery.

Durable pull consumers with explicit ack; FastStream's ack policy is NACK_ON_ERROR, chosen so
that an unexpected error is retried (up to `max_deliver`) rather than dropped on the first try.
Around every handler this middleware decides what a failure means:

- a message that is not a valid event on its own subject (`Unbound`: over the bounds, not JSON,
  an unknown type, or a body on another type's subject), a malformed event or a broken invariant
  (`ValidationError`, `EventRejected`) can never be applied: it is parked in the service's
  `parked` table with its reason, and acked;
- an infrastructure outage (Postgres or NATS unreachable) is not the message's fault: the
  handler is retried in place with backoff, keeping the message in progress, so no delivery
  is spent and nothing accepted is ever parked because a database restarted;
- anything else is nacked and redelivered, and parked on its last delivery.

While the handler runs, the message is held in the process's `InFlight` registry, whose heartbeat
keeps it in progress on JetStream (ack_wait is short, see `shared.runtime.inflight`); it is let go
before FastStream acks or nacks it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

import asyncpg
import nats.errors
import nats.js.errors
from faststream import BaseMiddleware
from faststream.message import StreamMessage
from nats.aio.msg import Msg
from pydantic import ValidationError

from shared.base import logs
from shared.contract.binding import Unbound
from shared.contract.events import Event, OperatorCommand
from shared.contract.reasons import printable
from shared.runtime.inflight import InFlight
from shared.runtime.metrics import EVENTS_CONSUMED, EVENTS_DUPLICATE, EVENTS_PARKED, HANDLER_SECONDS
from shared.runtime.outbox import OutboxEntry
from shared.trust import operators

log = logging.getLogger("certbus.consumer")


class WaitingFor(Exception):
    """A step that cannot be taken until something else is on the log (an issuing CA certified by
    the offline root ceremony): retried in place, as an outage is, and never parked."""


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    WaitingFor,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    # The schema dropped under the service (its database lost): it stops and rebuilds; meanwhile
    # nothing is spent or parked (shared.runtime.rebuild).
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.InvalidSchemaNameError,
    ConnectionError,
    OSError,
    TimeoutError,  # includes nats.errors.TimeoutError
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.js.errors.NoStreamResponseError,
)


# An outage retried in place waits this long first, then twice as long each time up to its cap.
FIRST_RETRY_S = 0.2


async def retry_in_place(
    step: Callable[[], Awaitable[T]],
    *,
    keep_alive: Callable[[], Awaitable[object]],
    stopping: Callable[[], bool],
    max_backoff_s: float,
    context: Mapping[str, object] | None = None,
) -> T:
    """Run `step` until it gets past an outage (TRANSIENT_ERRORS): after each, log it, tell the
    server the messages are still being worked on (`keep_alive`), wait FIRST_RETRY_S, then twice
    as long each time up to `max_backoff_s`, and run it again. The outage's error is raised once the
    service is `stopping`, so shutdown never waits on an outage; any other error at once."""
    delay = FIRST_RETRY_S
    while True:
        try:
            return await step()
        except TRANSIENT_ERRORS as exc:
            if stopping():
                raise
            log.warning(
                "cannot proceed yet (an outage, or waiting for the log), retrying in place",
                extra={**(context or {}), "error": repr(exc), "retry_in_s": delay},
            )
            try:
                await keep_alive()
            except Exception as keep_failed:  # noqa: BLE001 - the outage may be NATS's: the retry goes on
                log.debug("could not keep the messages in progress", extra={"error": repr(keep_failed)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


class EventRejected(Exception):
    """An event that can never be applied (a broken invariant); it is parked, not retried."""


PoolGetter = Callable[[], asyncpg.Pool]
T = TypeVar("T")
Apply = Callable[[asyncpg.Connection, Event, "Delivery"], Awaitable[Sequence[OutboxEntry] | None]]
# What a consumer does with one type of event (its parameter is that type, hence Any here).
Projection = Callable[[asyncpg.Connection, Any, "Delivery"], Awaitable[Sequence[OutboxEntry] | None]]
# What a consumer does with a run of consecutive events of one type, in one go (see `Together`).
RunProjection = Callable[[asyncpg.Connection, list[tuple[Any, "Delivery"]]], Awaitable[Sequence[OutboxEntry] | None]]


@dataclass(frozen=True)
class Together:
    """A projection that applies a run of consecutive events of its type (in one group, nothing
    between them) with set-based SQL: a few statements for the run rather than a few per event. It
    must leave what applying them one by one in log order would; a run it rejects is applied again
    one event per transaction by the group commit, so that only the bad event is parked."""

    apply: RunProjection


# A consumer's table, from event type to what it does with it: the one list of what it consumes.
Projections = Mapping[type[Event], "Projection | Together"]
Process = Callable[[list[tuple[T, "Delivery"]]], Awaitable[list[OutboxEntry]]]


@dataclass(frozen=True)
class Delivery:
    """Where and when the log accepted a message (its stream sequence and stored time), and for an
    operator command, the operators whose signatures authorise it (see `shared.trust.operators`)."""

    seq: int
    accepted_at: datetime
    signers: tuple[str, ...] = ()

    @classmethod
    def of(cls, msg: StreamMessage[Any]) -> Delivery:
        """The delivery metadata of a JetStream message."""
        meta = msg.raw_message.metadata
        return cls(meta.sequence.stream, meta.timestamp)


Publish = Callable[[list[OutboxEntry]], Awaitable[None]]


async def park_message(conn: asyncpg.Connection, service: str, raw: Msg, reason: str) -> None:
    """Keep a message that can never be applied, with the reason, in the service's `parked` table."""
    seq = raw.metadata.sequence.stream
    await conn.execute(
        "INSERT INTO parked (consumer, subject, stream_seq, payload, reason) VALUES ($1, $2, $3, $4, $5)",
        raw.metadata.consumer,
        printable(raw.subject[:1000]),  # NATS takes a NUL in a subject; Postgres text does not
        seq,
        raw.data,
        reason[:4000],
    )
    EVENTS_PARKED.labels(service).inc()
    log.error(
        "parked a message that cannot be applied",
        extra={"subject": raw.subject, "stream_seq": seq, "reason": reason[:500]},
    )


def event_middleware(
    service: str,
    pool: PoolGetter,
    max_deliver: int,
    stopping: Callable[[], bool],
    *,
    in_flight: InFlight,
    max_backoff_s: float = 2.0,
) -> type[BaseMiddleware]:
    """Build the middleware class that parks, retries or nacks for `service`'s consumers.

    `stopping` says the service is shutting down: an in-place retry then gives up and the message
    is nacked for redelivery, so shutdown never waits on an outage. An in-place retry waits 0.2 s,
    then twice as long each time up to `max_backoff_s`: a short cap, because a retry costs one
    attempt to reach the database or NATS, and the first attempts after an outage can still fail
    on a pooled connection the outage broke (measured in the fault suite's PostgreSQL crash-stop:
    with a 10 s cap the last request in flight had its certificate 14.4 s after the crash, with
    2 s 6.9 s). Each message is held in
    `in_flight` while it is handled (FastStream acks or nacks it only after this middleware returns).
    """

    async def park(msg: StreamMessage[Any], reason: str) -> None:
        async with pool().acquire() as conn:
            await park_message(conn, service, msg.raw_message, reason)

    class EventMiddleware(BaseMiddleware):
        async def consume_scope(
            self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            with in_flight.holding(msg.raw_message):
                return await self._handle(call_next, msg)

        async def _handle(
            self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            try:
                return await retry_in_place(
                    lambda: call_next(msg),
                    keep_alive=msg.in_progress,  # type: ignore[attr-defined]
                    stopping=stopping,
                    max_backoff_s=max_backoff_s,
                )
            except Unbound as exc:
                await park(msg, str(exc))
                return None
            except (ValidationError, EventRejected) as exc:
                await park(msg, f"{type(exc).__name__}: {exc}")
                return None
            except TRANSIENT_ERRORS:
                raise  # stopping: nacked for redelivery
            except Exception as exc:
                delivered = msg.raw_message.metadata.num_delivered
                if delivered >= max_deliver:
                    await park(msg, f"failed {delivered} deliveries: {exc!r}")
                    return None
                log.exception("handler failed; the message will be redelivered")
                raise

    return EventMiddleware


class GroupCommit(Generic[T]):
    """Applies the events that arrive together in one transaction (group commit).

    FastStream hands every message of a pull to its own handler task at once. Each handler
    `submit`s its event and waits; the events submitted while the previous transaction ran are
    applied together, in stream order, in the next one, then published, and only then does each
    handler return (and FastStream ack its message). If a group's transaction fails for any reason
    but an outage, its events are applied again one per transaction, so that one bad event fails
    (and is parked or retried by the middleware) on its own and the others still apply.
    """

    def __init__(self, process: Process[T], publish: Publish, *, held: Callable[[], set[int]] | None = None) -> None:
        self._process = process
        self._publish = publish
        self._held = held
        self._queue: list[tuple[T, Delivery, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T, delivery: Delivery) -> None:
        """Apply `item` (with the group it arrives in); raises this item's own error, if any."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, delivery, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        group: list[tuple[T, Delivery, asyncio.Future[None]]] = []
        try:
            # Let every other handler of the same pull reach submit(): FastStream starts them all at
            # once, so the queue stops growing within a few loop turns. A group then holds the whole
            # pull, and events are applied in stream order (the next pull waits for this one).
            quiet, size = 0, -1
            for _ in range(200):
                await asyncio.sleep(0)
                quiet, size = (quiet + 1, size) if len(self._queue) == size else (0, len(self._queue))
                if quiet >= 8:
                    break
            while self._queue:
                group = self._in_order()
                if not group:
                    await asyncio.sleep(0.002)
                    continue
                await self._commit(group)
        except BaseException:
            # Cancelled (the service is stopping): nobody may wait forever; the messages are
            # nacked by their handlers and come back.
            for *_, done in [*group, *self._queue]:
                _settle(done, ConnectionError("the service is stopping"))
            self._queue = []
            raise

    def _in_order(self) -> list[tuple[T, Delivery, asyncio.Future[None]]]:
        """Take the queued events that may be applied now, in stream order: those before every
        message of this consumer that this process holds but whose handler has not submitted yet
        (`held`). A handler can be slower to reach `submit` than those after it (parsing, a retry
        in place): its event is not overtaken, so an event is never applied before one the log
        took earlier (a revocation request before the issuance it names, in a rebuild)."""
        queued = sorted(self._queue, key=lambda entry: entry[1].seq)
        if self._held is not None:
            submitted = {delivery.seq for _, delivery, _ in queued}
            behind = [seq for seq in self._held() if seq not in submitted]
            if behind:
                first = min(behind)
                queued = [entry for entry in queued if entry[1].seq < first]
        taken = {id(entry) for entry in queued}
        self._queue = [entry for entry in self._queue if id(entry) not in taken]
        return queued

    async def _commit(self, group: list[tuple[T, Delivery, asyncio.Future[None]]]) -> None:
        try:
            entries = await self._process([(item, delivery) for item, delivery, _ in group])
        except Exception as exc:  # noqa: BLE001 - handed to each waiting handler
            if len(group) == 1 or isinstance(exc, TRANSIENT_ERRORS):
                for *_, done in group:
                    _settle(done, exc)
                return
            log.warning("group commit failed; applying its events one by one", extra={"error": repr(exc)})
            for entry in group:
                await self._commit([entry])
            return
        await self._publish(entries)
        for *_, done in group:
            _settle(done, None)


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


class Dispatch:
    """Applies each event with the projection its type has in `projections` (`apply_events` hands a
    run of consecutive events of a `Together` type to it at once)."""

    def __init__(self, consumer: str, projections: Projections) -> None:
        self._consumer = consumer
        self._projections = projections

    async def __call__(
        self, conn: asyncpg.Connection, event: Event, delivery: Delivery
    ) -> Sequence[OutboxEntry] | None:
        project = self._projections.get(type(event))
        if project is None:
            raise EventRejected(f"{self._consumer} does not consume {event.event_type}")
        if isinstance(project, Together):
            return await project.apply(conn, [(event, delivery)])
        return await project(conn, event, delivery)

    def together(self, event: Event) -> Together | None:
        """The run projection of `event`'s type, if it has one."""
        project = self._projections.get(type(event))
        return project if isinstance(project, Together) else None


def dispatching(consumer: str, projections: Projections) -> Dispatch:
    """Apply each event with the projection its type has in `projections`."""
    return Dispatch(consumer, projections)


def applying(pool: Callable[[], asyncpg.Pool], consumer: str, apply: Apply) -> Process[Event]:
    """A group-commit step that applies events with `apply`, each at most once per consumer."""

    async def process(items: list[tuple[Event, Delivery]]) -> list[OutboxEntry]:
        async with pool().acquire() as conn, conn.transaction():
            return await apply_events(conn, consumer, items, apply)

    return process


async def apply_events(
    conn: asyncpg.Connection, consumer: str, items: Sequence[tuple[Event, Delivery]], apply: Apply
) -> list[OutboxEntry]:
    """In the caller's transaction: claim tracking rows for `items` in one statement, then apply
    the events this consumer had not applied yet; returns the outbox entries they wrote."""
    if not items:
        return []
    claimed = {
        r["event_id"]
        for r in await conn.fetch(
            "INSERT INTO tracking (consumer, event_id, stream_seq) SELECT $1, e, s "
            "FROM unnest($2::uuid[], $3::bigint[]) AS t(e, s) ON CONFLICT DO NOTHING RETURNING event_id",
            consumer,
            [event.event_id for event, _ in items],
            [delivery.seq for _, delivery in items],
        )
    }
    fresh: list[tuple[Event, Delivery]] = []
    for event, delivery in items:
        if event.event_id not in claimed:
            EVENTS_DUPLICATE.labels(consumer).inc()
            continue
        claimed.discard(event.event_id)  # a copy later in the same group is a duplicate
        fresh.append((event, delivery))
    entries: list[OutboxEntry] = []
    at = 0
    while at < len(fresh):
        event, delivery = fresh[at]
        at += 1
        logs.correlation_id.set(event.correlation_id)
        together = apply.together(event) if isinstance(apply, Dispatch) else None
        if together is not None and not isinstance(event, OperatorCommand):
            run = [(event, delivery)]
            while at < len(fresh) and type(fresh[at][0]) is type(event):
                run.append(fresh[at])
                at += 1
            with HANDLER_SECONDS.labels(consumer, event.event_type).time():
                entries.extend(await together.apply(conn, run) or ())
            EVENTS_CONSUMED.labels(consumer, event.event_type).inc(len(run))
            continue
        if isinstance(event, OperatorCommand):
            # Judged by the operators' registry as the log had it just before this command (the
            # registry's own events are applied here too); what fails is parked, never applied.
            try:
                delivery = replace(delivery, signers=await operators.authorise(conn, event, delivery.seq))
            except operators.NotAuthorised as exc:
                raise EventRejected(f"operator_signature: {exc}") from None
            if isinstance(event, operators.REGISTRY):
                EVENTS_CONSUMED.labels(consumer, event.event_type).inc()
                continue
        with HANDLER_SECONDS.labels(consumer, event.event_type).time():
            entries.extend(await apply(conn, event, delivery) or ())
        EVENTS_CONSUMED.labels(consumer, event.event_type).inc()
    return entries
