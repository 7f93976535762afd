"""`audit verify`: recompute the hash chain, check every signed checkpoint, compare with the stream.

It names the first position where the archive departs from the log and how: an event `changed`,
`dropped`, `inserted` or `reordered`, the archive `truncated`, or a checkpoint whose signature is
invalid or whose hash the archive no longer reproduces.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import hashlib
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

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


Flag = Callable[[int, str, str], None]
_Seen = tuple[str, bytes]  # an event's subject and the SHA-256 of its bytes


async def verify(
    pool: asyncpg.Pool, js: JetStreamContext, *, stream: str, root: str, live_schema: str, public_key: str
) -> VerifyAnswer:
    """Verify the live archive against the stream (every message under `root`) and the signed checkpoints."""
    started = time.perf_counter()
    through = (await js.stream_info(stream)).state.last_seq
    await replay._let_live_catch_up(pool, live_schema, through)
    # The stream and the archive are read at once (each mostly waits for its server).
    reading = asyncio.ensure_future(_read_log(js, stream, root, through))
    walking = asyncio.ensure_future(_walk_archive(pool, through))
    try:  # the first failure (a stream that cannot be read) ends both, and is raised as itself
        await asyncio.wait({reading, walking}, return_when=asyncio.FIRST_EXCEPTION)
        for task in (reading, walking):
            if task.done() and task.exception() is not None:
                await task
        logged, checkpoints = await reading
        walked = await walking
    finally:
        reading.cancel()
        walking.cancel()
    archived, stored_mismatch = walked.archived, walked.mismatched
    pure_at = {cp.stream_seq: at for cp in checkpoints if (at := walked.pure_at(cp.stream_seq)) is not None}
    problems: dict[int, set[str]] = {}
    details: dict[tuple[int, str], str] = {}

    def flag(seq: int, kind: str, detail: str) -> None:
        problems.setdefault(seq, set()).add(kind)
        details.setdefault((seq, kind), detail)

    for seq in stored_mismatch:
        flag(seq, "changed", "the archived bytes no longer hash to the stored chain value")
    where = {seen: seq for seq, seen in logged.items()}
    for seq in sorted(set(logged) | set(archived)):
        _compare(seq, logged=logged, archived=archived, where=where, through=through, flag=flag)
    for cp in checkpoints:
        _check_checkpoint(cp, stream=stream, public_key=public_key, pure_at=pure_at, flag=flag)
    first = min(problems, default=None)
    listed = [
        VerifyProblem(stream_seq=seq, kind=kind, detail=details[(seq, kind)])
        for seq in sorted(problems)[:MAX_PROBLEMS]
        for kind in sorted(problems[seq], key=_PRIORITY.index)[:1]
    ]
    seconds = time.perf_counter() - started
    return VerifyAnswer(
        clean=first is None,
        first_seq=first,
        kind=listed[0].kind if listed else None,
        detail=listed[0].detail if listed else None,
        problems=listed,
        positions_with_problems=len(problems),
        stream_last_seq=through,
        archived_events=len(archived),
        checkpoints_checked=len(checkpoints),
        seconds=round(seconds, 3),
        rate_per_s=round(max(len(archived), through) / seconds, 1) if seconds else 0.0,
    )


async def _read_log(
    js: JetStreamContext, stream: str, root: str, through: int
) -> tuple[dict[int, _Seen], list[AuditCheckpointSigned]]:
    logged: dict[int, _Seen] = {}
    checkpoints: list[AuditCheckpointSigned] = []
    if through == 0:
        return logged, checkpoints
    suffix = f".{AuditCheckpointSigned.verb}"
    queue, reader = await replay.read_stream(js, stream, f"{root}.>", through)
    async for chunk in replay.read_all(queue, reader, through):
        for seq, subj, raw in chunk:
            logged[seq] = (subj, hashlib.sha256(raw).digest())
            if subj.endswith(suffix) and (checkpoint := _checkpoint(subj, root, raw)) is not None:
                checkpoints.append(checkpoint)
    return logged, checkpoints


def _checkpoint(subject: str, root: str, raw: bytes) -> AuditCheckpointSigned | None:
    """A checkpoint on its own subject; anything else (a forged or malformed one) is just a message here."""
    try:
        return AuditCheckpointSigned.model_validate(bind(subject, root, raw, (AuditCheckpointSigned,)))
    except (Unbound, ValidationError):
        return None


@dataclass
class _Walked:
    """The archive as `_walk_archive` found it: each event's digest by position, the positions whose
    stored hash the bytes do not reproduce, and the chain recomputed from genesis at every position
    (32 bytes each, in position order: checkpoints are found by the log read, which runs meanwhile)."""

    archived: dict[int, _Seen] = field(default_factory=dict)
    mismatched: list[int] = field(default_factory=list)
    seqs: array[int] = field(default_factory=lambda: array("q"))
    chain: bytearray = field(default_factory=bytearray)

    def pure_at(self, seq: int) -> str | None:
        """The recomputed chain's hash at `seq`, in hex; None if the archive has no event there."""
        at = bisect.bisect_left(self.seqs, seq)
        if at == len(self.seqs) or self.seqs[at] != seq:
            return None
        return self.chain[at * 32 : at * 32 + 32].hex()


async def _walk_archive(pool: asyncpg.Pool, through: int) -> _Walked:
    """Every archived event up to `through` (what the stream held when verification began: events
    archived since, such as audit's own next checkpoint, are for the next run), checked against the
    hashes stored with it and chained from genesis over the archived bytes."""
    walked = _Walked()
    archived, mismatched, seqs, chain = walked.archived, walked.mismatched, walked.seqs, walked.chain
    pure = local = domain.GENESIS
    async with pool.acquire() as conn:
        async for seq, subject, raw, stored in store.archive_rows(conn, through=through):
            archived[seq] = (subject, hashlib.sha256(raw).digest())
            chained = pure == local  # the usual case: the stored chain is the recomputed one
            pure = domain.link(pure, seq, subject, raw)
            if stored is not None:
                if (pure if chained else domain.link(local, seq, subject, raw)) != stored:
                    mismatched.append(seq)
                local = stored  # resynchronise, so one change is reported once
            seqs.append(seq)
            chain += pure
    return walked


def _compare(
    seq: int,
    *,
    logged: dict[int, _Seen],
    archived: dict[int, _Seen],
    where: dict[_Seen, int],
    through: int,
    flag: Flag,
) -> None:
    got, want = archived.get(seq), logged.get(seq)
    if got is None and want is not None:
        end = max(archived, default=0)
        if seq > end:
            flag(seq, "truncated", f"the archive ends at {end}; the stream goes on to {through}")
        else:
            flag(seq, "dropped", "the stream has this event; the archive does not")
        return
    if got is not None and want is None:
        flag(seq, "inserted", "the archive has an event here that the stream never had")
        return
    if got == want:
        return
    assert got is not None
    really = where.get(got)  # where the archived event is on the stream, if anywhere
    if really is None:
        if archived.get(seq + 1) == want:
            flag(seq, "inserted", "a forged event was inserted here: the stream's event follows it in the archive")
        else:
            flag(seq, "changed", "the archived event differs from the stream's")
    elif archived.get(really) == want:
        flag(seq, "reordered", f"this event and the one at {really} are swapped")
    elif really == seq + 1:
        flag(seq, "dropped", "an event was removed here: the archive holds the stream's next event instead")
    else:
        flag(seq, "reordered", f"this event is on the stream at {really}")


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
