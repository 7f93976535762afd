"""The outbox publishes each event once, under its stored id, and flags a pre-empted id (and only
that: its own earlier publish, answered `duplicate`, is not pre-emption). The relay publishes as a
service does: with the enrollment service's identity, events enrollment publishes, to a real
nats-server that deduplicates by `Nats-Msg-Id`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.errors
import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from harness import Harness
from shared.contract.events import CertificateExpired
from shared.runtime import db
from shared.runtime.outbox import ALARM, DuplicateUnconfirmed, OutboxEntry, OutboxRelay, enqueue


@pytest.fixture
async def relay(harness: Harness) -> AsyncIterator[tuple[OutboxRelay, asyncpg.Pool, JetStreamContext]]:
    pool = await db.create_pool(harness.database_url, "outboxtest")
    await db.migrate(pool, "outboxtest", [])
    nc = await harness.connect("enrollment")
    js = harness.js(nc, "enrollment")
    yield OutboxRelay(pool, js, harness.common["stream"], "enrollment"), pool, js
    await nc.close()
    await pool.close()


def event(n: int) -> CertificateExpired:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return CertificateExpired(
        aggregate_id=f"c{n}",
        occurred_at=at,
        correlation_id="c",
        producer="enrollment",
        serial=f"{n:x}",
        issuer_id="ca",
        not_after=at,
    )


async def land(js: JetStreamContext, harness: Harness, entry: OutboxEntry, payload: bytes | None = None) -> int:
    """Put a message under `entry`'s event id and subject on the log (its own payload unless one is
    given), as an attempt whose acknowledgement was lost would; returns its sequence."""
    ack = await js.publish(
        entry.subject,
        entry.payload if payload is None else payload,
        stream=harness.common["stream"],
        headers={"Nats-Msg-Id": entry.event_id},
    )
    return int(ack.seq)


def alarms_counted() -> float:
    return REGISTRY.get_sample_value("certbus_publish_alarms_total", {"service": "enrollment"}) or 0.0


async def row(pool: asyncpg.Pool, entry: OutboxEntry) -> Any:
    return await pool.fetchrow(
        "SELECT published_at, stream_seq, alarm, attempts, writer_pid FROM outboxtest.outbox WHERE id = $1", entry.id
    )


async def test_committed_entries_are_published_once_under_their_event_id(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        entries = [await enqueue(conn, event(i), harness.root) for i in range(3)]
    await outbox.publish(entries)
    assert await outbox.flush() == 0  # nothing left for the relay
    assert await pool.fetchval("SELECT count(*) FROM outboxtest.outbox") == 0  # on the log: deleted
    msgs = await harness.stream_messages(f"{harness.root}.cert.*.expired")
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(e.event_id for e in entries)


async def test_the_relay_publishes_what_the_fast_path_missed(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(7), harness.root)  # committed, then the process "crashed"
    assert await outbox.flush() == 1
    assert len(await harness.stream_messages(f"{harness.root}.cert.c7.>")) == 1
    assert await row(pool, entry) is None


async def test_a_pre_empted_event_id_raises_an_alarm(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(9), harness.root)
    # Another publisher on the log who guessed the id publishes first, on a subject of its own (the
    # log deduplicates ids across all its subjects): the real event is then dropped as a duplicate.
    nc = await harness.connect("audit")
    try:
        await harness.js(nc, "audit").publish(
            f"{harness.root}.finding.pre-empt-9.raised",
            b"{}",
            stream=harness.common["stream"],
            headers={"Nats-Msg-Id": entry.event_id},
        )
    finally:
        await nc.close()
    await outbox.publish([entry])
    assert await pool.fetchval("SELECT alarm FROM outboxtest.outbox WHERE id = $1", entry.id) == ALARM
    assert await harness.stream_messages(f"{harness.root}.cert.c9.>") == []


async def test_a_retry_after_a_lost_acknowledgement_is_not_an_alarm(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, js = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(11), harness.root)
    await js.publish(
        entry.subject, entry.payload, stream=harness.common["stream"], headers={"Nats-Msg-Id": entry.event_id}
    )  # landed, but the ack was lost...
    await pool.execute("UPDATE outboxtest.outbox SET attempts = 1 WHERE id = $1", entry.id)  # ...and counted
    assert await outbox.flush() == 1
    assert await row(pool, entry) is None  # published without an alarm: deleted
    assert len(await harness.stream_messages(f"{harness.root}.cert.c11.>")) == 1


@pytest.mark.parametrize(("path", "n"), [("fast path", 13), ("relay", 14)])
async def test_a_first_attempt_that_landed_but_was_not_acknowledged_is_published_without_an_alarm(  # type: ignore[no-untyped-def]
    relay, harness: Harness, caplog: pytest.LogCaptureFixture, path: str, n: int
) -> None:
    """NATS was killed (or the fast path and the relay raced): the first attempt is on the log but
    no attempt was counted, so the next publish is answered `duplicate` on a "first" attempt."""
    outbox, pool, js = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(n), harness.root)
    seq = await land(js, harness, entry)
    before = alarms_counted()
    with caplog.at_level(logging.INFO, logger="certbus.outbox"):
        if path == "fast path":
            await outbox.publish([entry])
        else:
            assert await outbox.flush() == 1
    assert await row(pool, entry) is None  # published without an alarm: deleted
    assert alarms_counted() == before
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r.__dict__.get("stream_seq") for r in caplog.records if "duplicate" in r.message] == [seq]
    assert len(await harness.stream_messages(f"{harness.root}.cert.c{n}.>")) == 1  # the copy already there


@pytest.mark.parametrize(("attempts", "n"), [(0, 15), (1, 16)])
async def test_another_payload_under_the_event_id_on_its_own_subject_raises_an_alarm(  # type: ignore[no-untyped-def]
    relay, harness: Harness, caplog: pytest.LogCaptureFixture, attempts: int, n: int
) -> None:
    """Someone who may publish the event's subject pre-empts its id with another event: an alarm,
    whether the answer came to a first attempt or to a retry."""
    outbox, pool, js = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(n), harness.root)
    await pool.execute("UPDATE outboxtest.outbox SET attempts = $2 WHERE id = $1", entry.id, attempts)
    forged = event(n).model_dump_json().encode()  # the same subject, another event id in the payload
    seq = await land(js, harness, entry, payload=forged)
    before = alarms_counted()
    with caplog.at_level(logging.INFO, logger="certbus.outbox"):
        assert await outbox.flush() == 1
    alarmed = await row(pool, entry)
    assert alarmed["alarm"] == ALARM and alarmed["stream_seq"] == seq
    assert alarms_counted() == before + 1
    assert [r.levelno for r in caplog.records if "pre-empted" in r.message] == [logging.ERROR]
    assert [m.data for m in await harness.stream_messages(f"{harness.root}.cert.c{n}.>")] == [forged]


async def test_a_duplicate_that_cannot_be_read_back_stays_unpublished_and_is_checked_again(  # type: ignore[no-untyped-def]
    relay, harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither accepted nor alarmed while the log's copy cannot be read; published once it can."""
    outbox, pool, js = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(17), harness.root)
    await land(js, harness, entry)

    async def unanswered(*args: object, **kwargs: object) -> None:
        raise nats.errors.TimeoutError

    monkeypatch.setattr(js, "get_msg", unanswered)
    before = alarms_counted()
    with pytest.raises(DuplicateUnconfirmed):
        await outbox.publish([entry])
    with pytest.raises(DuplicateUnconfirmed):
        await outbox.flush()
    pending = await row(pool, entry)
    assert pending["published_at"] is None and pending["alarm"] is None and pending["attempts"] == 2
    monkeypatch.undo()
    assert await outbox.flush() == 1
    assert await row(pool, entry) is None
    assert alarms_counted() == before


