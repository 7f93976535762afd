"""Replay: rebuild the archive from stream sequence 1 into a fresh schema, compare, adopt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.audit import store
from shared.contract.queries import ReplayAnswer
from shared.runtime import db

MIGRATIONS = Path(__file__).parent / "migrations"
BATCH = 1000
# How long a read may go without progress before it gives up: a consumer-leader change in a cluster
# answers fetches with 503 for ~4-5 s (STACK-NOTES), which a read rides out rather than fails on.
STALL_S = 30.0
RETRY_S = 0.5
_COMPARED = "stream_seq, subject, subject_exact, raw, hash"  # what a replay must reproduce exactly


class ReplayBusy(Exception):
    """Another replay of the same archive is running (in the audit service or a standalone one)."""


class StreamUnreadable(Exception):
    """The stream could not be read up to the position a replay or a verification began at."""


Message = tuple[int, str, bytes]  # stream seq, subject, payload
Batches = asyncio.Queue[list[Message] | None]


@dataclass
class Progress:
    """How far the running replay is (read by the `replay_progress` query)."""

    running: bool = False
    done: int = 0
    total: int = 0
    started: float = 0.0

    def rate(self) -> float:
        """Events per second so far."""
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if self.running and elapsed > 0 else 0.0


async def read_stream(
    js: JetStreamContext, stream: str, subject: str, through: int, batch: int = BATCH, stall_s: float = STALL_S
) -> tuple[Batches, asyncio.Task[None]]:
    """Feed batches of (seq, subject, bytes) from seq 1 up to `through` into a queue (None ends it).
    A fetch the server cannot answer for now (503, or nothing within its timeout) is tried again
    until the read has made no progress for `stall_s`."""
    queue: Batches = asyncio.Queue(maxsize=8)

    async def subscribe() -> JetStreamContext.PullSubscription:
        started = time.monotonic()
        while True:
            try:
                return await js.pull_subscribe(
                    subject,
                    durable=None,
                    stream=stream,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0, max_ack_pending=-1
                    ),
                )
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                if time.monotonic() - started > stall_s:
                    raise
                await asyncio.sleep(RETRY_S)

    async def pump() -> None:
        sub = await subscribe()
        try:
            seen = 0
            progressed = time.monotonic()
            while seen < through:
                try:
                    msgs = await sub.fetch(batch, timeout=5.0)
                except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                    if time.monotonic() - progressed > stall_s:
                        raise
                    await asyncio.sleep(RETRY_S)
                    continue
                progressed = time.monotonic()
                chunk = []
                for m in msgs:
                    seq = m.metadata.sequence.stream
                    if seq <= through:
                        chunk.append((seq, m.subject, m.data))
                    seen = max(seen, seq)
                if chunk:
                    await queue.put(chunk)
        finally:
            await sub.unsubscribe()
            await queue.put(None)

    return queue, asyncio.create_task(pump(), name="replay-reader")


async def read_all(queue: Batches, reader: asyncio.Task[None], through: int) -> AsyncIterator[list[Message]]:
    """The batches `read_stream` feeds, then the reader's own failure if it stopped before `through`
    (a partial read must never pass for the whole log)."""
    last = 0
    try:
        while (chunk := await queue.get()) is not None:
            last = max(last, *(seq for seq, _, _ in chunk))
            yield chunk
        await reader
    except (TimeoutError, nats.errors.Error) as exc:
        raise StreamUnreadable(f"the stream could not be read past {last} of {through}: {exc!r}") from exc
    finally:
        reader.cancel()
    if last < through:
        raise StreamUnreadable(f"the stream could not be read past {last} of {through}")


async def replay(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    *,
    stream: str,
    root: str,
    live_schema: str,
    progress: Progress | None = None,
) -> ReplayAnswer:
    """Rebuild the archive from the stream (every message under `root`), compare with the live one,
    and adopt the rebuilt rows."""
    progress = progress or Progress()
    scratch = f"{live_schema}_replay"
    # One replay per archive at a time, wherever it runs: a session-level advisory lock, held on a
    # connection of its own for the whole replay (it is released if this process dies).
    async with pool.acquire() as guard:
        if not await guard.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"replay:{live_schema}"):
            raise ReplayBusy(f"a replay of {live_schema} is already running")
        try:
            started = time.perf_counter()
            info = await js.stream_info(stream)
            through = info.state.last_seq
            progress.running, progress.done, progress.total, progress.started = True, 0, through, started
            return await _replay(
                pool,
                js,
                stream=stream,
                root=root,
                live_schema=live_schema,
                scratch=scratch,
                started=started,
                through=through,
                progress=progress,
            )
        finally:
            progress.running = False
            await guard.execute("SELECT pg_advisory_unlock(hashtext($1))", f"replay:{live_schema}")


async def _replay(
    pool: asyncpg.Pool,
    js: JetStreamContext,
    *,
    stream: str,
    root: str,
    live_schema: str,
    scratch: str,
    started: float,
    through: int,
    progress: Progress,
) -> ReplayAnswer:
    await db.drop_schema(pool, scratch)
    await db.migrate(pool, scratch, [MIGRATIONS])
    events = 0
    if through > 0:
        queue, reader = await read_stream(js, stream, f"{root}.>", through)
        async with pool.acquire() as conn:
            await conn.execute(f"SET search_path TO {scratch}, public")
            try:
                async for chunk in read_all(queue, reader, through):
                    async with conn.transaction():
                        events += (await store.archive(conn, chunk, root)).count
                    progress.done = chunk[-1][0]
            finally:
                reader.cancel()  # also when archiving a batch failed: the generator closes only later
                await conn.execute(f"SET search_path TO {live_schema}, public")
    seconds = time.perf_counter() - started
    await _let_live_catch_up(pool, live_schema, through)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"LOCK TABLE {live_schema}.archive IN EXCLUSIVE MODE")
        old = await conn.fetchrow(
            f"SELECT count(*) AS n, (SELECT hash FROM {live_schema}.archive WHERE stream_seq = $1) AS h "
            f"FROM {live_schema}.archive WHERE stream_seq <= $1",
            through,
        )
        new = await conn.fetchrow(f"SELECT seq, hash FROM {scratch}.chain_head")
        assert old is not None and new is not None
        differs = await conn.fetchval(
            f"SELECT count(*) FROM ((SELECT {_COMPARED} FROM {scratch}.archive EXCEPT "
            f"SELECT {_COMPARED} FROM {live_schema}.archive WHERE stream_seq <= $1) UNION ALL "
            f"(SELECT {_COMPARED} FROM {live_schema}.archive WHERE stream_seq <= $1 EXCEPT "
            f"SELECT {_COMPARED} FROM {scratch}.archive)) d",
            through,
        )
        equal = differs == 0
        if not equal:
            await _adopt(conn, live_schema, scratch, through)
    await db.drop_schema(pool, scratch)
    previous = bytes(old["h"]).hex() if old["h"] is not None else None
    return ReplayAnswer(
        events=events,
        seconds=round(seconds, 3),
        rate_per_s=round(events / seconds, 1) if seconds else 0.0,
        last_seq=new["seq"],
        head_hash=bytes(new["hash"]).hex(),
        previous_head_hash=previous,
        previous_events=old["n"],
        equal=equal,
    )


async def _let_live_catch_up(pool: asyncpg.Pool, live: str, through: int, stall_s: float = 1.0) -> None:
    """Give the live consumer a moment to archive up to `through`, so that lag is not reported as a
    difference; stop waiting as soon as it stops advancing (a dropped archive never catches up)."""
    last, still_since = -1, time.monotonic()
    while True:
        head = await pool.fetchval(f"SELECT seq FROM {live}.chain_head")
        if head >= through:
            return
        if head != last:
            last, still_since = head, time.monotonic()
        elif time.monotonic() - still_since > stall_s:
            return
        await asyncio.sleep(0.05)


async def _adopt(conn: asyncpg.Connection, live: str, scratch: str, through: int) -> None:
    """Replace the live archive up to `through` with the rebuilt one, then re-chain the rest."""
    await conn.execute(f"DELETE FROM {live}.serial_refs WHERE stream_seq <= $1", through)
    await conn.execute(f"DELETE FROM {live}.archive WHERE stream_seq <= $1", through)
    await conn.execute(f"INSERT INTO {live}.archive SELECT * FROM {scratch}.archive")
    await conn.execute(f"INSERT INTO {live}.serial_refs SELECT * FROM {scratch}.serial_refs")
    await conn.execute(f"UPDATE {live}.archive SET hash = NULL WHERE stream_seq > $1", through)
    await conn.execute(f"UPDATE {live}.chain_head SET (seq, hash) = (SELECT seq, hash FROM {scratch}.chain_head)")
    await conn.execute(f"SET LOCAL search_path TO {live}, public")
    await store.advance_chain(conn)
