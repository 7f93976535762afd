"""`audit verify`: recompute the hash chain, check every signed checkpoint, compare with the stream.

It names the first position where the archive departs from the log and how: an event `changed`,
`dropped`, `inserted` or `reordered`, the archive `truncated`, or a checkpoint whose signature is
invalid or whose hash the archive no longer reproduces.

It streams: the log and the archive are read side by side in position order, each a batch or two
ahead, so verification holds a few batches, never the whole log, and its memory stays flat however
long the log grows (held whole, the two sides took about 1 KB an event: some 3 GB for the three
million events of a million certificates). What needs more than the position at hand is found by
reads of its own, each bounded:

- the signed checkpoints are read first, on their own subject (a short read), so that the pass
  keeps the recomputed chain only at the positions they cover;
- where the archive's event differs from the stream's, whether it was changed, moved or inserted
  depends on where the stream holds the archived version. For the positions reported (the first
  MAX_PROBLEMS), a second read of the stream looks for just those events; it runs only when
  something differs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from nats.js import JetStreamContext
from pydantic import ValidationError

from services.audit import domain, replay, store
from shared.contract.binding import Unbound, bind
from shared.contract.events import AuditCheckpointSigned
from shared.contract.queries import VerifyAnswer, VerifyProblem

# When several things are wrong at one position, the most specific explanation wins.
_PRIORITY = ["reordered", "inserted", "dropped", "truncated", "changed", "checkpoint_mismatch", "checkpoint_invalid"]
MAX_PROBLEMS = 20
ARCHIVE_BATCH = 5000  # archived events read at a time (the next batch is read while one is checked)
_STORED = "the archived bytes no longer hash to the stored chain value"

Flag = Callable[[int, str, str], None]
_Seen = tuple[str, bytes]  # an event's subject and bytes (compared as they are: cheaper than hashing them)
_Logged = tuple[int, _Seen]  # a message on the stream: its position, what it is
_Archived = tuple[int, _Seen, bool]  # an archived event: its position, what it is, its stored hash wrong
T = TypeVar("T")


async def verify(
    pool: asyncpg.Pool, js: JetStreamContext, *, stream: str, root: str, live_schema: str, public_key: str
) -> VerifyAnswer:
    """Verify the live archive against the stream (every message under `root`) and the signed checkpoints."""
    started = time.perf_counter()
    through = (await js.stream_info(stream)).state.last_seq
    await replay._let_live_catch_up(pool, live_schema, through)
    checkpoints = await _log_checkpoints(js, stream, root, through)
    found = _Findings({cp.stream_seq for cp in checkpoints})
    walk = _Walk(found.covered)
    async with pool.acquire() as conn:
        logged, archived = _logged(js, stream, root, through), walk.rows(conn, through)
        try:  # the first failure (a stream that cannot be read) ends the pass, and is raised as itself
            await _pass(_Side(logged), _Side(archived), found, through)
        finally:
            await archived.aclose()
            await logged.aclose()
    if found.unresolved:
        await _resolve(pool, js, stream=stream, root=root, through=through, found=found)
    for cp in checkpoints:
        _check_checkpoint(cp, stream=stream, public_key=public_key, pure_at=walk.pure_at, flag=found.flag_checkpoint)
    listed = found.listed()
    first = listed[0] if listed else None
    seconds = time.perf_counter() - started
    return VerifyAnswer(
        clean=first is None,
        first_seq=first.stream_seq if first else None,
        kind=first.kind if first else None,
        detail=first.detail if first else None,
        problems=listed,
        positions_with_problems=found.positions,
        stream_last_seq=through,
        archived_events=walk.events,
        checkpoints_checked=len(checkpoints),
        seconds=round(seconds, 3),
        rate_per_s=round(max(walk.events, through) / seconds, 1) if seconds else 0.0,
    )


@dataclass(frozen=True)
class _Mismatch:
    """A position whose archived event (`got`) is not the stream's (`want`), with what the archive
    holds at the next position: how they differ is told once the stream position of `got` is known."""

    seq: int
    got: _Seen
    want: _Seen
    next_archived: _Seen | None


class _Findings:
    """The problems found, by position: every position counted, the first MAX_PROBLEMS kept with
    what is wrong there. The pass finds them in position order; checkpoint problems come after it."""

    def __init__(self, covered: set[int]) -> None:
        self.covered = covered  # the positions a checkpoint covers
        self.kinds: dict[int, set[str]] = {}
        self.details: dict[tuple[int, str], str] = {}
        self.positions = 0  # how many positions have a problem
        self.unresolved: list[_Mismatch] = []
        self._last = 0
        self._counted_covered: set[int] = set()

    def count(self, seq: int) -> bool:
        """Count a problem at the pass's position `seq` (once a position); whether it is reported."""
        if seq != self._last:
            self._last = seq
            self.positions += 1
            if seq in self.covered:
                self._counted_covered.add(seq)
        if seq in self.kinds or len(self.kinds) < MAX_PROBLEMS:
            self.kinds.setdefault(seq, set())
            return True
        return False

    def flag(self, seq: int, kind: str, detail: str) -> None:
        """A problem at the pass's position `seq` (its positions never go back)."""
        if self.count(seq):
            self.add(seq, kind, detail)

    def add(self, seq: int, kind: str, detail: str) -> None:
        self.kinds.setdefault(seq, set()).add(kind)
        self.details.setdefault((seq, kind), detail)

    def flag_checkpoint(self, seq: int, kind: str, detail: str) -> None:
        """A problem with the checkpoint that covers `seq` (after the pass, at any position)."""
        if seq not in self._counted_covered:
            self._counted_covered.add(seq)
            self.positions += 1
        self.add(seq, kind, detail)

    def listed(self) -> list[VerifyProblem]:
        """The first MAX_PROBLEMS positions, each with its most specific problem."""
        return [
            VerifyProblem(stream_seq=seq, kind=kind, detail=self.details[(seq, kind)])
            for seq in sorted(self.kinds)[:MAX_PROBLEMS]
            for kind in sorted(self.kinds[seq], key=_PRIORITY.index)[:1]
        ]


