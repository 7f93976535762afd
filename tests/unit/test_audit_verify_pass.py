"""`audit verify`'s pass over the stream and the archive side by side, without NATS or PostgreSQL:
what it flags at each position, that it counts every position with a problem while keeping the
first MAX_PROBLEMS, and that it reads both sides batch by batch (never the whole of either)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

from services.audit import verify
from services.audit.verify import MAX_PROBLEMS, _Findings, _Mismatch, _pass, _Side

T = TypeVar("T")


def seen(n: int, body: str = "") -> tuple[str, bytes]:
    return f"pki.cert.c{n}.issued", f"{n}{body}".encode()


async def batches(items: list[T], size: int, taken: list[int]) -> AsyncIterator[list[T]]:
    for at in range(0, len(items), size):
        taken.append(at)
        yield items[at : at + size]


async def run(
    logged: list[verify._Logged], archived: list[verify._Archived], covered: set[int] | None = None, size: int = 3
) -> _Findings:
    found = _Findings(covered or set())
    await _pass(_Side(batches(logged, size, [])), _Side(batches(archived, size, [])), found, through=len(logged))
    return found


async def test_each_kind_of_departure_is_flagged_at_its_position() -> None:
    logged = [(n, seen(n)) for n in range(1, 11)]
    archived = [
        (1, seen(1), True),  # its stored hash no longer matches its bytes
        (2, seen(2), False),  # 3 is missing
        (4, seen(4), False),
        (5, seen(5, "changed"), False),  # not the stream's 5
        (6, seen(6), False),
        (7, seen(7), False),
        (8, seen(8), False),  # 9 and 10 missing, and the archive goes on:
        (11, seen(11), False),  # an event the stream never had
    ]
    found = await run(logged, archived)
    kinds = {seq: sorted(k) for seq, k in found.kinds.items()}
    assert kinds == {1: ["changed"], 3: ["dropped"], 5: [], 9: ["dropped"], 10: ["dropped"], 11: ["inserted"]}
    # 5 waits for the stream position of its archived version; what follows it is known already.
    assert found.unresolved == [_Mismatch(5, seen(5, "changed"), seen(5), seen(6))]
    assert found.positions == 6


async def test_the_end_of_the_archive_before_the_stream_s_is_a_truncation() -> None:
    logged = [(n, seen(n)) for n in range(1, 8)]
    found = await run(logged, [(n, seen(n), False) for n in range(1, 5)])
    assert {seq: sorted(k) for seq, k in found.kinds.items()} == {5: ["truncated"], 6: ["truncated"], 7: ["truncated"]}
    assert found.details[(5, "truncated")] == "the archive ends at 4; the stream goes on to 7"


async def test_every_position_is_counted_and_the_first_max_problems_are_kept() -> None:
    n = 3 * MAX_PROBLEMS
    logged = [(i, seen(i)) for i in range(1, n + 1)]
    archived = [(i, seen(i, "x"), False) for i in range(1, n + 1)]  # every event differs
    found = await run(logged, archived, covered={2, n})
    assert found.positions == n
    assert sorted(found.kinds) == list(range(1, MAX_PROBLEMS + 1))
    assert [m.seq for m in found.unresolved] == list(range(1, MAX_PROBLEMS + 1))
    # A checkpoint's problem where the pass found one already is not a new position; elsewhere it is.
    found.flag_checkpoint(2, "checkpoint_mismatch", "x")
    found.flag_checkpoint(n, "checkpoint_mismatch", "x")
    assert found.positions == n
    found2 = await run(logged[:5], [(i, seen(i), False) for i in range(1, 6)], covered={3})
    found2.flag_checkpoint(3, "checkpoint_invalid", "bad signature")
    assert (found2.positions, [p.kind for p in found2.listed()]) == (1, ["checkpoint_invalid"])


async def test_both_sides_are_read_a_batch_at_a_time() -> None:
    logged = [(i, seen(i)) for i in range(1, 101)]
    archived = [(i, seen(i), False) for i in range(1, 101)]
    log_taken: list[int] = []
    archive_taken: list[int] = []
    found = _Findings(set())
    log_side = _Side(batches(logged, 10, log_taken))
    await _pass(log_side, _Side(batches(archived, 10, archive_taken)), found, through=100)
    assert found.positions == 0 and not found.kinds
    assert log_taken == archive_taken == list(range(0, 100, 10))
    assert len(log_side._items) <= 10  # what it holds is a batch, not what it has read


def test_how_a_differing_event_differs_follows_where_the_stream_holds_it() -> None:
    m = _Mismatch(7, got=seen(8), want=seen(7), next_archived=seen(9))
    assert verify._how(m, 8, {8: seen(7)})[0] == "reordered"  # swapped with 8
    assert verify._how(m, 8, {8: seen(9)})[0] == "dropped"  # 7 is gone: 8 moved up
    assert verify._how(m, 40, {40: seen(40)})[0] == "reordered"  # on the stream elsewhere
    assert verify._how(_Mismatch(7, seen(99), seen(7), seen(7)), None, {})[0] == "inserted"
    assert verify._how(_Mismatch(7, seen(99), seen(7), seen(8)), None, {})[0] == "changed"
