"""The audit archive's hash chain is the same whatever order and grouping the events arrive in."""

from __future__ import annotations

import itertools
from pathlib import Path

import asyncpg
import pytest

from services.audit import domain, store

MIGRATIONS = Path(store.__file__).parent / "migrations"
EVENTS = [(seq, f"pki.cert.c{seq}.requested", f'{{"n": {seq}}}'.encode()) for seq in range(1, 7)]


def expected_head() -> bytes:
    current = domain.GENESIS
    for seq, subject, raw in EVENTS:
        current = domain.link(current, seq, subject, raw)
    return current


@pytest.fixture
def pool(audit_archive: asyncpg.Pool) -> asyncpg.Pool:
    return audit_archive


async def head(pool: asyncpg.Pool) -> tuple[int, bytes]:
    row = await pool.fetchrow("SELECT seq, hash FROM chain_head")
    return row["seq"], bytes(row["hash"])


@pytest.mark.parametrize(
    "batches",
    [
        [EVENTS],
        [[e] for e in EVENTS],
        [[EVENTS[1]], [EVENTS[0]], EVENTS[2:]],  # a redelivery overtakes its predecessor
        [EVENTS[3:], EVENTS[:3]],  # a whole later group first
        [EVENTS[:4], EVENTS[2:]],  # overlapping redelivery
    ],
    ids=["one-group", "one-by-one", "swapped-pair", "later-group-first", "overlap"],
)
async def test_any_arrival_order_gives_the_same_chain(pool: asyncpg.Pool, batches: list) -> None:  # type: ignore[type-arg]
    for batch in batches:
        async with pool.acquire() as conn, conn.transaction():
            await store.archive(conn, batch, "pki")
    assert await head(pool) == (len(EVENTS), expected_head())
    # The events the chain covers, kept as it advances (what a checkpoint names), whatever the order.
    async with pool.acquire() as conn:
        assert await store.checkpoint_due(conn, "AuditCheckpointSigned") == (len(EVENTS), expected_head(), len(EVENTS))
    hashes = [bytes(r["hash"]) for r in await pool.fetch("SELECT hash FROM audit.archive ORDER BY stream_seq")]
    running = list(itertools.accumulate(EVENTS, lambda h, e: domain.link(h, *e), initial=domain.GENESIS))[1:]
    assert hashes == running


async def test_a_gap_holds_the_chain_until_it_is_filled(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.archive(conn, [EVENTS[0], EVENTS[2]], "pki")
    assert (await head(pool))[0] == 1
    async with pool.acquire() as conn, conn.transaction():
        await store.archive(conn, [EVENTS[1]], "pki")
    assert (await head(pool))[0] == 3


async def test_the_checks_read_only_up_to_the_chained_head(pool: asyncpg.Pool) -> None:
    # Replicas archive groups concurrently: an issuance may be archived before its approval.
    # What lies past the gap is not yet the log in order, so the checks do not read it yet.
    async with pool.acquire() as conn, conn.transaction():
        await store.archive(conn, [EVENTS[0], EVENTS[2]], "pki")
    async with pool.acquire() as conn:
        through, _, _ = await store.head(conn)
        chained = [row.seq async for row in store.archive_rows(conn, through=through)]
        everything = [row.seq async for row in store.archive_rows(conn)]
    assert (chained, everything) == ([1], [1, 3])
