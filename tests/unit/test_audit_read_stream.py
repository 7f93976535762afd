"""The audit reader rides out a cluster's brief refusals (a consumer-leader change answers 503) but
never passes a partial read for the whole log."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from services.audit import replay


def _msg(seq: int) -> SimpleNamespace:
    return SimpleNamespace(
        subject=f"certbus.x.{seq}",
        data=b"{}",
        metadata=SimpleNamespace(sequence=SimpleNamespace(stream=seq)),
    )


@dataclass
class FakeSub:
    """Answers each fetch from a script: an exception to raise or the sequences to deliver."""

    script: list[Any]
    unsubscribed: bool = False

    async def fetch(self, batch: int, timeout: float) -> list[SimpleNamespace]:
        step = self.script.pop(0) if self.script else nats.errors.TimeoutError()
        if isinstance(step, BaseException):
            raise step
        return [_msg(seq) for seq in step]

    async def unsubscribe(self) -> None:
        self.unsubscribed = True


@dataclass
class FakeJs:
    sub: FakeSub
    refusals: list[BaseException] = field(default_factory=list)

    async def pull_subscribe(self, *args: Any, **kwargs: Any) -> FakeSub:
        if self.refusals:
            raise self.refusals.pop(0)
        return self.sub


async def _read(js: FakeJs, through: int, stall_s: float) -> list[int]:
    queue, reader = await replay.read_stream(js, "S", "certbus.>", through, stall_s=stall_s)  # type: ignore[arg-type]
    return [seq async for chunk in replay.read_all(queue, reader, through) for seq, _, _ in chunk]


async def test_a_read_rides_out_503s_and_timeouts_while_the_consumer_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "RETRY_S", 0.0)
    unavailable = nats.js.errors.ServiceUnavailableError
    sub = FakeSub([unavailable(), [1, 2], unavailable(), nats.errors.TimeoutError(), [3, 4, 5]])
    js = FakeJs(sub, refusals=[unavailable()])
    assert await _read(js, 5, stall_s=5.0) == [1, 2, 3, 4, 5]
    assert sub.unsubscribed


async def test_a_read_that_stops_progressing_fails_instead_of_passing_for_the_whole_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay, "RETRY_S", 0.01)
    sub = FakeSub([[1, 2]] + [nats.js.errors.ServiceUnavailableError() for _ in range(1000)])
    with pytest.raises(replay.StreamUnreadable, match="past 2 of 5"):
        await _read(FakeJs(sub), 5, stall_s=0.2)
