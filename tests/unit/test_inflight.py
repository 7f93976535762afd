"""The in-flight registry keeps held messages in progress, and its heartbeat outlives failures."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from nats.aio.msg import Msg

from shared.runtime.inflight import InFlight


class FakeMsg:
    """A JetStream message that counts its `+WPI`s (and fails them, if told to)."""

    def __init__(self, fail: bool = False) -> None:
        self.progress = 0
        self.is_acked = False
        self.fail = fail

    async def in_progress(self) -> None:
        if self.fail:
            raise ConnectionError("connection closed")
        self.progress += 1


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _msg(fake: FakeMsg) -> Msg:
    return cast(Msg, fake)


def test_ack_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ack_wait must be positive"):
        InFlight(0)


async def test_a_message_held_for_a_sixth_of_ack_wait_is_kept_in_progress_at_each_beat() -> None:
    clock = FakeMonotonic()
    in_flight = InFlight(3.0, monotonic=clock)
    old, new = FakeMsg(), FakeMsg()
    with in_flight.holding(_msg(old)):
        clock.now += 0.25
        with in_flight.holding(_msg(new)):
            clock.now += 0.25
            assert await in_flight.beat() == 1  # `old`, held 0.5 s; `new`, held 0.25 s, is not due yet
            clock.now += 1.0
            assert await in_flight.beat() == 2
    assert (old.progress, new.progress) == (2, 1)


async def test_a_message_let_go_is_no_longer_kept_in_progress_even_if_its_handler_failed() -> None:
    clock = FakeMonotonic()
    in_flight = InFlight(3.0, monotonic=clock)
    msg = FakeMsg()
    with pytest.raises(RuntimeError), in_flight.holding(_msg(msg)):
        raise RuntimeError("the handler failed")
    clock.now += 10
    assert len(in_flight) == 0
    assert await in_flight.beat() == 0
    assert msg.progress == 0


async def test_an_acknowledged_message_is_not_kept_in_progress() -> None:
    clock = FakeMonotonic()
    in_flight = InFlight(3.0, monotonic=clock)
    msg = FakeMsg()
    with in_flight.holding(_msg(msg)):
        msg.is_acked = True
        clock.now += 10
        assert await in_flight.beat() == 0


async def test_a_failed_in_progress_is_logged_and_the_other_messages_are_still_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeMonotonic()
    in_flight = InFlight(3.0, monotonic=clock)
    broken, fine = FakeMsg(fail=True), FakeMsg()
    with in_flight.holding(_msg(broken)), in_flight.holding(_msg(fine)):
        clock.now += 10
        assert await in_flight.beat() == 1
    assert fine.progress == 1
    assert "could not keep messages in progress" in caplog.text


async def test_the_heartbeat_beats_every_third_of_ack_wait_until_stopped_and_survives_a_failing_beat() -> None:
    in_flight = InFlight(0.15)
    beats = 0

    async def beat() -> int:
        nonlocal beats
        beats += 1
        if beats == 1:
            raise RuntimeError("a bug in a beat")
        return 0

    cast(Any, in_flight).beat = beat
    in_flight.start()
    await asyncio.wait_for(_until(lambda: beats >= 3), timeout=5)
    await asyncio.wait_for(in_flight.stop(), timeout=2)
    stopped_at = beats
    await asyncio.sleep(0.2)
    assert beats == stopped_at


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_message_held_too_long_is_let_go_for_redelivery() -> None:
    clock = FakeMonotonic()
    registry = InFlight(3.0, max_hold_s=60.0, monotonic=clock)
    fake = FakeMsg()
    with registry.holding(_msg(fake)):
        clock.now += 1.0
        assert await registry.beat() == 1
        clock.now += 60.0  # a handler stuck this long: JetStream may give the message to another replica
        assert await registry.beat() == 0
    assert fake.progress == 1
