"""The batch consumer's applier: one transaction per batch in stream order, parking inside a batch,
retry in place, one-by-one after a failed batch, nack or park on the last delivery, clean stop;
and the pull feed's bookkeeping of what it asked for."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from shared.contract.binding import Unbound
from shared.runtime.batch import BatchApplier, BatchConsumer, PullFeed
from shared.runtime.consumer import Delivery, EventRejected
from shared.runtime.inflight import InFlight
from shared.runtime.outbox import OutboxEntry


class FakeMsg:
    """What the batch consumer reads of a JetStream message, and what it did to it."""

    def __init__(self, seq: int, data: str, delivered: int = 1) -> None:
        self.metadata = SimpleNamespace(
            sequence=SimpleNamespace(stream=seq),
            num_delivered=delivered,
            timestamp=datetime(2026, 1, 1, tzinfo=UTC),
            consumer="svc-c",
        )
        self.subject = f"pki.x.{seq}.done"
        self.data = data.encode()
        self.reply = f"$JS.ACK.S.c.{seq}"
        self.headers: dict[str, str] | None = None
        self.settled: str | None = None
        self.progress = 0

    @property
    def is_acked(self) -> bool:
        return self.settled is not None

    async def ack(self) -> None:
        self.settled = "ack"

    async def nak(self, delay: float | None = None) -> None:
        self.settled = "nak"

    async def in_progress(self) -> None:
        self.progress += 1


class FakeConn:
    def __init__(self, parked: list[tuple[Any, ...]]) -> None:
        self.parked = parked

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def execute(self, _sql: str, *args: Any) -> None:
        self.parked.append(args)


class FakePool:
    def __init__(self) -> None:
        self.parked: list[tuple[Any, ...]] = []

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConn]:
        yield FakeConn(self.parked)


def prepare(msg: Any) -> str:
    text: str = msg.data.decode()
    if text == "unbound":
        raise Unbound("subject_mismatch", "not on its own subject")
    if text == "malformed":
        raise EventRejected("malformed")
    return text


class Recorder:
    def __init__(self, *, bad: set[str] | None = None, outages: int = 0, error: Exception | None = None) -> None:
        self.groups: list[list[tuple[str, int]]] = []
        self.published: list[int] = []
        self.after: list[list[str]] = []
        self.bad = bad or set()
        self.outages = outages
        self.error = error

    async def process(self, items: list[tuple[str, Delivery]]) -> list[OutboxEntry]:
        self.groups.append([(item, d.seq) for item, d in items])
        if self.outages:
            self.outages -= 1
            raise asyncpg.PostgresConnectionError("the database is down")
        if self.error is not None:
            raise self.error
        if any(item in self.bad for item, _ in items):
            raise RuntimeError("cannot apply")
        return [OutboxEntry(d.seq, f"id-{item}", f"s.{item}", b"") for item, d in items]

    async def publish(self, entries: list[OutboxEntry]) -> None:
        self.published.extend(entry.id for entry in entries)

    async def after_commit(self, items: list[str]) -> None:
        self.after.append(items)


def applier(rec: Recorder, pool: FakePool, *, stopping: bool = False, max_deliver: int = 3) -> BatchApplier[str]:
    return BatchApplier(
        "svc",
        "svc-c",
        prepare=prepare,
        process=rec.process,
        publish=rec.publish,
        pool=lambda: pool,  # type: ignore[arg-type,return-value]
        max_deliver=max_deliver,
        stopping=lambda: stopping,
        after=rec.after_commit,
    )


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return waits


async def test_a_batch_is_one_transaction_in_stream_order_acked_after_commit_and_publish() -> None:
    rec, pool = Recorder(), FakePool()
    msgs = [FakeMsg(3, "c"), FakeMsg(1, "a"), FakeMsg(2, "b")]
    await applier(rec, pool).apply(msgs)  # type: ignore[arg-type]
    assert rec.groups == [[("a", 1), ("b", 2), ("c", 3)]]
    assert rec.published == [1, 2, 3]
    assert [m.settled for m in msgs] == ["ack", "ack", "ack"]
    assert rec.after == [["a", "b", "c"]]


async def test_unbound_and_malformed_messages_are_parked_with_their_reason_and_the_rest_applied() -> None:
    rec, pool = Recorder(), FakePool()
    msgs = [FakeMsg(1, "a"), FakeMsg(2, "unbound"), FakeMsg(3, "malformed"), FakeMsg(4, "d")]
    await applier(rec, pool).apply(msgs)  # type: ignore[arg-type]
    assert rec.groups == [[("a", 1), ("d", 4)]]
    assert [(args[2], args[4]) for args in pool.parked] == [
        (2, "subject_mismatch: not on its own subject"),
        (3, "EventRejected: malformed"),
    ]
    assert all(m.settled == "ack" for m in msgs)


async def test_an_outage_is_retried_in_place_keeping_the_batch_in_progress(no_sleep: list[float]) -> None:
    rec, pool = Recorder(outages=3), FakePool()
    msgs = [FakeMsg(1, "a"), FakeMsg(2, "b")]
    await applier(rec, pool).apply(msgs)  # type: ignore[arg-type]
    assert len(rec.groups) == 4
    assert no_sleep[:3] == [0.2, 0.4, 0.8]
    assert all(m.progress == 3 and m.settled == "ack" for m in msgs)


async def test_an_outage_while_stopping_hands_the_batch_back() -> None:
    rec, pool = Recorder(outages=1), FakePool()
    msgs = [FakeMsg(1, "a"), FakeMsg(2, "b")]
    await applier(rec, pool, stopping=True).apply(msgs)  # type: ignore[arg-type]
    assert [m.settled for m in msgs] == ["nak", "nak"]
    assert rec.published == []


async def test_a_failed_batch_is_applied_one_by_one_and_only_the_bad_message_is_nacked() -> None:
    rec, pool = Recorder(bad={"b"}), FakePool()
    msgs = [FakeMsg(1, "a"), FakeMsg(2, "b"), FakeMsg(3, "c")]
    await applier(rec, pool).apply(msgs)  # type: ignore[arg-type]
    assert rec.groups[1:] == [[("a", 1)], [("b", 2)], [("c", 3)]]
    assert [m.settled for m in msgs] == ["ack", "nak", "ack"]
    assert rec.published == [1, 3]
    assert pool.parked == []


async def test_a_message_failing_its_last_delivery_is_parked_not_nacked() -> None:
    rec, pool = Recorder(bad={"b"}), FakePool()
    msgs = [FakeMsg(1, "a"), FakeMsg(2, "b", delivered=3)]
    await applier(rec, pool, max_deliver=3).apply(msgs)  # type: ignore[arg-type]
    assert [m.settled for m in msgs] == ["ack", "ack"]
    assert len(pool.parked) == 1 and pool.parked[0][4].startswith("failed 3 deliveries")


async def test_an_event_rejected_while_applied_is_parked() -> None:
    rec, pool = Recorder(error=EventRejected("broken invariant")), FakePool()
    msgs = [FakeMsg(1, "a")]
    await applier(rec, pool).apply(msgs)  # type: ignore[arg-type]
    assert msgs[0].settled == "ack"
    assert pool.parked[0][4] == "EventRejected: broken invariant"


class FakeNats:
    """A connection that records the pull requests a feed sends."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.stats = {"reconnects": 0}
        self._nuid = SimpleNamespace(next=lambda: b"abc")
        self.cb: Any = None

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.requests.append(json.loads(payload))

    async def subscribe(self, subject: str, cb: Any = None, **_: Any) -> Any:
        self.cb = cb
        return SimpleNamespace(unsubscribe=self._noop)

    async def _noop(self) -> None:
        return None


