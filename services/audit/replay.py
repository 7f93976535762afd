"""Replay: rebuild the archive from stream sequence 1 into a fresh schema, compare, adopt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header

from services.audit import domain, store
from shared.contract.queries import ReplayAnswer
from shared.runtime import db

MIGRATIONS = Path(__file__).parent / "migrations"
BATCH = 1000
# How long a read may go without progress before it gives up: a consumer-leader change in a cluster
# answers fetches with 503 for ~4-5 s (STACK-NOTES), which a read rides out rather than fails on.
STALL_S = 30.0
RETRY_S = 0.5
# How long a pull request waits for messages before the server ends it (the reader asks again).
_PULL_EXPIRES_S = 5.0
# While a pull request waits, the server sends a heartbeat this often; none for three of them while
# a request is outstanding means the consumer is gone (deleted, or expired while the reader's user
# was busy: the server answers nothing to a request for a consumer it no longer has).
_HEARTBEAT_S = 1.0
_COMPARED = "stream_seq, subject, subject_exact, raw, hash"  # what a replay must reproduce exactly
# The same, where a confirming replay's rows hold each message's SHA-256 in place of its bytes.
_COMPARED_DIGESTS = "stream_seq, subject, subject_exact, sha256(raw), hash"


class ReplayBusy(Exception):
    """Another replay of the same archive is running (in the audit service or a standalone one)."""


class _Gap(Exception):
    """The log skips a position (messages deleted from the stream): a replay that confirms cannot
    tell, so it replays indexing instead."""


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
    js: JetStreamContext,
    stream: str,
    subject: str,
    through: int,
    batch: int = BATCH,
    stall_s: float = STALL_S,
    *,
    sparse: bool = False,
) -> tuple[Batches, asyncio.Task[None]]:
    """Feed batches of (seq, subject, bytes) from seq 1 up to `through` into a queue (None ends it),
    in stream order, each message once. A refusal the server gives for now (503, a consumer-leader
    change, the reader's consumer gone) is ridden out until the read has made no progress for
    `stall_s`; see `_Reader`. With `sparse`, `subject` is one that few messages are on (the
    checkpoints): the read also ends once the server says none is left on it, which may be before
    `through` (or at once: `read_all` must then be told not to expect `through`)."""
    queue: Batches = asyncio.Queue(maxsize=8)
    reader = _Reader(js, stream, subject, through, batch, stall_s, queue, sparse=sparse)
    return queue, asyncio.create_task(reader.run(), name="replay-reader")


class _Reader:
    """Reads a stream with a pull consumer of its own, asking for the next batches itself.

    nats-py's `fetch` waits for each message with a task of its own (about 60 us a message here,
    ~15,000 messages/s at best); this reader instead keeps up to two pull requests outstanding on
    one inbox whose callback only appends, which reads the same log at ~90,000 messages/s. The
    consumer acknowledges nothing (`AckPolicy.NONE`): nothing is redelivered, so each message
    arrives once, in order. If the consumer is lost (deleted, or its leader gone with it), a new
    one starts after the last sequence read."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        through: int,
        batch: int,
        stall_s: float,
        queue: Batches,
        *,
        sparse: bool = False,
    ) -> None:
        self._js, self._stream, self._subject, self._through = js, stream, subject, through
        self._sparse = sparse  # the read also ends when nothing is left on the subject
        self._batch, self._stall_s, self._queue = batch, stall_s, queue
        # nats-py has no public accessor for these: the connection, and the API prefix the
        # context was made with (the log's JetStream API is imported under it).
        self._nc = js._nc
        self._api = js._prefix
        self._inbox = self._nc.new_inbox()
        self._consumer = ""
        self._seen = 0  # the last stream sequence read
        self._buffer: list[Message] = []
        self._asked = 0  # messages asked for by requests still outstanding (an upper bound)
        self._arrived = asyncio.Event()
        self._lost = False  # the consumer refused a request: make a new one
        self._done = False  # the message at `through` was read
        self._progressed = self._heard = time.monotonic()

    async def run(self) -> None:
        sub = await self._nc.subscribe(self._inbox, cb=self._on_message, pending_msgs_limit=0, pending_bytes_limit=0)
        try:
            if self._through > 0:
                await self._read()
        finally:
            await sub.unsubscribe()
            await self._queue.put(None)

    async def _read(self) -> None:
        await self._start_consumer()
        while True:
            # What arrived while a put waited (the end, too) is handed on before the end is acted on.
            while self._buffer:
                chunk, self._buffer = self._buffer, []
                await self._queue.put(chunk)  # waits while the reader's user is behind
                self._progressed = time.monotonic()
            if self._done:
                return
            if time.monotonic() - self._progressed > self._stall_s:
                raise TimeoutError(f"no progress reading the stream for {self._stall_s:.0f} s after {self._seen}")
            if self._asked and time.monotonic() - self._heard > 3 * _HEARTBEAT_S:
                self._lost = True
            if self._lost:
                await asyncio.sleep(RETRY_S)
                await self._start_consumer()
            while self._asked < 2 * self._batch:
                await self._ask()
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=0.05)

    async def _start_consumer(self) -> None:
        """A consumer delivering from the message after the last one read."""
        start = self._seen + 1
        while True:
            try:
                name = self._nc._nuid.next().decode()
                info = await self._js.add_consumer(
                    self._stream,
                    config=ConsumerConfig(
                        name=name,
                        filter_subject=self._subject,
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=start,
                        ack_policy=AckPolicy.NONE,
                        inactive_threshold=60.0,
                    ),
                )
                break
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError):
                if time.monotonic() - self._progressed > self._stall_s:
                    raise
                await asyncio.sleep(RETRY_S)
        self._consumer, self._asked, self._lost = name, 0, False
        if self._sparse and not info.num_pending:
            self._done = True  # nothing (left) on the subject

    async def _ask(self) -> None:
        request = json.dumps(
            {"batch": self._batch, "expires": int(_PULL_EXPIRES_S * 1e9), "idle_heartbeat": int(_HEARTBEAT_S * 1e9)}
        ).encode()
        if not self._asked:
            self._heard = time.monotonic()  # the silence that counts starts with the first request out
        await self._nc.publish(
            f"{self._api}.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}", request, reply=self._inbox
        )
        self._asked += self._batch

    async def _on_message(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        status = msg.headers.get(Header.STATUS) if msg.headers and not msg.data else None
        if status is not None:
            # 408: a request expired (or 409: ended) before it was filled; the rest of it is void.
            # A 409 other than that, a 404 or a 503 means the consumer is gone or moving.
            unfilled = int(msg.headers.get("Nats-Pending-Messages", "0") or 0) if msg.headers else 0
            if status == "408" or (status == "409" and unfilled):
                self._asked = max(0, self._asked - unfilled)
            elif status != "100":
                self._lost = True
            self._arrived.set()
            return
        consumer, seq, pending = _position(msg.reply)
        if consumer != self._consumer:
            return  # from a consumer replaced since
        self._asked = max(0, self._asked - 1)
        if seq <= self._seen or self._done:
            return
        self._seen = seq
        if seq <= self._through:
            self._buffer.append((seq, msg.subject, msg.data))
        if seq >= self._through or (self._sparse and pending == 0):
            self._done = True
        if self._done or len(self._buffer) >= self._batch:
            self._arrived.set()


def _position(reply: str) -> tuple[str, int, int]:
    """The consumer, the stream sequence and how many messages the consumer still has after this
    one, from a JetStream message's reply subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or the v2 form with a
    domain and an account hash after `$JS.ACK` and a random token at the end."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return tokens[3], int(tokens[5]), int(tokens[8])
    return tokens[5], int(tokens[7]), int(tokens[10])


async def read_all(
    queue: Batches, reader: asyncio.Task[None], through: int, *, whole: bool = True
) -> AsyncIterator[list[Message]]:
    """The batches `read_stream` feeds, then the reader's own failure if it stopped before `through`
    (a partial read must never pass for the whole log). A `sparse` read (`whole=False`) may end
    before `through`: only the reader's own failure counts."""
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
    if whole and last < through:
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
            # An archive whose chain already reaches `through` is most likely confirmed: its replay
            # compares only what the chain covers (each message's digest, not its bytes) and indexes
            # nothing. Should it differ (or the log have a gap), the replay runs again indexing every
            # event, so that the rows it adopts are complete (`seconds` counts both). An archive
            # behind the log (lost, or being rebuilt) is replayed indexing at once.
            head = await pool.fetchval(f"SELECT seq FROM {live_schema}.chain_head")
            answer = None
            for index in (False, True) if head >= through > 0 else (True,):
                answer = await _replay(
                    pool,
                    js,
                    stream=stream,
                    root=root,
                    live_schema=live_schema,
                    scratch=scratch,
                    started=started,
                    through=through,
                    progress=progress,
                    index=index,
                )
                if answer is not None:
                    break
            assert answer is not None  # an indexed replay always answers
            return answer
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
    index: bool,
) -> ReplayAnswer | None:
    """Rebuild, compare and (if they differ) adopt; None if they differ and the rows are not indexed."""
    await db.drop_schema(pool, scratch)
    await db.migrate(pool, scratch, [MIGRATIONS])
    events = 0
    if through > 0:
        queue, reader = await read_stream(js, stream, f"{root}.>", through)
        async with pool.acquire() as conn:
            await _unindex(conn, scratch)
            await conn.execute(f"SET search_path TO {scratch}, public")
            try:
                chunks = read_all(queue, reader, through)
                events = await _rebuild(conn, scratch, chunks, root, progress, index=index)
            except _Gap:
                return None
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
        live = _COMPARED if index else _COMPARED_DIGESTS
        differs = await conn.fetchval(
            f"SELECT count(*) FROM ((SELECT {_COMPARED} FROM {scratch}.archive EXCEPT "
            f"SELECT {live} FROM {live_schema}.archive WHERE stream_seq <= $1) UNION ALL "
            f"(SELECT {live} FROM {live_schema}.archive WHERE stream_seq <= $1 EXCEPT "
            f"SELECT {_COMPARED} FROM {scratch}.archive)) d",
            through,
        )
        equal = differs == 0
        if not equal:
            if not index:
                return None  # nothing adopted; the transaction ends and releases the lock
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


