"""Over a real JetStream, with a short ack_wait: a slow handler in a live process keeps its messages
(the in-flight heartbeat), and what a killed replica held reaches another within about ack_wait."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from faststream.nats.message import NatsMessage
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo, StreamConfig

import replica
from deploy.local.devstack import NatsServer
from harness import eventually

ACK_WAIT_S = 1.0
REPLICA = Path(replica.__file__)


@pytest.fixture
async def stream(nats_server: NatsServer) -> AsyncIterator[tuple[str, str]]:
    """A stream of its own on the session's nats-server: (stream name, subject root)."""
    tag = uuid.uuid4().hex[:8]
    name, root = f"INFLIGHT{tag}", f"inflight{tag}"
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{root}.>"]))
        yield name, root
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


async def _publish(url: str, stream: str, root: str, count: int) -> None:
    nc = await nats.connect(url)
    try:
        for i in range(count):
            await nc.jetstream().publish(f"{root}.work.{i}", b"{}", stream=stream)
    finally:
        await nc.close()


async def _consumer_info(url: str, stream: str) -> ConsumerInfo:
    nc = await nats.connect(url)
    try:
        info: ConsumerInfo = await nc.jetstream().consumer_info(stream, f"replica-{replica.PURPOSE}")
        return info
    finally:
        await nc.close()


async def test_a_handler_three_times_slower_than_ack_wait_is_not_redelivered_while_its_process_lives(
    nats_server: NatsServer, stream: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, root = stream
    deliveries: list[tuple[int, int]] = []  # (stream seq, delivery count) of each handler call
    done = 0
    held_when_acked: list[bool] = []
    ack = Msg.ack

    async def spy_ack(msg: Msg) -> None:
        held_when_acked.append(msg in worker.in_flight)
        await ack(msg)

    monkeypatch.setattr(Msg, "ack", spy_ack)

    async def slow(msg: NatsMessage) -> None:
        nonlocal done
        meta = msg.raw_message.metadata
        deliveries.append((meta.sequence.stream, meta.num_delivered))
        await asyncio.sleep(3.5 * ACK_WAIT_S)
        done += 1

    await _publish(nats_server.url, name, root, 5)  # before the replica: one pull, five slow handlers at once
    worker = await replica.start(nats_server.url, stream=name, root=root, ack_wait_s=ACK_WAIT_S, handle=slow)
    try:
        await eventually(lambda: asyncio.sleep(0, done >= 5), timeout=15)

        async def all_acknowledged() -> bool:
            info = await _consumer_info(nats_server.url, name)
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(all_acknowledged, timeout=5)
        info = await _consumer_info(nats_server.url, name)
        await asyncio.sleep(2 * ACK_WAIT_S)  # a redelivery would have come by now
    finally:
        await worker.stop()
    assert info.config.ack_wait == ACK_WAIT_S
    assert sorted(deliveries) == [(seq, 1) for seq in range(1, 6)]
    assert info.delivered is not None and info.delivered.consumer_seq == 5  # no delivery but the first, to anyone
    assert held_when_acked == [False] * 5  # let go of before it was acknowledged
    assert len(worker.in_flight) == 0


async def test_a_message_held_by_a_killed_replica_reaches_another_within_ack_wait(
    nats_server: NatsServer, stream: tuple[str, str]
) -> None:
    name, root = stream
    env = {**os.environ, "PYTHONPATH": str(REPLICA.parent.parent)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPLICA),
        nats_server.url,
        name,
        root,
        str(ACK_WAIT_S),
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    got: list[tuple[float, int]] = []  # (when, delivery count) of what the surviving replica got

    async def note(msg: NatsMessage) -> None:
        got.append((time.monotonic(), msg.raw_message.metadata.num_delivered))

    survivor: replica.Replica | None = None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), timeout=30) == b"ready\n"
        await _publish(nats_server.url, name, root, 1)
        assert await asyncio.wait_for(proc.stdout.readline(), timeout=10) == b"holding 1\n"
        survivor = await replica.start(nats_server.url, stream=name, root=root, ack_wait_s=ACK_WAIT_S, handle=note)
        # Alive, the holder keeps its message for three times ack_wait: nobody else gets it.
        await asyncio.sleep(3 * ACK_WAIT_S)
        assert got == []
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(proc.wait(), timeout=10)
        await eventually(lambda: asyncio.sleep(0, got), timeout=ACK_WAIT_S + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if survivor is not None:
            await survivor.stop()
    (when, delivered), *_ = got
    assert delivered == 2
    assert when - killed_at <= ACK_WAIT_S + 1.0, f"redelivered {when - killed_at:.2f} s after the kill"
