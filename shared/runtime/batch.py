"""Certbus's own batch consumer: one transaction per pull, without a dispatch per message.

FastStream hands every message of a pull to its own handler task, through its middleware and
dependency injection (a few hundred microseconds each before any work), and the handlers then meet
again in a `GroupCommit`. A `BatchConsumer` takes what its pull delivered instead, binds and parses
each message, parks the ones that can never be applied, applies the others in stream order in one
transaction (`apply_events` semantics: tracking rows in the same transaction), and acks them after
the commit, pipelined. It keeps every rule of `shared.runtime.consumer`'s middleware:

- a message that is not a valid event on its own subject, is malformed, or breaks an invariant is
  parked with its reason and acked; the rest of its batch is applied;
- an outage is retried in place with backoff, the batch kept in progress (the in-flight heartbeat);
- a batch that fails otherwise is applied again one message per transaction, so that only the bad
  message fails: it is nacked for redelivery, and parked on its last delivery.

`PullFeed` keeps pull requests outstanding on the durable (as nats.go's `Consume` does) rather than
calling nats-py's `fetch` in a loop: messages are buffered as they arrive and held in flight at
once, so a message delivered while a batch is being applied is kept in progress too, and the loop
waits only when nothing is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import asyncpg
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from shared.contract.binding import Unbound
from shared.runtime.consumer import (
    TRANSIENT_ERRORS,
    Delivery,
    EventRejected,
    Process,
    Publish,
    park_message,
    retry_in_place,
)
from shared.runtime.inflight import InFlight
from shared.runtime.metrics import BATCH_EVENTS

log = logging.getLogger("certbus.batch")
T = TypeVar("T")
T_co = TypeVar("T_co")

# What a message is before it is applied (raises Unbound, ValidationError or EventRejected: parked).
Prepare = Callable[[Msg], T]
# What a consumer does once a batch's items are committed and acked (wake a loop, drop a cache).
After = Callable[[list[T]], Awaitable[None]]


class Stopping(Exception):
    """The service is stopping: an in-place retry gives up and the messages are nacked."""


def delivery_of(msg: Msg) -> Delivery:
    """Where and when the log accepted a JetStream message."""
    meta = msg.metadata
    return Delivery(meta.sequence.stream, meta.timestamp)


class BatchApplier(Generic[T]):
    """Applies one batch of messages of a durable, parking, retrying or nacking as the middleware does."""

    def __init__(
        self,
        service: str,
        durable: str,
        *,
        prepare: Prepare[T],
        process: Process[T],
        publish: Publish,
        pool: Callable[[], asyncpg.Pool],
        max_deliver: int,
        stopping: Callable[[], bool],
        after: After[T] | None = None,
        max_backoff_s: float = 2.0,
    ) -> None:
        self.service = service
        self.durable = durable
        self._prepare = prepare
        self._process = process
        self._publish = publish
        self._pool = pool
        self._max_deliver = max_deliver
        self._stopping = stopping
        self._after = after
        self._max_backoff_s = max_backoff_s

    async def apply(self, msgs: Sequence[Msg]) -> None:
        """Apply `msgs` (in stream order): each is acked, or nacked for redelivery, before this returns."""
        ready: list[tuple[T, Delivery, Msg]] = []
        unusable: list[tuple[Msg, str]] = []
        failed: list[tuple[Msg, Exception]] = []
        for msg in sorted(msgs, key=lambda m: m.metadata.sequence.stream):
            try:
                ready.append((self._prepare(msg), delivery_of(msg), msg))
            except Unbound as exc:
                unusable.append((msg, str(exc)))
            except (ValidationError, EventRejected) as exc:
                unusable.append((msg, f"{type(exc).__name__}: {exc}"))
            except Exception as exc:  # noqa: BLE001 - a failed delivery, like a handler's error
                failed.append((msg, exc))
        BATCH_EVENTS.labels(self.durable).observe(len(msgs))
        try:
            if unusable:
                await self._park(unusable)
            if ready:
                await self._commit(ready)
            for msg, error in failed:
                await self._failed(msg, error)
        except Stopping:
            await _nak([msg for msg in msgs if not msg.is_acked])

    async def _commit(self, group: list[tuple[T, Delivery, Msg]]) -> None:
        try:
            items = [(item, delivery) for item, delivery, _ in group]
            entries = await self._in_place([msg for *_, msg in group], lambda: self._process(items))
        except Stopping:
            raise
        except Exception as exc:  # noqa: BLE001 - the group is applied again one by one, or this one fails
            if len(group) == 1:
                await self._failed(group[0][2], exc)
                return
            log.warning("batch commit failed; applying its events one by one", extra={"error": repr(exc)})
            for entry in group:
                await self._commit([entry])
            return
        await self._publish(entries)
        for *_, msg in group:
            await msg.ack()
        if self._after is not None:
            try:
                await self._after([item for item, _, _ in group])
            except Exception as exc:  # noqa: BLE001 - committed and acked: only a side effect failed
                log.warning("after-commit step failed", extra={"durable": self.durable, "error": repr(exc)})

    async def _failed(self, msg: Msg, exc: Exception) -> None:
        """One message that failed on its own: parked if it can never be applied or this was its last
        delivery, else nacked for redelivery."""
        if isinstance(exc, Unbound):
            await self._park([(msg, str(exc))])
        elif isinstance(exc, (ValidationError, EventRejected)):
            await self._park([(msg, f"{type(exc).__name__}: {exc}")])
        elif (delivered := msg.metadata.num_delivered) >= self._max_deliver:
            await self._park([(msg, f"failed {delivered} deliveries: {exc!r}")])
        else:
            log.error(
                "applying an event failed; it will be redelivered",
                extra={"durable": self.durable, "stream_seq": msg.metadata.sequence.stream, "error": repr(exc)},
                exc_info=exc,
            )
            await msg.nak()

    async def _park(self, unusable: list[tuple[Msg, str]]) -> None:
        async def park() -> None:
            async with self._pool().acquire() as conn, conn.transaction():
                for msg, reason in unusable:
                    await park_message(conn, self.service, msg, reason)

        await self._in_place([msg for msg, _ in unusable], park)
        for msg, _ in unusable:
            await msg.ack()

    async def _in_place(self, msgs: list[Msg], step: Callable[[], Awaitable[T_co]]) -> T_co:
        """Run `step`, retrying an outage in place (`retry_in_place`) with `msgs` kept in progress;
        raises Stopping if the service stops meanwhile."""

        async def keep_alive() -> None:
            for msg in msgs:
                await msg.in_progress()

        try:
            return await retry_in_place(
                step,
                keep_alive=keep_alive,
                stopping=self._stopping,
                max_backoff_s=self._max_backoff_s,
                context={"durable": self.durable},
            )
        except TRANSIENT_ERRORS as exc:  # only once stopping
            raise Stopping from exc


async def _nak(msgs: Sequence[Msg]) -> None:
    """Hand messages back for redelivery now (a failure leaves them to ack_wait)."""
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak()


class PullFeed:
    """Keeps pull requests outstanding on durable `durable` of `stream` and buffers what they
    deliver, each message held in flight from its arrival.

    Requests ask for up to `batch` messages in all (what is buffered counts), expire after
    `expires_s` and ask for an idle heartbeat every `heartbeat_s`; a request's end (404, 408 with
    the messages it did not deliver, 409) frees what it had asked for. If nothing is heard for two
    heartbeats while requests are outstanding (a reconnect lost them), they are presumed gone.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        api_prefix: str,
        stream: str,
        durable: str,
        inbox_prefix: str,
        in_flight: InFlight,
        batch: int,
        expires_s: float = 10.0,
        heartbeat_s: float = 2.0,
    ) -> None:
        if not 0 < heartbeat_s <= expires_s / 2:
            raise ValueError(f"the heartbeat ({heartbeat_s} s) must be at most half the expiry ({expires_s} s)")
        self._nc = nc
        self._next = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = f"{inbox_prefix}.{nc._nuid.next().decode()}"
        self._in_flight = in_flight
        self._batch = batch
        self._expires_ns = int(expires_s * 1e9)
        self._heartbeat_s = heartbeat_s
        self._buffer: list[Msg] = []
        self._ready = asyncio.Event()
        self._outstanding = 0  # messages asked for and not yet delivered or given up
        self._heard = time.monotonic()
        self._reconnects = nc.stats.get("reconnects", 0)
        self._sub: Subscription | None = None
        self._watch: asyncio.Task[None] | None = None
        self.closed = False
        self.pulls = 0  # requests sent, for tests and metrics

    async def start(self) -> None:
        """Subscribe the inbox and send the first request."""
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._watch = asyncio.create_task(self._watchdog(), name=f"pull-watch-{self._next}")
        await self._top_up()

    async def take(self, limit: int) -> list[Msg]:
        """Wait until something is buffered, then take up to `limit` messages ([] once closed)."""
        while not self._buffer and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        taken, self._buffer = self._buffer[:limit], self._buffer[limit:]
        if not self.closed:
            await self._top_up()
        return taken

    async def close(self) -> list[Msg]:
        """Stop receiving; returns what was buffered and not taken (the caller hands it back)."""
        self.closed = True
        self._ready.set()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        left, self._buffer = self._buffer, []
        return left

    async def _on_msg(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            self._on_status(status, msg)
        elif msg.reply:
            self._outstanding = max(self._outstanding - 1, 0)
            if self.closed:
                with contextlib.suppress(Exception):
                    await msg.nak()  # stopping: handed back at once rather than after ack_wait
                return
            self._in_flight.hold(msg)
            self._buffer.append(msg)
            self._ready.set()
        await self._top_up()

    def _on_status(self, status: str, msg: Msg) -> None:
        if status == "100":
            return  # an idle heartbeat: the request is alive
        headers = msg.headers or {}
        left = headers.get("Nats-Pending-Messages")
        if status in ("404", "408") and left is not None and left.isdigit():
            self._outstanding = max(self._outstanding - int(left), 0)
            return
        # Any other end of a request (409: leadership change, consumer deleted, too many requests;
        # 503: no JetStream) or one without its count: nothing is outstanding any more.
        if status not in ("404", "408"):
            log.warning(
                "pull request ended", extra={"subject": self._next, "status": status, "why": headers.get("Description")}
            )
        self._outstanding = 0

    async def _top_up(self) -> None:
        if self.closed or self._sub is None:
            return
        want = self._batch - self._outstanding - len(self._buffer)
        if want <= 0 or (self._outstanding and want < self._batch // 2):
            return
        request = {"batch": want, "expires": self._expires_ns, "idle_heartbeat": int(self._heartbeat_s * 1e9)}
        self._outstanding += want
        self.pulls += 1
        try:
            await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        except Exception as exc:  # noqa: BLE001 - the watchdog asks again
            self._outstanding -= want
            log.warning("could not send a pull request", extra={"subject": self._next, "error": repr(exc)})

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s / 2)
            reconnects = self._nc.stats.get("reconnects", 0)
            silent = time.monotonic() - self._heard > 2 * self._heartbeat_s + 1
            if reconnects != self._reconnects or (self._outstanding and silent):
                self._reconnects = reconnects
                self._outstanding = 0
                self._heard = time.monotonic()
            with contextlib.suppress(Exception):
                await self._top_up()


async def ensure_durable(
    js: JetStreamContext, stream: str, durable: str, filters: Sequence[str], *, ack_wait_s: float, max_deliver: int
) -> None:
    """Create the durable pull consumer if it does not exist (as nats-py's `pull_subscribe` does)."""
    try:
        await js.consumer_info(stream, durable)
    except NotFoundError:
        await js.add_consumer(
            stream,
            config=ConsumerConfig(
                name=durable,
                durable_name=durable,
                filter_subjects=list(filters),
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait_s,
                max_deliver=max_deliver,
            ),
        )


class BatchConsumer(Generic[T]):
    """A durable's loop: take what its feed buffered (up to `max_batch`), apply it, take the next."""

    def __init__(self, feed: PullFeed, applier: BatchApplier[T], in_flight: InFlight, *, max_batch: int) -> None:
        self.feed = feed
        self.applier = applier
        self._in_flight = in_flight
        self._max_batch = max_batch
        self._task: asyncio.Task[None] | None = None
        self._current: list[Msg] = []
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        await self.feed.start()
        self._task = asyncio.create_task(self._run(), name=f"batch-{self.applier.durable}")

    async def _run(self) -> None:
        while not self.feed.closed:
            msgs = await self.feed.take(self._max_batch)
            if not msgs:
                continue
            self._current = msgs
            try:
                await self.applier.apply(msgs)
            except Exception as exc:
                log.exception("batch failed unexpectedly; its messages are redelivered", extra={"error": repr(exc)})
                await _nak([msg for msg in msgs if not msg.is_acked])
                await asyncio.sleep(0.2)
            finally:
                for msg in msgs:
                    self._in_flight.release(msg)
                self._current = []

    async def stop(self, grace_s: float = 15.0) -> None:
        """Stop taking messages, let the batch under way finish (within `grace_s`), hand back the rest."""
        left = await self.feed.close()
        if self._task is not None:
            try:
                async with asyncio.timeout(grace_s):
                    await asyncio.shield(self._task)
            except (TimeoutError, Exception):  # noqa: BLE001 - cancelled below, what it held is nacked
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        unsettled = [msg for msg in [*self._current, *left] if not msg.is_acked]
        await _nak(unsettled)
        for msg in [*self._current, *left]:
            self._in_flight.release(msg)
