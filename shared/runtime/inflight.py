"""The messages this process is handling, kept in progress on JetStream for as long as it lives.

Consumers have a short ack_wait (`CERTBUS_ACK_WAIT_S`, 3 s), so that what a killed replica had
fetched is redelivered to another within seconds. A live handler may take longer than that (a
group commit, an outage retried in place, a slow signature), so one task per process tells
JetStream, every third of ack_wait, that each message held for a sixth of ack_wait or more is
still being worked on (`+WPI`, which restarts its ack_wait). A message is thus kept in progress
at most a third of ack_wait after its handler started, and every third after that: a loop stalled
for most of ack_wait still loses nothing, and a handler done in a moment costs no `+WPI`. A
process that dies stops saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from nats.aio.msg import Msg

log = logging.getLogger("certbus.inflight")


class InFlight:
    """The registry of messages held by this process's handlers, and its one heartbeat task."""

    def __init__(
        self, ack_wait_s: float, *, max_hold_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if ack_wait_s <= 0:
            raise ValueError(f"ack_wait must be positive, not {ack_wait_s} s")
        self.every_s = ack_wait_s / 3
        self._after_s = ack_wait_s / 6  # held this long, a message is due at the next beat
        # A handler that has not finished in this long is presumed stuck: its messages are no longer
        # kept in progress, so JetStream redelivers them (to another replica) after ack_wait.
        self._max_hold_s = max_hold_s
        self._monotonic = monotonic
        self._held: dict[int, tuple[Msg, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, msg: object) -> bool:
        held = self._held.get(id(msg))
        return held is not None and held[0] is msg

    def sequences(self, consumer: str) -> set[int]:
        """The stream sequences of the messages of durable `consumer` held here (being handled)."""
        return {msg.metadata.sequence.stream for msg, _ in self._held.values() if msg.metadata.consumer == consumer}

    @contextlib.contextmanager
    def holding(self, msg: Msg) -> Iterator[None]:
        """Keep `msg` in progress until the block ends (the caller acks or nacks it after that)."""
        self.hold(msg)
        try:
            yield
        finally:
            self.release(msg)

    def hold(self, msg: Msg) -> None:
        """Keep `msg` in progress from now until `release` (a batch consumer holds it from arrival)."""
        self._held[id(msg)] = (msg, self._monotonic())

    def release(self, msg: Msg) -> None:
        """Stop keeping `msg` in progress (it is settled, or handed back)."""
        held = self._held.get(id(msg))
        if held is not None and held[0] is msg:
            del self._held[id(msg)]

    async def beat(self) -> int:
        """Send `+WPI` for every message held for a sixth of ack_wait or more; returns how many went.

        A message settled while others are sent is skipped; a failure is logged, never raised.
        """
        now = self._monotonic()
        held = list(self._held.values())
        due = [msg for msg, since in held if self._after_s <= now - since < self._max_hold_s]
        stuck = sum(1 for _, since in held if now - since >= self._max_hold_s)
        if stuck:
            log.warning(
                "messages held too long are no longer kept in progress: they will be redelivered",
                extra={"stuck": stuck, "max_hold_s": self._max_hold_s},
            )
        sent, error = 0, None
        for msg in due:
            if msg not in self or msg.is_acked:
                continue  # settled while others were sent
            try:
                await msg.in_progress()
                sent += 1
            except Exception as exc:  # noqa: BLE001 - reported below, once per beat
                error = exc
        if error is not None:
            log.warning(
                "could not keep messages in progress: they may be redelivered",
                extra={"held": len(due), "sent": sent, "error": repr(error)},
            )
        return sent

    async def run(self) -> None:
        """Beat every third of ack_wait until cancelled; nothing that goes wrong stops it."""
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.beat()
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive anything
                log.warning("in-progress heartbeat failed, will retry", extra={"error": repr(exc)})

    def start(self) -> None:
        """Run the heartbeat in the background (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="in-flight-heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeat (after the handlers are done: what is still held is then redelivered)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
