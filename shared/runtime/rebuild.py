"""A service that lost its database rebuilds it from the log on start, and decides nothing twice.

The durable consumers live on the log; the tables are a projection of it. When a start creates the
schema new while a durable of the service had already acknowledged
events, the database was lost. A service that can rebuild (every one but audit, which has its own
`certbus audit replay`) then, before its consumers and timers run, under the start-up lock that
keeps its other replicas waiting:

1. reads back what it published itself, from sequence 1 up to the log's last sequence now (a named
   reader, `<service>-rebuild`, over its own subjects: the only ones its NATS user may publish on);
2. records each of those events by cause (causation id, event type, aggregate) in `recorded`, and
   hands them to the service's `adopt` step, which restores what only its own decisions hold (for
   signing: its CAs, each certificate it issued or refused, its CRL numbers), so that nothing is
   created or signed again;
3. deletes its durables on the log, so that they are made again from sequence 1 and every event is
   applied again through the same handlers as the first time.

While the log is applied again, a decision whose answer is already on the log is not published a
second time: the outbox's `recorded` trigger (migration 005) marks the row published, under the
sequence the log holds it at, as it is inserted, and the relay never sends it. A re-decision that
answers the same cause differently (another event type on the same aggregate) is not published
either: the log keeps the first answer, and the row keeps an alarm naming the divergence. The
`rebuilds` row says how far it is; once every durable has acknowledged the log's last sequence of
the start, it records the time taken, the events applied again (tracking rows up to that
sequence) and the counts, empties `recorded`, and the service is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import asyncpg
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import TypeAdapter, ValidationError

from shared.contract.binding import Unbound, bind
from shared.contract.events import EVENT_CLASSES, Event

log = logging.getLogger("certbus.rebuild")
FRESH_SCHEMA = "runtime/000_runtime.sql"  # applied by a start that created the schema
READER = "rebuild"  # the purpose of the named reader: durable `<service>-rebuild`
BATCH = 1000

Published = list[tuple[int, Event]]  # (stream sequence, event), in log order
# A service's own step: restore, in the caller's transaction, what only its published events hold.
Adopt = Callable[[asyncpg.Connection, Published], Awaitable[None]]


@dataclass(frozen=True)
class Rebuilding:
    """A rebuild under way: the log's last sequence when it began, and how many events it read back."""

    through: int
    recorded: int


async def acknowledged(js: JetStreamContext, stream: str, durables: Iterable[str]) -> dict[str, int]:
    """Each existing durable's acknowledgement floor (a stream sequence), for those past 0: on a
    schema just created, any at all means the database was lost."""
    floors = {}
    for durable in durables:
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            continue
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        if floor:
            floors[durable] = int(floor)
    return floors


async def read_published(
    js: JetStreamContext, stream: str, durable: str, filters: Sequence[str], through: int, root: str
) -> Published:
    """The events on `filters` (the service's own subjects) from sequence 1 to `through`, read with
    the named reader `durable` (made for this read and deleted after it)."""
    await _delete(js, stream, durable)
    if through <= 0 or not filters:
        return []
    sub = await js.pull_subscribe(
        "",
        durable=durable,
        stream=stream,
        config=ConsumerConfig(
            filter_subjects=list(filters),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            max_ack_pending=-1,
            inactive_threshold=300.0,
        ),
    )
    published: Published = []
    try:
        if (await sub.consumer_info()).num_pending == 0:
            return []
        while True:
            msgs = await sub.fetch(BATCH, timeout=10.0)
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if seq > through:
                    return published
                event = _event(msg.subject, root, msg.data, seq)
                if event is not None:
                    published.append((seq, event))
                if msg.metadata.num_pending == 0:
                    return published
    finally:
        try:
            await sub.unsubscribe()
        finally:
            await _delete(js, stream, durable)


def _event(subject: str, root: str, raw: bytes, seq: int) -> Event | None:
    """One of the service's own events, or None (logged) if it is not one: only the service may
    publish on its subjects, so that would be a bug or a tampered log, and is not adopted."""
    try:
        data = bind(subject, root, raw)
        cls = EVENT_CLASSES[data["event_type"]]
        event: Event = TypeAdapter(cls).validate_python(data)
    except (Unbound, ValidationError) as exc:
        log.error(
            "an event on the service's own subject is not valid; not adopted", extra={"seq": seq, "error": str(exc)}
        )
        return None
    return event


async def _delete(js: JetStreamContext, stream: str, durable: str) -> None:
    try:
        await js.delete_consumer(stream, durable)
    except NotFoundError:
        pass


async def begin(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    *,
    service: str,
    stream: str,
    root: str,
    filters: Sequence[str],
    durables: Iterable[str],
    adopt: Adopt | None,
) -> Rebuilding:
    """Steps 1 to 3 above (the caller holds the start-up lock and has just created the schema);
    `durables` are those that had acknowledged events."""
    durables = sorted(durables)
    started = time.perf_counter()
    through = (await js.stream_info(stream)).state.last_seq
    published = await read_published(js, stream, f"{service}-{READER}", filters, through, root)
    read_s = time.perf_counter() - started
    caused = [(e.causation_id, e.event_type, e.aggregate_id, e.event_id, seq) for seq, e in published if e.causation_id]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO recorded (causation_id, event_type, aggregate_id, event_id, stream_seq) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::bigint[]) "
            "ON CONFLICT DO NOTHING",
            *(list(column) for column in zip(*caused, strict=True)) if caused else ([], [], [], [], []),
        )
        if adopt is not None:
            await adopt(conn, published)
        await conn.execute(
            "INSERT INTO rebuilds (through_seq, recorded, read_s, durables) VALUES ($1, $2, $3, $4)",
            through,
            len(published),
            read_s,
            durables,
        )
    for durable in durables:
        await _delete(js, stream, durable)
    log.warning(
        "database lost: rebuilding it from the log",
        extra={"service": service, "through": through, "recorded": len(published), "read_s": round(read_s, 2)},
    )
    return Rebuilding(through, len(published))