async def _log_checkpoints(js: JetStreamContext, stream: str, root: str, through: int) -> list[AuditCheckpointSigned]:
    """The signed checkpoints on the stream up to `through` (a read of their subject alone)."""
    checkpoints: list[AuditCheckpointSigned] = []
    if through == 0:
        return checkpoints
    queue, reader = await replay.read_stream(js, stream, AuditCheckpointSigned.filter(root), through, sparse=True)
    async for chunk in replay.read_all(queue, reader, through, whole=False):
        for _, subject, raw in chunk:
            if (checkpoint := _checkpoint(subject, root, raw)) is not None:
                checkpoints.append(checkpoint)
    return checkpoints


def _checkpoint(subject: str, root: str, raw: bytes) -> AuditCheckpointSigned | None:
    """A checkpoint on its own subject; anything else (a forged or malformed one) is just a message here."""
    try:
        return AuditCheckpointSigned.model_validate(bind(subject, root, raw, (AuditCheckpointSigned,)))
    except (Unbound, ValidationError):
        return None


async def _logged(js: JetStreamContext, stream: str, root: str, through: int) -> AsyncGenerator[list[_Logged], None]:
    """The stream up to `through`, in batches of (position, (subject, bytes))."""
    if through == 0:
        return
    queue, reader = await replay.read_stream(js, stream, f"{root}.>", through)
    async for chunk in replay.read_all(queue, reader, through):
        yield [(seq, (subject, raw)) for seq, subject, raw in chunk]


class _Walk:
    """The archive up to `through`, in batches, its chain recomputed from genesis over the archived
    bytes and checked against the hash stored with each event. The recomputed chain is kept at the
    positions `covered` (by checkpoints) only."""

    def __init__(self, covered: set[int]) -> None:
        self._covered = covered
        self.pure_at: dict[int, str] = {}  # the recomputed chain at a covered position, in hex
        self.events = 0

    async def rows(self, conn: asyncpg.Connection, through: int) -> AsyncGenerator[list[_Archived], None]:
        pure = local = domain.GENESIS
        fetching: asyncio.Future[list[store.ArchivedRow]] | None = asyncio.ensure_future(
            store.rows_after(conn, 0, through=through, limit=ARCHIVE_BATCH)
        )
        try:
            while fetching is not None and (rows := await fetching):
                fetching = None
                if len(rows) == ARCHIVE_BATCH:  # the next batch is read while this one is checked
                    fetching = asyncio.ensure_future(
                        store.rows_after(conn, rows[-1].seq, through=through, limit=ARCHIVE_BATCH)
                    )
                batch: list[_Archived] = []
                for seq, subject, raw, stored in rows:
                    chained = pure == local  # the usual case: the stored chain is the recomputed one
                    pure = domain.link(pure, seq, subject, raw)
                    wrong = False
                    if stored is not None:
                        wrong = (pure if chained else domain.link(local, seq, subject, raw)) != stored
                        local = stored  # resynchronise, so one change is reported once
                    if seq in self._covered:
                        self.pure_at[seq] = pure.hex()
                    batch.append((seq, (subject, raw), wrong))
                self.events += len(batch)
                yield batch
        finally:
            if fetching is not None:  # the connection goes back to the pool with no query running
                fetching.cancel()
                with contextlib.suppress(BaseException):
                    await fetching


class _Side(Generic[T]):
    """One side of the pass: its batches, read an item at a time (with a look at the next)."""

    def __init__(self, batches: AsyncIterator[list[T]]) -> None:
        self._batches = batches
        self._items: list[T] = []
        self._at = 0

    async def _more(self) -> bool:
        """Read the next batch after what is left; False at the end."""
        batch = await anext(self._batches, None)
        if batch is None:
            return False
        self._items, self._at = self._items[self._at :] + batch, 0
        return True

    async def head(self) -> T | None:
        """The item at hand; None once the side is read."""
        while self._at >= len(self._items):
            if not await self._more():
                return None
        return self._items[self._at]

    async def following(self) -> T | None:
        """The item after the one at hand, if any."""
        while self._at + 1 >= len(self._items):
            if not await self._more():
                return None
        return self._items[self._at + 1]

    def advance(self) -> None:
        self._at += 1


