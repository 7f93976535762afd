"""A handler that meets an outage retries in place, waiting 0.2 s and then twice as long each
time, but never more than the cap (2 s): after a PostgreSQL crash the first attempts can still
fail on pooled connections the crash broke, and a long wait then kept requests 14 s."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from faststream import ContextRepo

from shared.runtime.consumer import event_middleware
from shared.runtime.inflight import InFlight


class _Raw:
    """What the middleware reads of a JetStream message."""

    def __init__(self) -> None:
        self.metadata = SimpleNamespace(num_delivered=1, sequence=SimpleNamespace(stream=7), stream="S", consumer="c")
        self.subject = "pki.cert.r1.requested"
        self.reply = "$JS.ACK.x"
        self.progress = 0

    async def in_progress(self) -> None:
        self.progress += 1


async def test_an_outage_is_retried_in_place_with_waits_capped_at_two_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    failures = 8
    calls = 0

    async def call_next(msg: Any) -> str:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise asyncpg.PostgresConnectionError("the database is down")
        return "applied"

    raw = _Raw()
    msg = SimpleNamespace(raw_message=raw, in_progress=raw.in_progress)
    middleware_class = event_middleware(
        "enrollment",
        lambda: None,
        10,
        lambda: False,
        in_flight=InFlight(3.0),  # type: ignore[arg-type,return-value]
    )
    middleware = middleware_class(msg, context=ContextRepo())
    assert await middleware._handle(call_next, msg) == "applied"  # type: ignore[attr-defined]
    assert waits == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0]
    assert raw.progress == failures  # kept in progress while it waits, never redelivered meanwhile
