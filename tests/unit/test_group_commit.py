"""GroupCommit: events that arrive together share one transaction; a bad one fails alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from shared.runtime.consumer import Delivery, EventRejected, GroupCommit
from shared.runtime.outbox import OutboxEntry


def at(seq: int) -> Delivery:
    return Delivery(seq, datetime(2026, 1, 1, tzinfo=UTC))


class Recorder:
    def __init__(self, bad: set[str] | None = None, error: Exception | None = None) -> None:
        self.groups: list[list[tuple[str, int]]] = []
        self.published: list[list[OutboxEntry]] = []
        self.bad = bad or set()
        self.error = error

    async def process(self, items: list[tuple[str, Delivery]]) -> list[OutboxEntry]:
        self.groups.append([(item, d.seq) for item, d in items])
        if self.error is not None:
            raise self.error
        if any(item in self.bad for item, _ in items):
            raise EventRejected("bad item")
        return [OutboxEntry(d.seq, f"id-{item}", f"s.{item}", b"") for item, d in items]

    async def publish(self, entries: list[OutboxEntry]) -> None:
        self.published.append(entries)


async def test_items_submitted_together_are_processed_as_one_group_in_stream_order() -> None:
    rec = Recorder()
    commit: GroupCommit[str] = GroupCommit(rec.process, rec.publish)
    await asyncio.gather(commit.submit("c", at(3)), commit.submit("a", at(1)), commit.submit("b", at(2)))
    assert rec.groups == [[("a", 1), ("b", 2), ("c", 3)]]
    assert [e.id for e in rec.published[0]] == [1, 2, 3]


async def test_a_failing_group_is_retried_one_by_one_and_only_the_bad_item_fails() -> None:
    rec = Recorder(bad={"b"})
    commit: GroupCommit[str] = GroupCommit(rec.process, rec.publish)
    results = await asyncio.gather(
        commit.submit("a", at(1)), commit.submit("b", at(2)), commit.submit("c", at(3)), return_exceptions=True
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], EventRejected)
    assert rec.groups[1:] == [[("a", 1)], [("b", 2)], [("c", 3)]]


async def test_an_outage_fails_the_whole_group_without_one_by_one_retries() -> None:
    rec = Recorder(error=ConnectionRefusedError("database down"))
    commit: GroupCommit[str] = GroupCommit(rec.process, rec.publish)
    results = await asyncio.gather(commit.submit("a", at(1)), commit.submit("b", at(2)), return_exceptions=True)
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    assert len(rec.groups) == 1
    assert rec.published == []


async def test_items_arriving_during_a_commit_form_the_next_group() -> None:
    release = asyncio.Event()
    groups: list[list[str]] = []

    async def slow(items: list[tuple[str, Delivery]]) -> list[OutboxEntry]:
        groups.append([i for i, _ in items])
        if len(groups) == 1:
            await release.wait()
        return []

    async def publish(_: list[OutboxEntry]) -> None:
        return None

    commit: GroupCommit[str] = GroupCommit(slow, publish)
    first = asyncio.create_task(commit.submit("a", at(1)))
    await asyncio.sleep(0.01)
    later = [asyncio.create_task(commit.submit(x, at(n))) for n, x in enumerate("bc", start=2)]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, *later)
    assert groups == [["a"], ["b", "c"]]


async def test_cancelling_the_flush_releases_every_waiting_handler() -> None:
    started = asyncio.Event()

    async def hang(items: list[tuple[str, Delivery]]) -> list[OutboxEntry]:
        started.set()
        await asyncio.Event().wait()  # until cancelled
        return []

    async def publish(_: list[OutboxEntry]) -> None:
        return None

    commit: GroupCommit[str] = GroupCommit(hang, publish)
    waiting = asyncio.create_task(commit.submit("a", at(1)))
    await started.wait()
    assert commit._flusher is not None
    commit._flusher.cancel()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, timeout=1)


async def test_an_event_is_not_applied_before_an_earlier_one_whose_handler_is_slow_to_submit() -> None:
    """In a rebuild a revocation request and the issuance it names come in one pull: if the issuance's
    handler reaches `submit` late, the request waits for it rather than being decided first."""
    rec = Recorder()
    held = {1, 2, 3}  # the messages of this consumer the process holds (its handlers are running)

    async def late(item: str, seq: int, after_s: float) -> None:
        await asyncio.sleep(after_s)
        try:
            await commit.submit(item, at(seq))
        finally:
            held.discard(seq)

    commit: GroupCommit[str] = GroupCommit(rec.process, rec.publish, held=lambda: set(held))
    await asyncio.wait_for(asyncio.gather(late("a", 1, 0), late("c", 3, 0), late("b", 2, 0.05)), timeout=5)
    applied = [seq for group in rec.groups for _, seq in group]
    assert applied == [1, 2, 3], rec.groups


async def test_a_held_message_that_never_submits_does_not_hold_back_the_ones_after_it_once_let_go() -> None:
    """A message parked before its handler ran is let go without submitting: the rest then apply."""
    rec = Recorder()
    held = {1, 2}
    commit: GroupCommit[str] = GroupCommit(rec.process, rec.publish, held=lambda: set(held))
    waiting = asyncio.create_task(commit.submit("b", at(2)))
    await asyncio.sleep(0.05)
    assert rec.groups == [], "applied before the earlier message was settled"
    held.discard(1)  # parked by the middleware: it never reaches submit
    await asyncio.wait_for(waiting, timeout=5)
    assert rec.groups == [[("b", 2)]]