async def _rebuild(
    conn: asyncpg.Connection,
    scratch: str,
    chunks: AsyncIterator[list[Message]],
    root: str,
    progress: Progress,
    *,
    index: bool,
) -> int:
    """Archive the log's batches into the fresh `scratch` archive; how many events it holds after.

    While the log continues the chain without a gap (the usual case: each message once, in order,
    from sequence 1), each batch's rows are computed while the previous batch is being copied in, and
    the chain's head is kept here until the end; without `index`, only what the comparison covers
    (`store.digest_rows`). A gap (messages no longer on the stream) hands the rest to
    `store.archive`, as the live archive would take them; without `index` it raises `_Gap`."""
    seq, head = 0, domain.GENESIS
    events, copying = 0, None
    try:
        async for chunk in chunks:
            if seq < 0 or chunk[0][0] != seq + 1 or chunk[-1][0] != seq + len(chunk):
                if not index:
                    raise _Gap
                if seq >= 0:  # the first gap: the chain's head goes to the table, and the rest as live
                    if copying is not None:
                        await copying
                        copying = None
                    await conn.execute("UPDATE chain_head SET seq = $1, hash = $2, events = $1 WHERE id = 1", seq, head)
                    seq = -1
                async with conn.transaction():
                    events += (await store.archive(conn, chunk, root)).count
            else:
                rows = store.rows_of(chunk, root, head, validate=False) if index else store.digest_rows(chunk, head)
                assert rows.head is not None
                seq, head = chunk[-1][0], rows.head
                if copying is not None:
                    await copying
                copying = asyncio.ensure_future(store.copy_rows(conn, scratch, rows))
                events += len(chunk)
            progress.done = chunk[-1][0]
        if copying is not None:
            await copying
            copying = None
        if seq > 0:  # (from sequence 1 without a gap: the chain covers `seq` events)
            await conn.execute("UPDATE chain_head SET seq = $1, hash = $2, events = $1 WHERE id = 1", seq, head)
    finally:
        if copying is not None:  # a read that failed: the copy under way ends before the connection is let go
            await asyncio.wait({copying})
            if not copying.cancelled():
                copying.exception()  # retrieved here: the read's failure is the one raised
    return events