async def unfinished(pool: asyncpg.Pool) -> asyncpg.Record | None:
    """The rebuild under way, if any (id, through_seq, durables, started_at)."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT id, through_seq, durables, started_at FROM rebuilds WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1"
    )
    return row


async def applied_through(js: JetStreamContext, stream: str, durable: str, through: int) -> bool:
    """Whether the durable made again has applied the log up to `through`: its acknowledgement floor
    has reached it, or it has delivered and acknowledged everything its filters match (its last
    matching event may come before `through`). A durable not made yet, or made but that has
    delivered nothing yet (a new consumer of a clustered stream may report nothing pending for a
    moment), has not."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return False
    if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= through:
        return True
    delivered = info.delivered.consumer_seq if info.delivered is not None else 0
    return bool(delivered) and not info.num_pending and not info.num_ack_pending


async def finish(pool: asyncpg.Pool, rebuild_id: int) -> asyncpg.Record:
    """Record the end of a rebuild: its time, how many events it applied again, and how many
    decisions the log already held. What the service had published (`recorded`) is then forgotten:
    every cause up to the rebuild's last sequence has been decided again by now, and while the table
    holds a row the outbox's trigger reads every payload inserted, for as long as the service runs."""
    async with pool.acquire() as conn, conn.transaction():
        row: asyncpg.Record = await conn.fetchrow(
            "UPDATE rebuilds SET finished_at = clock_timestamp(), "
            "applied = (SELECT count(*) FROM tracking WHERE stream_seq <= rebuilds.through_seq), "
            "suppressed = (SELECT count(*) FROM outbox WHERE suppressed AND alarm IS NULL), "
            "divergent = (SELECT count(*) FROM outbox WHERE suppressed AND alarm IS NOT NULL) "
            "WHERE id = $1 AND finished_at IS NULL "
            "RETURNING through_seq, recorded, applied, suppressed, divergent, read_s, "
            "extract(epoch FROM clock_timestamp() - started_at)::float8 AS seconds",
            rebuild_id,
        )
        if row is not None:
            await conn.execute("DELETE FROM recorded")
    return row


async def watch(pool: asyncpg.Pool, js: JetStreamContext, stream: str, *, every_s: float = 0.5) -> None:
    """Until the rebuild under way (if any) is over: wait for each of its durables to have applied
    the log up to its last sequence, then record it (any replica may; the first does)."""
    while (row := await unfinished(pool)) is not None:
        try:
            done = [await applied_through(js, stream, d, row["through_seq"]) for d in row["durables"]]
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not read the rebuild's progress", extra={"error": repr(exc)})
            done = [False]
        if all(done):
            ended = await finish(pool, row["id"])
            if ended is not None:
                seconds = max(ended["read_s"] + ended["seconds"], 1e-6)
                log.warning(
                    "database rebuilt from the log",
                    extra={
                        "through": ended["through_seq"],
                        "applied": ended["applied"],
                        "seconds": round(seconds, 2),
                        "events_per_s": round((ended["applied"] + ended["recorded"]) / seconds, 1),
                        "recorded": ended["recorded"],
                        "not_published_again": ended["suppressed"],
                        "divergent": ended["divergent"],
                    },
                )
            return
        await asyncio.sleep(every_s)


class Rebuilder:
    """The one replica that applies the log again while a rebuild is under way.

    Replicas of a service share its durables, and each applies the pulls it fetches: during a
    rebuild two replicas would apply the history in parallel, a later pull (requests) before an
    earlier one (the provisioner they name). So while a rebuild is under way one replica alone
    consumes: the one holding the session lock `certbus-rebuild:<service>` (on a connection of its
    own, released if it dies). The others wait before starting their consumers; one of them takes
    the lock over if the rebuilder dies, and goes on from where the durables are."""

    def __init__(self, dsn: str, service: str) -> None:
        self._dsn = dsn
        self._key = f"certbus-rebuild:{service}"
        self._conn: asyncpg.Connection | None = None

    async def wait_turn(self, pool: asyncpg.Pool, every_s: float = 1.0) -> bool:
        """Until no rebuild is under way (False), or this replica holds the lock while one is (True)."""
        told = False
        while await unfinished(pool) is not None:
            if self._conn is None:
                self._conn = await asyncpg.connect(self._dsn)
            if await self._conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self._key):
                if await unfinished(pool) is not None:
                    return True
                await self.release()
                return False
            if not told:
                log.info("waiting for another replica to rebuild the database before consuming")
                told = True
            await asyncio.sleep(every_s)
        await self.release()
        return False

    async def release(self) -> None:
        """Let the lock go (closing its connection releases it)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
