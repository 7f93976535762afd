"""The one clock tests give to services and agents in place of the system clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta


class TestClock:
    """A `shared.base.clock.Clock` that a test moves: pinned at `at` (it stands still), or, without
    `at`, the real time plus an offset (it keeps running, for loops that wait on it: backoff, retries).

    `advance` moves it forward either way; `pin` fixes it at an instant; `run_from` makes it run on
    from an instant. A service started with it (`Harness.clocks`) sees no real time pass that the
    test did not let pass, and `reads_by` tells when a service's loop has looked at the time."""

    __test__ = False  # not a test class, whatever pytest makes of the name

    def __init__(self, at: datetime | None = None) -> None:
        self._pinned = at
        self._offset = timedelta(0)
        self._reads: Counter[str] = Counter()

    def now(self) -> datetime:
        """The time the test set, timezone-aware UTC."""
        with contextlib.suppress(RuntimeError):  # read outside an event loop
            if (task := asyncio.current_task()) is not None:
                self._reads[task.get_name()] += 1
        if self._pinned is not None:
            return self._pinned
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Move the time forward by `delta` (pinned or running)."""
        if self._pinned is not None:
            self._pinned += delta
        else:
            self._offset += delta

    def pin(self, at: datetime) -> None:
        """Stand still at `at`."""
        self._pinned = at

    def run_from(self, at: datetime) -> None:
        """Run on at the real pace from `at`."""
        self._pinned = None
        self._offset = at - datetime.now(UTC)

    def reads_by(self, task: str) -> int:
        """How many times the asyncio task named `task` (a service's background loop) read the time."""
        return self._reads[task]
