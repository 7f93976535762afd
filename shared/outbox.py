"""The transactional outbox: events decided in a transaction are published after it commits.

The event id is generated once, stored with the row, and sent as `Nats-Msg-Id` on every attempt,
so the server deduplicates a retried publish. A `duplicate` answer on the first attempt means
somebody pre-empted the id: that is logged as an alarm and kept on the row.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.js import JetStreamContext

from shared.events import Event
from shared.metrics import EVENTS_PUBLISHED, PUBLISH_ALARMS

log = logging.getLogger("certbus.outbox")


async def enqueue(conn: asyncpg.Connection, event: Event, subject_root: str) -> None:
    """Add `event` to the outbox in the caller's transaction."""
    await conn.execute(
        "INSERT INTO outbox (event_id, subject, payload) VALUES ($1, $2, $3)",
        event.event_id,
        event.subject(subject_root),
        event.model_dump_json().encode(),
    )


class OutboxRelay:
    """Publishes committed outbox rows in order; safe to run in several replicas at once."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        stream: str,
        producer: str,
        publish_timeout_s: float = 5.0,
        batch: int = 256,
    ) -> None:
        self._pool = pool
        self._js = js
        self._stream = stream
        self._producer = producer
        self._timeout = publish_timeout_s
        self._batch = batch
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """Tell the background loop there is something to publish."""
        self._wakeup.set()

    async def flush(self) -> int:
        """Publish every pending row now; returns how many were published."""
        total = 0
        while True:
            n = await self._publish_batch()
            total += n
            if n < self._batch:
                return total

    async def _publish_batch(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, event_id, subject, payload, attempts FROM outbox "
                "WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self._batch,
            )
            failure: Exception | None = None
            for row in rows:
                try:
                    ack = await self._js.publish(
                        row["subject"],
                        row["payload"],
                        stream=self._stream,
                        headers={"Nats-Msg-Id": str(row["event_id"])},
                        timeout=self._timeout,
                    )
                except Exception as exc:  # noqa: BLE001 - counted, committed, then re-raised
                    # The publish may have landed: count the attempt so that a later
                    # `duplicate` answer is not mistaken for pre-emption.
                    await conn.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = $1", row["id"])
                    failure = exc
                    break
                alarm = None
                if ack.duplicate and row["attempts"] == 0:
                    alarm = "duplicate on first publish: event id possibly pre-empted"
                    PUBLISH_ALARMS.labels(self._producer).inc()
                    log.error(
                        "outbox publish answered duplicate on first attempt",
                        extra={"event_id": str(row["event_id"]), "subject": row["subject"]},
                    )
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, published_at = now(), "
                    "stream_seq = $2, alarm = $3 WHERE id = $1",
                    row["id"],
                    ack.seq,
                    alarm,
                )
                EVENTS_PUBLISHED.labels(self._producer, row["subject"].split(".")[-1]).inc()
        if failure is not None:
            raise failure
        return len(rows)

    async def run(self, idle_s: float = 1.0) -> None:
        """Publish pending rows whenever notified, and every `idle_s` regardless."""
        backoff = 0.1
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=idle_s)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self.flush()
                backoff = 0.1
            except Exception as exc:  # noqa: BLE001 - the relay must outlive outages
                log.warning("outbox publish failed, will retry", extra={"error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wakeup.set()

    def start(self) -> None:
        """Run the relay loop in the background."""
        self._task = asyncio.create_task(self.run(), name=f"outbox-{self._producer}")

    async def stop(self) -> None:
        """Stop the relay loop."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
