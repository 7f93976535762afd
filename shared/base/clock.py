"""Time, injected so that tests can pin it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current UTC time."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (for tests)."""

    def __init__(self, at: datetime) -> None:
        self._at = at

    def now(self) -> datetime:
        """The pinned time."""
        return self._at

    def advance(self, delta: timedelta) -> None:
        """Move the pinned time forward."""
        self._at += delta
