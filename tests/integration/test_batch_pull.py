"""Over a real JetStream: the batch consumer's feed never leaves a delivered message waiting for
ack_wait. Bursts of messages, some while a batch is being applied and some just as the outstanding
pull request expires, each timed from its publish until it is applied: none waits anywhere near
ack_wait, none is delivered twice, all are applied once and in stream order."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from deploy.local.devstack import NatsServer
from shared.runtime.batch import BatchApplier, BatchConsumer, PullFeed, ensure_durable
from shared.runtime.consumer import Delivery
from shared.runtime.inflight import InFlight
from shared.runtime.outbox import OutboxEntry

ACK_WAIT_S = 2.0


@pytest.fixture
async def js_stream(nats_server: NatsServer) -> AsyncIterator[tuple[NatsClient, str, str]]:
    """A connection and a stream of its own on the session's nats-server: (client, stream, root)."""
    tag = uuid.uuid4().hex[:8]
    name, root = f"BATCH{tag}", f"batch{tag}"
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(StreamConfig(name=name, subjects=[f"{root}.>"]))
    try:
        yield nc, name, root
    finally:
        await nc.jetstream().delete_stream(name)
        await nc.close()


async def test_no_message_waits_for_ack_wait_across_bursts_and_request_expiries(
    js_stream: tuple[NatsClient, str, str],
) -> None:
    nc, stream, root = js_stream
    js = nc.jetstream()
    await ensure_durable(js, stream, "c", [f"{root}.>"], ack_wait_s=ACK_WAIT_S, max_deliver=5)
    in_flight = InFlight(ACK_WAIT_S)
    in_flight.start()
    published: dict[str, float] = {}
    waited: dict[str, float] = {}
    applied_seqs: list[int] = []
    redelivered: list[str] = []
    rng = random.Random(7)

    async def process(items: list[tuple[tuple[str, bytes], Delivery]]) -> list[OutboxEntry]:
        await asyncio.sleep(rng.uniform(0, 0.05))  # a transaction's time: more arrives meanwhile
        now = time.monotonic()
        for (_, data), delivery in items:
            key = data.decode()
            if key in waited:
                redelivered.append(key)
            waited[key] = now - published[key]
            applied_seqs.append(delivery.seq)
        return []

    async def publish(_: list[OutboxEntry]) -> None:
        return None

    # Short expiry and heartbeat, so that many requests expire and are renewed during the test.
    feed = PullFeed(
        nc,
        api_prefix="$JS.API",
        stream=stream,
        durable="c",
        inbox_prefix="_INBOX",
        in_flight=in_flight,
        batch=32,
        expires_s=1.0,
        heartbeat_s=0.5,
    )
    applier: BatchApplier[tuple[str, bytes]] = BatchApplier(
        "test",
        "c",
        prepare=lambda msg: (msg.subject, msg.data),
        process=process,
        publish=publish,
        pool=lambda: None,  # type: ignore[arg-type,return-value]
        max_deliver=5,
        stopping=lambda: False,
    )
    consumer = BatchConsumer(feed, applier, in_flight, max_batch=16)
    await consumer.start()
    try:
        sent = 0
        for burst in range(60):
            for _ in range(rng.choice([1, 1, 2, 5, 40])):
                key = f"{burst}-{sent}"
                published[key] = time.monotonic()
                await js.publish(f"{root}.m.{sent}", key.encode(), stream=stream)
                sent += 1
            # Gaps around the request's expiry (1 s) as well as short ones.
            await asyncio.sleep(rng.choice([0.0, 0.05, 0.3, 0.95, 1.0, 1.05]))
        deadline = time.monotonic() + 3 * ACK_WAIT_S
        while len(waited) < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await in_flight.stop()
    assert len(waited) == sent, f"{sent - len(waited)} of {sent} never applied"
    assert redelivered == []
    slowest = max(waited.values())
    assert slowest < ACK_WAIT_S / 2, f"a message waited {slowest:.2f} s (ack_wait {ACK_WAIT_S} s)"
    assert applied_seqs == sorted(applied_seqs)
    info = await js.consumer_info(stream, "c")
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