async def _unindex(conn: asyncpg.Connection, scratch: str) -> None:
    """Drop what only slows a rebuilt archive's writes: the indexes that serve queries (the archive's
    are read only in comparison and adoption), the foreign keys (every row is the log's own) and
    the write-ahead log (the tables are rebuilt by every replay, and emptied by a crash)."""
    for table in ("serial_refs", "archive", "chain_head"):  # serial_refs refers to archive: it goes first
        await conn.execute(f"ALTER TABLE {scratch}.{table} SET UNLOGGED")
    indexes = await conn.fetch(
        "SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = $1 AND t.relname = 'archive' AND NOT x.indisprimary",
        scratch,
    )
    for index in indexes:
        await conn.execute(f'DROP INDEX {scratch}."{index["relname"]}"')
    foreign = await conn.fetch(
        "SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f'", f"{scratch}.serial_refs"
    )
    for constraint in foreign:
        await conn.execute(f'ALTER TABLE {scratch}.serial_refs DROP CONSTRAINT "{constraint["conname"]}"')


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
    await conn.execute(
        f"UPDATE {live}.chain_head SET (seq, hash, events) = (SELECT seq, hash, events FROM {scratch}.chain_head)"
    )
    await conn.execute(f"SET LOCAL search_path TO {live}, public")
    await store.advance_chain(conn)
