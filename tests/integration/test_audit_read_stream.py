"""Audit's log reader (`audit verify`, `audit replay`) on a real nats-server: every message of the
log once, in order, up to the position the read began at; a lost consumer is replaced without a gap
or a repeat; a read that cannot reach that position fails instead of passing for the whole log."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from deploy.local.devstack import NatsServer
from services.audit import replay


@pytest.fixture
async def log(nats_server: NatsServer) -> AsyncIterator[tuple[Client, JetStreamContext, str]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = f"READ_{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.log.>", f"{name}.other.>"]))
    try:
        yield nc, js, name
    finally:
        await js.delete_stream(name)
        await nc.close()


async def _publish(js: JetStreamContext, subjects: list[str]) -> None:
    for subject in subjects:
        await js.publish(subject, subject.encode())


async def _read(
    js: JetStreamContext, stream: str, through: int, *, subject: str = "", sparse: bool = False, **kwargs: float
) -> list[replay.Message]:
    """Every message `read_stream` reads on `subject` (the log's, by default) up to `through`."""
    subject = subject or f"{stream}.log.>"
    queue, reader = await replay.read_stream(js, stream, subject, through, sparse=sparse, **kwargs)  # type: ignore[arg-type]
    return [m async for chunk in replay.read_all(queue, reader, through, whole=not sparse) for m in chunk]


async def test_every_message_of_the_log_once_in_order_up_to_where_the_read_began(
    log: tuple[Client, JetStreamContext, str],
) -> None:
    _, js, stream = log
    subjects = [f"{stream}.log.{i}" if i % 7 else f"{stream}.other.{i}" for i in range(1, 2501)]
    await _publish(js, subjects)
    await _publish(js, [f"{stream}.log.after.{i}" for i in range(50)])  # past the read's end
    read = await _read(js, stream, 2500, batch=100)
    want = [(seq, s, s.encode()) for seq, s in enumerate(subjects, 1) if ".log." in s]
    assert read == want


async def test_a_slow_reader_of_the_batches_still_gets_the_last_ones(
    log: tuple[Client, JetStreamContext, str],
) -> None:
    _, js, stream = log
    await _publish(js, [f"{stream}.log.{i}" for i in range(1, 1501)])
    queue, reader = await replay.read_stream(js, stream, f"{stream}.log.>", 1500, batch=50)
    seqs: list[int] = []
    async for chunk in replay.read_all(queue, reader, 1500):
        seqs.extend(seq for seq, _, _ in chunk)
        await asyncio.sleep(0.05)  # the queue stays full: the end arrives while the reader waits on it
    assert seqs == list(range(1, 1501))


async def test_a_lost_consumer_is_replaced_after_the_last_message_read(
    log: tuple[Client, JetStreamContext, str],
) -> None:
    _, js, stream = log
    await _publish(js, [f"{stream}.log.{i}" for i in range(1, 1001)])
    queue, reader = await replay.read_stream(js, stream, f"{stream}.log.>", 1000, batch=50)
    seqs: list[int] = []
    deleted = 0
    async for chunk in replay.read_all(queue, reader, 1000):
        seqs.extend(seq for seq, _, _ in chunk)
        if deleted < 2 and len(seqs) > 200 * (deleted + 1):
            if deleted == 1:
                # The reader's queue fills and its requests are all answered: the consumer is
                # deleted while no request of the reader's is outstanding.
                await asyncio.sleep(1.0)
            for info in await js.consumers_info(stream):
                await js.delete_consumer(stream, info.name)
                deleted += 1
    assert deleted == 2
    assert seqs == list(range(1, 1001))


async def test_a_read_that_cannot_reach_its_end_fails_instead_of_passing_for_the_whole_log(
    log: tuple[Client, JetStreamContext, str],
) -> None:
    _, js, stream = log
    await _publish(js, [f"{stream}.log.{i}" for i in range(1, 11)] + [f"{stream}.other.11"])
    # The log's last message is not one the read takes: it ends at 10 of 11, and says so.
    with pytest.raises(replay.StreamUnreadable, match="past 10 of 11"):
        await _read(js, stream, 11, stall_s=1.0)


async def test_a_read_whose_server_goes_away_fails_within_its_stall_limit() -> None:
    server = NatsServer(monitor=False).start()
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="GONE", subjects=["gone.>"]))
        await _publish(js, [f"gone.{i}" for i in range(1, 2001)])
        queue, reader = await replay.read_stream(js, "GONE", "gone.>", 2000, batch=100, stall_s=1.5)
        started = time.monotonic()
        with pytest.raises(replay.StreamUnreadable, match="of 2000"):
            async for _ in replay.read_all(queue, reader, 2000):
                if server.proc is not None and server.proc.poll() is None:
                    await asyncio.to_thread(server.stop, True)
                    started = time.monotonic()
        assert time.monotonic() - started < 10
        with contextlib.suppress(OSError):  # its server was killed under it
            await nc.close()
    finally:
        server.cleanup()


async def _read_sparse(js: JetStreamContext, stream: str, subject: str, through: int) -> list[int]:
    return [seq for seq, _, _ in await _read(js, stream, through, subject=subject, sparse=True, batch=50, stall_s=5)]


async def test_a_sparse_read_ends_when_nothing_is_left_on_its_subject_before_the_end_of_the_log(
    log: tuple[Client, JetStreamContext, str],
) -> None:
    # Audit's checkpoints are read this way: a few messages on a subject of their own, the last of
    # them well before the log's end. Each read ends when the server says nothing is left on the
    # subject, none missed (were it to wait for `through`, it would fail once stalled for 5 s).
    _, js, stream = log
    subjects = [f"{stream}.other.{i}" if i % 100 else f"{stream}.log.checkpoint.{i}" for i in range(1, 1051)]
    await _publish(js, subjects)
    assert await _read_sparse(js, stream, f"{stream}.log.>", 1050) == list(range(100, 1001, 100))
    assert await _read_sparse(js, stream, f"{stream}.log.>", 550) == [100, 200, 300, 400, 500]  # up to `through`
    assert await _read_sparse(js, stream, f"{stream}.nothing.>", 1050) == []  # none at all


async def test_a_whole_read_that_ends_early_still_fails(log: tuple[Client, JetStreamContext, str]) -> None:
    # Only a sparse read may end before `through`: a read of the whole log that stops short is an error.
    _, js, stream = log
    await _publish(js, [f"{stream}.log.{i}" for i in range(1, 11)])
    queue, reader = await replay.read_stream(js, stream, f"{stream}.log.>", 10, batch=50)
    with pytest.raises(replay.StreamUnreadable):
        async for _ in replay.read_all(queue, reader, 20):  # told to expect more than the read asked for
            pass
