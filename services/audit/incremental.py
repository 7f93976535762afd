"""The consistency checks kept up with the archive: one Checker fed, in log order, only what was chained since.

The scheduled check keeps one `IncrementalCheck` for the life of the process, so a run costs what was
archived since the last one, not the whole archive. Each batch is read in a snapshot together with the
chain's hash at the position the checker has reached: a different hash there (a replay adopted a
rebuilt archive, a lost database was replayed) means the checker saw another log, and it starts again
from the beginning. The checks run in the event loop, a batch at a time, yielding between batches so
that the consumers keep running; not in a thread, where the GIL would make the loop wait on it.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from services.audit import checks, domain, store

log = logging.getLogger("certbus.audit")
BATCH = 250  # messages read and checked between two turns of the event loop (~10 ms of checks on an idle core)


class IncrementalCheck:
    """A Checker and how far along the chained archive it has read."""

    def __init__(self, root: str, batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.root = root
        self.batch = batch
        self.checker = checks.Checker(root)
        self.through = 0  # the last position fed to the checker
        self._chain_hash: bytes | None = domain.GENESIS  # the chain's hash there, as it was read

    async def catch_up(self, pool: asyncpg.Pool) -> None:
        """Feed the checker every message chained since the last call, in batches, up to the chained head
        as it is now (what lies beyond it is not yet the log in order)."""
        async with pool.acquire() as conn:
            head, _, _ = await store.head(conn)
        while True:
            # A pool connection only while a batch is read: the consumers need theirs.
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                anchor = await store.hash_at(conn, self.through)
                rows = await store.rows_after(conn, self.through, through=head, limit=self.batch)
            if anchor != self._chain_hash:
                log.warning(
                    "the archive the scheduled check read has changed (a replay rebuilt it?): checking it again "
                    "from the beginning",
                    extra={"through": self.through},
                )
                self._restart()
                continue
            if not rows:
                return
            self._feed(rows)
            await asyncio.sleep(0)

    def take_findings(self) -> list[checks.Finding]:
        """The findings of the messages fed so far that `raised` has not yet been told of."""
        return list(self.checker.findings)

    def raised(self, found: list[checks.Finding]) -> None:
        """Forget `found` (from `take_findings`): they are recorded, and are never raised again."""
        del self.checker.findings[: len(found)]

    def _feed(self, rows: list[store.ArchivedRow]) -> None:
        try:
            for row in rows:
                self.checker.add(row.seq, row.subject, row.raw)
        except Exception:
            self._restart()  # a message the checker half took: its state is no longer the log's
            raise
        last = rows[-1]
        self.through, self._chain_hash = last.seq, last.hash

    def _restart(self) -> None:
        self.checker = checks.Checker(self.root)
        self.through, self._chain_hash = 0, domain.GENESIS
