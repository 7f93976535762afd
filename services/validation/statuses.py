"""OCSP statuses in memory, never staler than the request: what the responder answers from.

A replica keeps the statuses it has read from the database. Every change of a status is recorded in
`status_changes` in the transaction that makes it (whichever replica consumed the event); before
answering a request from memory, the replica waits for a poll of that table that began after the
request arrived, and the poll drops the changed serials. So a revocation committed before a request
is always seen, on every replica (revoked always wins), and one poll serves every request waiting
on it: one query per poll, not per request. Polls run back to back while requests wait, and every
`idle_poll_s` otherwise.

Rows are pruned once `keep` has passed since a poll's snapshot showed their transaction finished; a
replica whose last poll is older than half of that (its database was unreachable) forgets every
status it held before answering again, so no replica misses a change that was pruned.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from services.validation import domain, store
from services.validation.ocsp import UNKNOWN, Status

log = logging.getLogger("certbus.validation.statuses")
DEFAULT_MAX_ENTRIES = 1_000_000  # ~200 B each
DEFAULT_KEEP = timedelta(minutes=10)
DEFAULT_IDLE_POLL_S = 1.0
PRUNE_EVERY_S = 30.0


class StatusView:
    """Statuses by serial, each as (issuer CA id, status), kept current by polling `status_changes`."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        keep: timedelta = DEFAULT_KEEP,
        idle_poll_s: float = DEFAULT_IDLE_POLL_S,
        on_change: Callable[[str | None, str | None], None] | None = None,
    ) -> None:
        if max_entries < 1 or keep <= timedelta(0) or idle_poll_s <= 0:
            raise ValueError(
                f"need max_entries >= 1, keep > 0 and idle_poll_s > 0; got {max_entries}, {keep}, {idle_poll_s}"
            )
        self._pool = pool
        self.max_entries = max_entries
        self.keep = keep
        self.idle_poll_s = idle_poll_s
        self._on_change = on_change
        self._known: dict[str, tuple[str | None, Status]] = {}
        self._seen: store.Snapshot | None = None  # the snapshot of the last poll
        self._epoch = 0  # bumped by every poll that applied a change: a read older than it is not kept
        self._next: asyncio.Future[None] | None = None  # the poll the requests arriving now wait for
        self._polling: asyncio.Task[None] | None = None
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None  # the polls' own connection
        self._idle: asyncio.Task[None] | None = None
        self._last_poll = 0.0  # time.monotonic() of the last successful poll
        self._floors: collections.deque[tuple[float, int]] = collections.deque()  # (when, floor) of past polls
        self._floor_every = min(1.0, self.keep.total_seconds() / 10)
        self.polls = self.changes = self.reads = 0

    def __len__(self) -> int:
        return len(self._known)

    def start(self) -> None:
        """Poll in the background while no request does, and prune old changes."""
        self._idle = asyncio.create_task(self._idle_loop(), name="ocsp-status-poll")

    async def stop(self) -> None:
        """Stop the background polls."""
        for task in (self._idle, self._polling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await self._pool().release(conn, timeout=1)

    async def status(self, ca_id: str, serial: str) -> Status:
        """The status of `serial` as issued by CA `ca_id` (UNKNOWN if it never did), as of a moment
        after this call began. Raises what the database raises when it cannot be reached."""
        await self.fresh()
        known = self._known.get(serial)
        if known is None:
            epoch = self._epoch
            async with self._pool().acquire() as conn:
                row = await store.status(conn, serial)
            self.reads += 1
            if row is None:
                return UNKNOWN  # not kept: random serials must not fill memory
            record = domain.StatusRecord(row["serial"], row["status"], row["revoked_at"], row["reason"])
            known = (row["issuer_id"], Status.from_record(record))
            if epoch == self._epoch:  # no change was applied while reading: the row is still current
                self._keep(serial, known)
        issuer_id, status = known
        return status if issuer_id == ca_id else UNKNOWN

    async def fresh(self) -> None:
        """Return once a poll that began after this call has applied the changes it found."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._polling is None or self._polling.done():
                self._polling = asyncio.create_task(self._poll_while_waited(), name="ocsp-status-poll-now")
        await asyncio.shield(self._next)

    def _keep(self, serial: str, known: tuple[str | None, Status]) -> None:
        if len(self._known) >= self.max_entries:
            self._known.pop(next(iter(self._known)))  # the oldest read
        self._known[serial] = known

    async def _poll_while_waited(self) -> None:
        while (waiting := self._next) is not None:
            self._next = None  # requests arriving from now on wait for the next poll
            try:
                await self._poll()
            except Exception as exc:  # noqa: BLE001 - handed to the requests that waited
                _fail(waiting, exc)
                continue
            except BaseException:  # stopped: no request may wait for a poll that will not come
                stopped = RuntimeError("the status polls were stopped")
                _fail(waiting, stopped)
                if self._next is not None:
                    _fail(self._next, stopped)
                    self._next = None
                raise
            if not waiting.done():
                waiting.set_result(None)

    async def _poll(self) -> None:
        rows: list[asyncpg.Record] = []
        if self._conn is None:  # kept between polls: a release costs a round trip of its own
            self._conn = await self._pool().acquire()
        try:
            if self._seen is None:
                seen = await store.snapshot(self._conn)
            else:
                seen, rows = await store.status_changes_since(self._conn, self._seen)
        except BaseException:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await self._pool().release(conn, timeout=1)
            raise
        now = time.monotonic()
        if self._seen is None or now - self._last_poll > self.keep.total_seconds() / 2:
            # The first poll, or one after a gap in which changes may have been pruned unseen.
            if self._known:
                log.warning("status polls stopped for a while: forgetting every status held")
            self._known.clear()
            self._epoch += 1
        self._seen, self._last_poll = seen, now
        if not self._floors or now - self._floors[-1][0] >= self._floor_every:  # enough to prune by
            self._floors.append((now, seen.xmin))
        self.polls += 1
        if rows:
            self._epoch += 1
            self.changes += len(rows)
        for row in rows:
            self._apply(row["serial"], row["ca_id"])

    def _apply(self, serial: str | None, ca_id: str | None) -> None:
        if serial is None:  # every certificate of a CA (compromised)
            for key in [s for s, (issuer, _) in self._known.items() if issuer == ca_id]:
                del self._known[key]
        else:
            self._known.pop(serial, None)
        if self._on_change is not None:
            self._on_change(serial, ca_id)

    async def _idle_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(self.idle_poll_s)
            try:
                if time.monotonic() - self._last_poll >= self.idle_poll_s:
                    await self.fresh()
                if time.monotonic() - last_prune >= PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    await self.prune()
            except Exception as exc:  # noqa: BLE001 - the next request or round tries again
                log.warning("status poll failed", extra={"error": repr(exc)})

    async def prune(self) -> int:
        """Delete the changes whose transactions had finished `keep` ago (as this replica's polls saw);
        how many were deleted."""
        cutoff = time.monotonic() - self.keep.total_seconds()
        floor = None
        while self._floors and self._floors[0][0] <= cutoff:
            floor = self._floors.popleft()[1]
        if floor is None:
            return 0
        async with self._pool().acquire() as conn:
            pruned = await store.prune_status_changes(conn, floor)
        if pruned:
            log.info("pruned status changes", extra={"rows": pruned})
        return pruned


def _fail(future: asyncio.Future[None], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: a request that was cancelled meanwhile is no error
