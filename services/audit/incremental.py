"""The consistency checks kept up with the archive: one Checker fed, in log order, only what was chained since.

The scheduled check keeps one `IncrementalCheck` for the life of the process, so a run costs what was
archived since the last one, not the whole archive. What the Checker knows of each certificate is kept
in PostgreSQL (`services.audit.check_store`), not in the process: each batch is read in one transaction
with the chain's hash at the position the checker has reached and the stored facts its events name,
checked, and its facts stored back with the new position before the transaction commits; the
scheduled check records the batch's findings in that transaction too (its `FindingSink`), and, when
it changed, what the Checker knows besides its facts (its CAs, profiles and operators: a few per CA,
`Checker.state`). So another process (a restart, the replica that takes over the checks), or this one
after a failed batch, goes on from where the stored state stands, and finds nothing twice and misses
nothing. A different hash at the stored position (a replay adopted a rebuilt archive, a lost database
was replayed) means the checks saw another log: they empty their tables and start from the beginning.

The checks run in the event loop, a batch at a time, yielding between batches so that the consumers
keep running; not in a thread, where the GIL would make the loop wait on it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg

from services.audit import check_store, checks, domain, store
from shared.runtime.outbox import OutboxEntry

log = logging.getLogger("certbus.audit")


class FindingSink(Protocol):
    """Where the scheduled check's findings go as it finds them: recorded in each batch's transaction
    (so a run that goes on from the stored state misses none), published once it commits."""

    async def record(self, conn: asyncpg.Connection, found: list[checks.Finding]) -> list[OutboxEntry]: ...

    async def publish(self, entries: list[OutboxEntry]) -> None: ...


BATCH = 250  # messages read and checked between two turns of the event loop (~10 ms of checks on an idle core)


class IncrementalCheck:
    """A Checker, its facts in `tables`, and how far along the chained archive it has read."""

    def __init__(
        self,
        root: str,
        batch: int = BATCH,
        tables: check_store.CheckStore = check_store.SCHEDULED,
        sink: FindingSink | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        self.root = root
        self.batch = batch
        self.tables = tables
        self.sink = sink
        self.checker = checks.Checker(root)
        self.run = uuid.uuid4()
        self.through = 0  # the last position fed to the checker
        self._chain_hash = domain.GENESIS  # the chain's hash there, as it was read

    async def catch_up(self, db: asyncpg.Pool | asyncpg.Connection, through: int | None = None) -> None:
        """Feed the checker every message chained since the last call, in batches, up to the chained head
        as it is now (what lies beyond it is not yet the log in order), or up to `through` if that is
        before it. `db` is a pool (a connection is taken for each batch: the consumers need theirs) or
        the connection whose temporary tables `tables` names."""
        async with _connection(db) as conn:
            head, _, _ = await store.head(conn)
        if through is not None:
            head = min(head, through)
        while True:
            try:
                async with _connection(db) as conn:
                    more = await self._batch(conn, head)
            except BaseException:
                self._restart()  # the batch was rolled back, and the checker may have taken half of it
                raise
            if not more:
                return
            await asyncio.sleep(0)

    async def _batch(self, conn: asyncpg.Connection, head: int) -> bool:
        """Check the next batch up to `head`, in one transaction; whether there may be more."""
        entries: list[OutboxEntry] = []
        async with conn.transaction(isolation="repeatable_read"):
            cursor = await self.tables.cursor(conn)
            if (cursor.run, cursor.through) != (self.run, self.through):
                await self._take_over(conn, cursor)
            anchor = await store.hash_at(conn, self.through)
            if anchor != self._chain_hash:
                log.warning(
                    "the archive the scheduled check read has changed (a replay rebuilt it?): checking it again "
                    "from the beginning",
                    extra={"through": self.through},
                )
                self._restart()
                await self.tables.claim(conn, self.run)
                return True
            rows = await store.rows_after(conn, self.through, through=head, limit=self.batch)
            if not rows:
                return False
            checker = self.checker
            readings = [checker.read(row.subject, row.raw) for row in rows]
            checker.facts, loaded = await self.tables.load(conn, checks.wanted(readings))
            for row, reading in zip(rows, readings, strict=True):
                checker.apply(row.seq, reading)
            revoked = [
                check_store.StoredRevocation(issuer, r, *checker.crl_of(issuer, r.serial))
                for issuer, rs in checker.revocations.items()
                for r in rs
            ]
            await self.tables.save(conn, checker.facts, loaded, revoked)
            if self.sink is not None and checker.findings:
                entries = await self.sink.record(conn, list(checker.findings))
            last = rows[-1]
            assert last.hash is not None  # read up to the chained head
            # Only a run that records its findings as it goes leaves a state to go on from: another
            # run starting from it must not miss any finding before it.
            state = checker.state() if checker.changed and self.sink is not None else None
            await self.tables.advance(conn, last.seq, last.hash, state)
        checker.facts, checker.revocations = checks.Facts(), {}  # stored: what the next batch needs is loaded
        checker.changed = False
        if self.sink is not None:
            checker.findings.clear()  # recorded
        self.through, self._chain_hash = last.seq, last.hash
        if entries and self.sink is not None:
            await self.sink.publish(entries)
        return True

    async def _take_over(self, conn: asyncpg.Connection, cursor: check_store.Cursor) -> None:
        """The stored facts are not where this checker left them (another process's run, or this one's
        before a batch failed): go on from where they stand if that run stored its state there and the
        archive there is as it read it, else empty them and start from the beginning."""
        if cursor.through and cursor.state is not None and await store.hash_at(conn, cursor.through) == cursor.hash:
            self.checker = checks.Checker.restored(self.root, cursor.state)
            self.run = uuid.uuid4()
            self.through, self._chain_hash = cursor.through, cursor.hash
            await self.tables.take_over(conn, self.run)
            log.info("the consistency checks go on from where the stored state stands", extra={"through": self.through})
            return
        if self.through or cursor.through:
            log.warning("the consistency checks' stored state cannot be gone on from: checking from the beginning")
        self._restart()
        await self.tables.claim(conn, self.run)

    async def crl_findings(
        self,
        db: asyncpg.Pool | asyncpg.Connection,
        fetch: Callable[[str], Awaitable[bytes | None]],
        now: datetime,
        grace: timedelta,
    ) -> list[checks.Finding]:
        """Judge each latest CRL that a stored revocation must be in (`fetch`: its DER by `crl_key`, None
        if the object store has none) against the stored revocations, a page at a time."""
        found: list[checks.Finding] = []
        async with _connection(db) as conn:
            due = await self.tables.due_crls(conn)
        for key, issuer, shard in due:
            judge = self.checker.crl_judge(key, issuer, shard, await fetch(key), now, grace)
            if isinstance(judge, checks.Finding):
                found.append(judge)  # the CRL itself cannot be trusted
                continue
            after = 0
            while True:
                async with _connection(db) as conn:
                    page = await self.tables.revocations(conn, key, after)
                if not page:
                    break
                found += judge.judge(page)
                after = page[-1].stream_seq
        return found

    def take_findings(self) -> list[checks.Finding]:
        """The findings of the messages fed so far that `raised` has not yet been told of (with a sink,
        none: each batch's are recorded with it)."""
        return list(self.checker.findings)

    def raised(self, found: list[checks.Finding]) -> None:
        """Forget `found` (from `take_findings`): they are recorded, and are never raised again."""
        del self.checker.findings[: len(found)]

    def _restart(self) -> None:
        """A new checker at the beginning of the log: a run of its own, whose facts are stored from scratch."""
        self.checker = checks.Checker(self.root)
        self.run = uuid.uuid4()
        self.through, self._chain_hash = 0, domain.GENESIS


@asynccontextmanager
async def _connection(db: asyncpg.Pool | asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db
