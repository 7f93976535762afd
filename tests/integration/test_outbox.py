"""The outbox publishes each event once, under its stored id, and flags a pre-empted id. The relay
publishes as a service does: with the enrollment service's identity, events enrollment publishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from nats.js import JetStreamContext

from harness import Harness
from shared.contract.events import CertificateExpired
from shared.runtime import db
from shared.runtime.outbox import ALARM, OutboxRelay, enqueue


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


async def test_committed_entries_are_published_once_under_their_event_id(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        entries = [await enqueue(conn, event(i), harness.root) for i in range(3)]
    await outbox.publish(entries)
    assert await outbox.flush() == 0  # nothing left for the relay
    rows = await pool.fetch("SELECT event_id, published_at, stream_seq, alarm, attempts FROM outboxtest.outbox")
    assert all(r["published_at"] and r["stream_seq"] and r["alarm"] is None and r["attempts"] == 1 for r in rows)
    msgs = await harness.stream_messages(f"{harness.root}.cert.*.expired")
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(str(r["event_id"]) for r in rows)


async def test_the_relay_publishes_what_the_fast_path_missed(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, event(7), harness.root)  # committed, then the process "crashed"
    assert await outbox.flush() == 1
    assert len(await harness.stream_messages(f"{harness.root}.cert.c7.>")) == 1


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
    assert await pool.fetchval("SELECT alarm FROM outboxtest.outbox WHERE id = $1", entry.id) is None
    assert len(await harness.stream_messages(f"{harness.root}.cert.c11.>")) == 1
