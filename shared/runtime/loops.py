"""Background loops that work when woken and on a timer, and outlive outages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("certbus.loops")


class WakeableLoop:
    """Runs `step` when woken (after `settle_s`, to batch what arrives together) and every `idle_s`.

    A failing step is logged and retried with exponential backoff (capped at `max_backoff_s`).
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        idle_s: float,
        settle_s: float = 0.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.name = name
        self._step = step
        self._idle_s = idle_s
        self._settle_s = settle_s
        self._max_backoff_s = max_backoff_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def wake(self) -> None:
        """Run the step soon."""
        self._wakeup.set()

    @property
    def woken(self) -> bool:
        """Whether a wake arrived since the running step started (it will run again soon)."""
        return self._wakeup.is_set()

    async def run(self) -> None:
        """Loop until cancelled."""
        backoff = 0.1
        while not self._stopped:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and the loop then never stops.
            try:
                async with asyncio.timeout(self._idle_s):
                    await self._wakeup.wait()
                await asyncio.sleep(self._settle_s)
            except TimeoutError:
                pass
            self._wakeup.clear()
            try:
                await self._step()
                backoff = 0.1
            except Exception as exc:  # noqa: BLE001 - the loop must outlive outages
                log.warning("background step failed, will retry", extra={"loop": self.name, "error": repr(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
                self._wakeup.set()

    def start(self) -> None:
        """Run in the background."""
        self._task = asyncio.create_task(self.run(), name=self.name)

    async def stop(self) -> None:
        """Stop the loop (waits for a running step to be cancelled)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