def feed_on(nc: FakeNats, in_flight: InFlight, batch: int = 8) -> PullFeed:
    return PullFeed(
        nc,  # type: ignore[arg-type]
        api_prefix="$JS.API",
        stream="S",
        durable="c",
        inbox_prefix="_INBOX_x",
        in_flight=in_flight,
        batch=batch,
    )


async def test_the_feed_keeps_a_request_outstanding_and_asks_again_as_it_is_used() -> None:
    nc, in_flight = FakeNats(), InFlight(3.0)
    feed = feed_on(nc, in_flight)
    await feed.start()
    assert [r["batch"] for r in nc.requests] == [8]
    for seq in range(1, 5):
        await nc.cb(FakeMsg(seq, "x"))
    assert len(in_flight) == 4  # held from arrival, before anyone takes them
    taken = await feed.take(100)
    assert [m.metadata.sequence.stream for m in taken] == [1, 2, 3, 4]
    assert [r["batch"] for r in nc.requests] == [8, 4]  # four delivered and taken: asked for again
    end = FakeMsg(0, "")
    end.headers = {"Status": "408", "Nats-Pending-Messages": "8"}
    await nc.cb(end)  # both requests expired with 8 undelivered between them
    assert [r["batch"] for r in nc.requests] == [8, 4, 8]
    await feed.close()


async def test_a_request_ended_without_its_count_frees_everything_asked_for() -> None:
    nc, in_flight = FakeNats(), InFlight(3.0)
    feed = feed_on(nc, in_flight)
    await feed.start()
    gone = FakeMsg(0, "")
    gone.headers = {"Status": "409", "Description": "Leadership Change"}
    await nc.cb(gone)
    assert [r["batch"] for r in nc.requests] == [8, 8]
    await feed.close()


async def test_stopping_finishes_the_batch_under_way_and_nacks_what_was_buffered() -> None:
    nc, in_flight = FakeNats(), InFlight(3.0)
    feed = feed_on(nc, in_flight, batch=4)
    release = asyncio.Event()
    applied: list[list[int]] = []

    class Slow:
        durable = "c"

        async def apply(self, msgs: list[Any]) -> None:
            applied.append([m.metadata.sequence.stream for m in msgs])
            await release.wait()
            for m in msgs:
                await m.ack()

    consumer = BatchConsumer(feed, Slow(), in_flight, max_batch=2)  # type: ignore[arg-type]
    await consumer.start()
    msgs = [FakeMsg(seq, "x") for seq in range(1, 5)]
    for msg in msgs:
        await nc.cb(msg)
    await asyncio.sleep(0.01)
    assert applied == [[1, 2]]
    stop = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.01)
    release.set()
    await stop
    assert [m.settled for m in msgs] == ["ack", "ack", "nak", "nak"]
    assert len(in_flight) == 0
