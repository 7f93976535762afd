"""The outbox publishes each event once, under its stored id, and flags a pre-empted id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import nats
import pytest
from nats.js import JetStreamContext

from harness import Harness
from shared import db
from shared.events import ProvisionerRegistered
from shared.outbox import ALARM, OutboxRelay, enqueue
from shared.settings import CommonSettings
from shared.stream import ensure_stream


@pytest.fixture
async def relay(harness: Harness) -> AsyncIterator[tuple[OutboxRelay, asyncpg.Pool, JetStreamContext]]:
    pool = await db.create_pool(harness.database_url, "outboxtest")
    await db.migrate(pool, "outboxtest", [])
    nc = await nats.connect(harness.nats_url)
    js = nc.jetstream()
    await ensure_stream(js, CommonSettings(**harness.common))
    yield OutboxRelay(pool, js, harness.common["stream"], "tests"), pool, js
    await nc.close()
    await pool.close()


def event(n: int) -> ProvisionerRegistered:
    return ProvisionerRegistered(
        aggregate_id=f"p{n}",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        correlation_id="c",
        producer="operator",
        name=f"p{n}",
        public_key_pem="k",
        registered_by="tests",
    )


async def test_committed_entries_are_published_once_under_their_event_id(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        entries = [await enqueue(conn, event(i), harness.root) for i in range(3)]
    await outbox.publish(entries)
    assert await outbox.flush() == 0  # nothing left for the relay
    rows = await pool.fetch("SELECT event_id, published_at, stream_seq, alarm, attempts FROM outboxtest.outbox")
    assert all(r["published_at"] and r["stream_seq"] and r["alarm"] is None and r["attempts"] == 1 for r in rows)
    msgs = await harness.stream_messages(f"{harness.root}.provisioner.>")
    assert sorted(m.headers["Nats-Msg-Id"] for m in msgs) == sorted(str(r["event_id"]) for r in rows)


async def test_the_relay_publishes_what_the_fast_path_missed(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, _ = relay
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, event(7), harness.root)  # committed, then the process "crashed"
    assert await outbox.flush() == 1
    assert len(await harness.stream_messages(f"{harness.root}.provisioner.p7.>")) == 1


async def test_a_pre_empted_event_id_raises_an_alarm(relay, harness: Harness) -> None:  # type: ignore[no-untyped-def]
    outbox, pool, js = relay
    async with pool.acquire() as conn, conn.transaction():
        entry = await enqueue(conn, event(9), harness.root)
    # Someone who guessed the id publishes first: the real event is then dropped as a duplicate.
    await js.publish(entry.subject, b"{}", stream=harness.common["stream"], headers={"Nats-Msg-Id": entry.event_id})
    await outbox.publish([entry])
    assert await pool.fetchval("SELECT alarm FROM outboxtest.outbox WHERE id = $1", entry.id) == ALARM


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
    assert len(await harness.stream_messages(f"{harness.root}.provisioner.p11.>")) == 1