async def test_the_relay_leaves_a_row_to_the_fast_path_until_its_publish_has_timed_out(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        in_flight, given_up, crashed = [await enqueue(conn, event(n), harness.root) for n in (18, 19, 20)]
    await pool.execute("UPDATE outboxtest.outbox SET attempts = 1 WHERE id = $1", given_up.id)  # it failed, and said so
    await pool.execute("UPDATE outboxtest.outbox SET created_at = now() - interval '61 s' WHERE id = $1", crashed.id)
    assert await outbox.flush(unattempted_s=60) == 2
    assert (await row(pool, in_flight))["published_at"] is None
    assert await row(pool, given_up) is None  # published
    assert await row(pool, crashed) is None


async def test_the_relay_takes_over_at_once_a_row_whose_writer_is_gone(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    """A row written by a database session that has ended (its process was killed before its fast
    path published) is not left for the fast path's publish to time out: the relay publishes it as
    soon as it is stale, while a row whose writer lives is still left alone."""
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        alive = await enqueue(conn, event(21), harness.root)
    gone_conn = await asyncpg.connect(harness.database_url, server_settings={"search_path": "outboxtest"})
    gone_pid = await gone_conn.fetchval("SELECT pg_backend_pid()")
    async with gone_conn.transaction():
        gone = await enqueue(gone_conn, event(22), harness.root)
    await gone_conn.close()
    assert (await row(pool, gone))["writer_pid"] == gone_pid
    for _ in range(100):  # the server ends the session just after the socket closes
        if not await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", gone_pid):
            break
        await asyncio.sleep(0.05)
    assert await outbox.flush(unattempted_s=60) == 1
    assert (await row(pool, alive))["published_at"] is None
    assert await row(pool, gone) is None  # taken over and published
    assert len(await harness.stream_messages(f"{harness.root}.cert.c22.>")) == 1


async def test_drain_publishes_everything_pending_a_batch_at_a_time(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    """What a transaction enqueued without handing back (a CA compromise's revocations) is published
    by `drain`, in batches, each publish under its own event id, once."""
    outbox, pool, _ = relay
    outbox._batch = 16  # several batches, and a partial last one
    async with pool.acquire() as conn, conn.transaction():
        entries = [await enqueue(conn, event(100 + i), harness.root) for i in range(40)]
    assert await outbox.drain() == 40
    assert await outbox.drain() == 0
    assert await pool.fetchval("SELECT count(*) FROM outboxtest.outbox") == 0
    msgs = await harness.stream_messages(f"{harness.root}.cert.*.expired")
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(e.event_id for e in entries)


async def _index_entries_read(pool: asyncpg.Pool) -> int:
    """Index entries the outbox's indexes have returned to scans so far (read once this session's
    and the relay's statistics are flushed)."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        return int(
            await conn.fetchval(
                "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes "
                "WHERE schemaname = 'outboxtest' AND relname = 'outbox'"
            )
        )


async def test_each_batch_of_a_drain_starts_after_the_last_so_published_rows_are_not_read_again(  # type: ignore[no-untyped-def]
    relay, harness: Harness
) -> None:
    """While a snapshot older than the publishing is open (any long transaction in the database), the
    rows each batch deleted stay in the index, not yet dead to everyone. A batch that started again
    from the lowest id read them all again: a CA compromise's million revocations took 13 minutes to
    drain instead of one. Each batch starts after the last id the one before took."""
    outbox, pool, _ = relay
    outbox._batch = 20
    async with pool.acquire() as conn, conn.transaction():
        for i in range(400):
            await enqueue(conn, event(1000 + i), harness.root)
    old = await pool.acquire()
    snapshot = old.transaction(isolation="repeatable_read")
    await snapshot.start()
    try:
        await old.fetchval("SELECT count(*) FROM outboxtest.outbox")  # takes the snapshot
        before = await _index_entries_read(pool)
        assert await outbox.drain() == 400
        await asyncio.sleep(1.1)  # statistics are flushed at most once a second per session
        read = await _index_entries_read(pool) - before
    finally:
        await snapshot.rollback()
        await pool.release(old)
    # 2,500 here: each batch's selection reads its own 20 rows, and its delete probes the index for
    # them. From the lowest id each time, the selections alone read 20 + 40 + ... + 400 = 4,200 more
    # (6,700 in all).
    assert 400 <= read < 4000, read
