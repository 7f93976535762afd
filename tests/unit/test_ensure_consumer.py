"""ensure_consumer updates an existing durable only when its filters or settings differ."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo

from shared.runtime.stream import ensure_consumer

FILTERS = ["pki.cert.*.requested"]


class FakeJetStream:
    """Holds one durable's config as the server reports it (ack_wait in nats-py's float seconds)."""

    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.updates: list[ConsumerConfig] = []

    async def consumer_info(self, stream: str, durable: str) -> ConsumerInfo:
        return ConsumerInfo(name=durable, stream_name=stream, config=self.config, created=datetime.now(UTC))

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> None:
        self.updates.append(config)


def _reported(ack_wait_s: float) -> ConsumerConfig:
    """What nats-py reads back after sending `ack_wait_s`: whole nanoseconds, as float seconds."""
    return ConsumerConfig(
        durable_name="d", filter_subjects=FILTERS, ack_wait=int(ack_wait_s * 1e9) / 1e9, max_deliver=10
    )


async def _ensure(js: FakeJetStream, ack_wait_s: float) -> None:
    await ensure_consumer(cast(JetStreamContext, js), "S", "d", FILTERS, ack_wait_s=ack_wait_s, max_deliver=10)


async def test_an_ack_wait_the_server_stores_truncated_to_nanoseconds_is_the_same() -> None:
    js = FakeJetStream(_reported(2.01))
    assert js.config.ack_wait != 2.01  # 2.009999999: nats-py truncates what it sends
    await _ensure(js, 2.01)
    assert js.updates == []


async def test_a_durable_from_before_the_short_ack_wait_is_given_it() -> None:
    js = FakeJetStream(_reported(30.0))
    await _ensure(js, 3.0)
    assert [update.ack_wait for update in js.updates] == [3.0]
