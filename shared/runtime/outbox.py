"""The transactional outbox: events decided in a transaction are published after it commits.

The event id is generated once, stored with the row, and sent as `Nats-Msg-Id` on every attempt,
so the server deduplicates a retried publish. A `duplicate` answer says the log already holds a
message under the id, but not whose: an earlier attempt of ours whose acknowledgement was lost (NATS
restarted, a timeout) or that raced another path, or somebody who pre-empted the id. So the message
the log holds is read back and compared: if it is this event, the row is published; if it is not,
that is logged as an alarm and kept on the row; if it cannot be read, the row stays unpublished and
the publish (and the comparison) is tried again later, never guessed either way.

Two paths publish a row. The handler that committed it publishes it at once (one round trip to
NATS, one to delete it). The relay picks up what that path left behind (a crash, NATS
down) once it is `stale_s` old, holding a row lock while it publishes so replicas never race; a row
the fast path has not reported on yet (no attempt counted) it leaves alone until that publish has
had time to time out, so the two rarely publish the same row at once, unless the database session
that wrote the row has ended: its process is gone (killed), its fast path will never report, and
the row is taken over once `stale_s` old, so a killed replica's decisions reach the log within
seconds of its death. (A session can also end while its process lives, an idle pooled connection
closed: both paths may then publish the row, and the `duplicate` answer is read back as above.)

A row is deleted once its event is on the log: the log (and audit's archive of it) is the record,
and the outbox holds only what is still to publish. What stays is a row not yet published, one
whose publish raised an alarm (kept with it, published), and one a rebuild suppressed (inserted as
published, never sent). Deleting costs PostgreSQL a fifth of what marking the row did (an update
writes a new version of the row, payload and indexes included), and the table no longer grows
with every event a service ever published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import nats.errors
from nats.js import JetStreamContext

from shared.contract.events import Event
from shared.runtime.loops import WakeableLoop
from shared.runtime.metrics import EVENTS_PUBLISHED, PUBLISH_ALARMS

log = logging.getLogger("certbus.outbox")
ALARM = "duplicate publish: the log holds another message under this event id (pre-empted)"


class DuplicateUnconfirmed(RuntimeError):
    """The log answered `duplicate`, and the message it holds under the event id could not be read."""


@dataclass(frozen=True)
class OutboxEntry:
    """One committed-to-be event waiting in the outbox."""

    id: int
    event_id: str
    subject: str
    payload: bytes
    attempts: int = 0
    suppressed: bool = False  # its cause's answer is already on the log (a rebuild): never sent


async def enqueue(conn: asyncpg.Connection, event: Event, subject_root: str) -> OutboxEntry:
    """Add `event` to the outbox in the caller's transaction."""
    subject = event.subject(subject_root)
    payload = event.model_dump_json().encode()
    row = await conn.fetchrow(
        "INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3) RETURNING id, suppressed",
        event.event_id,
        subject,
        payload,
    )
    return OutboxEntry(row["id"], str(event.event_id), subject, payload, suppressed=row["suppressed"])


async def enqueue_many(conn: asyncpg.Connection, events: Sequence[Event], subject_root: str) -> list[OutboxEntry]:
    """Add many events to the outbox in the caller's transaction, in one statement (in order)."""
    if not events:
        return []
    subjects = [e.subject(subject_root) for e in events]
    payloads = [e.model_dump_json().encode() for e in events]
    rows = await conn.fetch(
        "INSERT INTO outbox (event_id, subject, payload) SELECT e, s, p "
        "FROM unnest($1::uuid[], $2::text[], $3::bytea[]) WITH ORDINALITY AS t(e, s, p, n) ORDER BY n "
        "RETURNING id, event_id, suppressed",
        [e.event_id for e in events],
        subjects,
        payloads,
    )
    ids = {row["event_id"]: (row["id"], row["suppressed"]) for row in rows}
    return [
        OutboxEntry(ids[e.event_id][0], str(e.event_id), subject, payload, suppressed=ids[e.event_id][1])
        for e, subject, payload in zip(events, subjects, payloads, strict=True)
    ]