async def _pass(log: _Side[_Logged], archive: _Side[_Archived], found: _Findings, through: int) -> None:
    """The stream and the archive side by side, in position order: flag where they differ."""
    end = 0  # the last archived position passed
    while True:
        a, logged = await archive.head(), await log.head()
        if a is None and logged is None:
            return
        if a is not None and logged is not None and a[0] == logged[0] and a[1] == logged[1] and not a[2]:
            end = _agreeing(archive, log)  # the usual case: a run of agreeing positions in one loop
            continue
        if logged is None or (a is not None and a[0] < logged[0]):  # only the archive has this position
            assert a is not None
            seq, _, wrong = a
            if wrong:
                found.flag(seq, "changed", _STORED)
            found.flag(seq, "inserted", "the archive has an event here that the stream never had")
            end = seq
            archive.advance()
        elif a is None or logged[0] < a[0]:  # only the stream has it
            seq = logged[0]
            if a is None:
                found.flag(seq, "truncated", f"the archive ends at {end}; the stream goes on to {through}")
            else:
                found.flag(seq, "dropped", "the stream has this event; the archive does not")
            log.advance()
        else:
            seq, got, wrong = a
            if wrong:
                found.flag(seq, "changed", _STORED)
            if got != logged[1] and found.count(seq):
                after = await archive.following()
                following = after[1] if after is not None and after[0] == seq + 1 else None
                found.unresolved.append(_Mismatch(seq, got, logged[1], following))
            end = seq
            archive.advance()
            log.advance()


def _agreeing(archive: _Side[_Archived], log: _Side[_Logged]) -> int:
    """Pass both sides over the run of positions at hand where they agree (within the batches they
    hold; the first item of each is known to); the last position passed."""
    archived, logged = archive._items, log._items
    at_archive, at_log = archive._at, log._at
    while at_archive < len(archived) and at_log < len(logged):
        (seq, got, wrong), (position, want) = archived[at_archive], logged[at_log]
        if seq != position or wrong or got != want:
            break
        at_archive += 1
        at_log += 1
    archive._at, log._at = at_archive, at_log
    return archived[at_archive - 1][0]


async def _resolve(
    pool: asyncpg.Pool, js: JetStreamContext, *, stream: str, root: str, through: int, found: _Findings
) -> None:
    """Tell how each reported differing position differs: from where the stream holds the archived
    event (a second read of the stream, looking for those events only) and what the archive holds
    at that position."""
    wanted = {m.got for m in found.unresolved}
    where: dict[_Seen, int] = {}  # the last position the stream holds each at
    logged = _logged(js, stream, root, through)
    try:
        async for batch in logged:
            for seq, seen in batch:
                if seen in wanted:
                    where[seen] = seq
    finally:
        await logged.aclose()
    async with pool.acquire() as conn:
        rows = await store.rows_at(
            conn, sorted({where[m.got] for m in found.unresolved if m.got in where}), through=through
        )
    archived_at = {row.seq: (row.subject, row.raw) for row in rows}
    for m in found.unresolved:
        found.add(m.seq, *_how(m, where.get(m.got), archived_at))


def _how(m: _Mismatch, really: int | None, archived_at: dict[int, _Seen]) -> tuple[str, str]:
    """How the archive departs from the stream at `m.seq`, given where on the stream (`really`) the
    archived event is, if anywhere."""
    if really is None:
        if m.next_archived == m.want:
            return "inserted", "a forged event was inserted here: the stream's event follows it in the archive"
        return "changed", "the archived event differs from the stream's"
    if archived_at.get(really) == m.want:
        return "reordered", f"this event and the one at {really} are swapped"
    if really == m.seq + 1:
        return "dropped", "an event was removed here: the archive holds the stream's next event instead"
    return "reordered", f"this event is on the stream at {really}"


def _check_checkpoint(
    cp: AuditCheckpointSigned, *, stream: str, public_key: str, pure_at: dict[int, str], flag: Flag
) -> None:
    try:
        if cp.public_key != public_key:
            raise InvalidSignature
        key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(cp.public_key))
        key.verify(base64.b64decode(cp.signature), cp.message(stream))
    except (InvalidSignature, ValueError):
        flag(cp.stream_seq, "checkpoint_invalid", "a checkpoint's signature does not verify with audit's key")
        return
    if pure_at.get(cp.stream_seq) != cp.chain_hash:
        flag(
            cp.stream_seq,
            "checkpoint_mismatch",
            f"the archive up to here no longer hashes to the signed checkpoint {cp.chain_hash[:16]}...",
        )
