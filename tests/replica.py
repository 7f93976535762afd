"""One replica of a service's consumer, wired as `shared.runtime.service` wires one (a durable pull
subscriber made by `Runtime.consumer`, the event middleware, the in-flight heartbeat) but with no
database, for tests of delivery over a real JetStream.

Run as a script (`python tests/replica.py NATS_URL STREAM ROOT ACK_WAIT_S`), it is a process that
says `ready` once it consumes, then holds every message it gets, saying `holding <stream seq>`,
until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from faststream.nats import NatsBroker, NatsRouter
from faststream.nats.annotations import NatsMessage

from shared.base.settings import ServiceSettings
from shared.runtime.consumer import event_middleware
from shared.runtime.inflight import InFlight
from shared.runtime.service import Runtime

PURPOSE = "work"  # its durable is `replica-work`, shared by every replica on the same stream


@dataclass
class Replica:
    """A running replica: stop it with `stop()`."""

    broker: NatsBroker
    in_flight: InFlight

    async def stop(self) -> None:
        await self.broker.stop()
        await self.in_flight.stop()


async def start(
    nats_url: str, *, stream: str, root: str, ack_wait_s: float, handle: Callable[[NatsMessage], Awaitable[None]]
) -> Replica:
    """Consume every message on `root.>` of `stream` with `handle`, as a service replica does."""
    settings = ServiceSettings(nats_url=nats_url, stream=stream, subject_root=root, ack_wait_s=ack_wait_s)
    in_flight = InFlight(ack_wait_s)

    def no_pool() -> asyncpg.Pool:
        raise AssertionError("a replica has no database: nothing may be parked")

    middleware = event_middleware("replica", no_pool, settings.max_deliver, lambda: False, in_flight=in_flight)
    broker = NatsBroker(nats_url, logger=None, graceful_timeout=5.0)
    rt = Runtime(
        name="replica",
        settings=settings,
        broker=broker,
        events=NatsRouter(middlewares=[middleware]),
        queries=NatsRouter(),
        in_flight=in_flight,
    )

    @rt.consumer(PURPOSE, None)
    async def on_message(msg: NatsMessage) -> None:
        await handle(msg)

    rt.assemble()
    in_flight.start()
    await broker.start()
    return Replica(broker, in_flight)


async def _hold_everything(nats_url: str, stream: str, root: str, ack_wait_s: float) -> None:
    async def hold(msg: NatsMessage) -> None:
        print(f"holding {msg.raw_message.metadata.sequence.stream}", flush=True)
        await asyncio.Event().wait()

    await start(nats_url, stream=stream, root=root, ack_wait_s=ack_wait_s, handle=hold)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    url, stream_name, subject_root, ack_wait = sys.argv[1:5]
    asyncio.run(_hold_everything(url, stream_name, subject_root, float(ack_wait)))