class OutboxRelay:
    """Publishes committed outbox rows; safe to run in several replicas at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        stream: str,
        producer: str,
        publish_timeout_s: float = 5.0,
        batch: int = 256,
        stale_s: float = 2.0,
    ) -> None:
        self._pool = pool
        self._js = js
        self._stream = stream
        self._producer = producer
        self._timeout = publish_timeout_s
        self._batch = batch
        self._stale_s = stale_s
        unattempted_s = stale_s + publish_timeout_s  # the fast path's publish has timed out by then
        self.loop = WakeableLoop(
            f"outbox-{producer}", lambda: self.flush(stale_s, unattempted_s=unattempted_s), idle_s=stale_s
        )

    def notify(self) -> None:
        """Tell the background loop there is something to publish."""
        self.loop.wake()

    async def _send(self, entry: OutboxEntry) -> tuple[int, str | None]:
        ack = await self._js.publish(
            entry.subject,
            entry.payload,
            stream=self._stream,
            headers={"Nats-Msg-Id": entry.event_id},
            timeout=self._timeout,
        )
        alarm = None
        if ack.duplicate:
            if await self._log_holds(entry, ack.seq):
                log.info(
                    "outbox publish answered duplicate: an earlier attempt is on the log",
                    extra={"event_id": entry.event_id, "subject": entry.subject, "stream_seq": ack.seq},
                )
            else:
                alarm = ALARM
                PUBLISH_ALARMS.labels(self._producer).inc()
                log.error(
                    "outbox event id pre-empted: the log holds another message under it",
                    extra={"event_id": entry.event_id, "subject": entry.subject, "stream_seq": ack.seq},
                )
        EVENTS_PUBLISHED.labels(self._producer, entry.subject.rsplit(".", 1)[-1]).inc()
        return ack.seq, alarm

    async def _log_holds(self, entry: OutboxEntry, seq: int) -> bool:
        """Whether the message at `seq` (named by a `duplicate` answer) is `entry` itself: the same
        subject, payload and `Nats-Msg-Id`. Raises DuplicateUnconfirmed if it cannot be read (the
        callers log it and leave the row to be published, and checked, again)."""
        if seq <= 0:  # a clustered log may answer before the first copy has a sequence
            raise DuplicateUnconfirmed(f"event {entry.event_id}: the log answered duplicate without a sequence")
        try:
            held = await self._js.get_msg(self._stream, seq)
        except (nats.errors.Error, TimeoutError) as exc:
            # Not found (deleted since), a timeout, no permission: neither accept nor alarm.
            raise DuplicateUnconfirmed(
                f"event {entry.event_id} on {entry.subject}: the log answered duplicate, and reading its "
                f"message {seq} of {self._stream} failed ({exc!r}); will retry (the service must be "
                "allowed STREAM.MSG.GET on the log)"
            ) from exc
        return (
            held.subject == entry.subject
            and (held.data or b"") == entry.payload
            and (held.headers or {}).get("Nats-Msg-Id") == entry.event_id
        )

    async def publish(self, entries: Sequence[OutboxEntry]) -> None:
        """Publish rows the caller just committed, then delete them (the fast path).

        The publishes are pipelined (each awaits its own acknowledgement); they are events of
        different aggregates, so their relative order does not matter. What fails stays unpublished
        for the relay, and the first failure is raised after the successes are recorded.
        """
        entries = [e for e in entries if not e.suppressed]
        if entries and (failure := await self._send_all(self._pool, entries)) is not None:
            raise failure

    async def _send_all(
        self, db: asyncpg.Pool | asyncpg.Connection, entries: Sequence[OutboxEntry]
    ) -> BaseException | None:
        """Publish `entries` pipelined (each awaits its own acknowledgement) and record each outcome
        through `db`; returns the first failure (what failed stays unpublished for the relay)."""
        results = await asyncio.gather(*(self._send(entry) for entry in entries), return_exceptions=True)
        done = [(e.id, r[0], r[1]) for e, r in zip(entries, results, strict=True) if not isinstance(r, BaseException)]
        failed = [e.id for e, r in zip(entries, results, strict=True) if isinstance(r, BaseException)]
        if clean := [d[0] for d in done if d[2] is None]:
            # (A row the relay has published meanwhile is gone already, or kept with its alarm.)
            await db.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[]) AND published_at IS NULL", clean)
        if alarmed := [d for d in done if d[2] is not None]:
            await db.execute(
                "UPDATE outbox o SET attempts = o.attempts + 1, published_at = now(), stream_seq = v.seq, "
                "alarm = v.alarm FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS v(id, seq, alarm) "
                "WHERE o.id = v.id AND o.published_at IS NULL",
                [d[0] for d in alarmed],
                [d[1] for d in alarmed],
                [d[2] for d in alarmed],
            )
        if failed:
            # Count the attempt: the relay then knows this path has given up on the row. (The
            # publish may still have landed: the relay's `duplicate` answer is then checked.)
            await db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ANY($1::bigint[])", failed)
        return next((r for r in results if isinstance(r, BaseException)), None)

    async def flush(self, stale_s: float = 0.0, *, unattempted_s: float = 0.0) -> int:
        """Publish every pending row at least `stale_s` old, and at least `unattempted_s` old if no
        attempt was counted and the session that wrote it still lives (the fast path may still be
        publishing it); returns how many were published."""
        total, after = 0, 0
        while True:
            n, after = await self._publish_batch(stale_s, unattempted_s, after)
            total += n
            if n < self._batch:
                return total

    async def drain(self) -> int:
        """Publish every pending row now, a batch at a time with each batch's publishes pipelined,
        whoever enqueued it; returns how many were published. For a transaction that enqueued more
        than its caller should hold in memory to publish (a CA compromise's revocations): it returns
        no entries, and this publishes them from the table. Each batch starts after the last row the
        one before took: while any older snapshot is open in the database, the rows deleted so far
        are still in the index, and a batch that started from the lowest id read them all again
        (a million revocations then took 13 minutes to drain instead of about one)."""
        total, after = 0, 0
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    "SELECT id, event_id, subject, payload, attempts FROM outbox WHERE published_at IS NULL "
                    "AND id > $2 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    self._batch,
                    after,
                )
                after = rows[-1]["id"] if rows else after
                entries = [
                    OutboxEntry(r["id"], str(r["event_id"]), r["subject"], r["payload"], r["attempts"]) for r in rows
                ]
                failure = await self._send_all(conn, entries) if entries else None
            if failure is not None:
                raise failure
            total += len(rows)
            if len(rows) < self._batch:
                return total

    async def _publish_batch(self, stale_s: float, unattempted_s: float, after: int) -> tuple[int, int]:
        """Publish the next batch of rows past id `after`; how many it took, and the last id it took."""
        failure: Exception | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, event_id, subject, payload, attempts FROM outbox WHERE published_at IS NULL "
                "AND id > $4 AND created_at <= now() - make_interval(secs => $2) "
                "AND (attempts > 0 OR created_at <= now() - make_interval(secs => $3) "
                "OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = outbox.writer_pid)) "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
                stale_s,
                unattempted_s,
                after,
            )
            for row in rows:
                entry = OutboxEntry(row["id"], str(row["event_id"]), row["subject"], row["payload"], row["attempts"])
                try:
                    seq, alarm = await self._send(entry)
                except Exception as exc:  # noqa: BLE001 - counted, committed, then re-raised
                    # The publish may have landed (a later `duplicate` answer is then checked).
                    await conn.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = $1", row["id"])
                    failure = exc
                    break
                if alarm is None:
                    await conn.execute("DELETE FROM outbox WHERE id = $1", row["id"])
                else:
                    await conn.execute(
                        "UPDATE outbox SET attempts = attempts + 1, published_at = now(), stream_seq = $2, "
                        "alarm = $3 WHERE id = $1",
                        row["id"],
                        seq,
                        alarm,
                    )
        if failure is not None:
            raise failure
        return len(rows), rows[-1]["id"] if rows else after
