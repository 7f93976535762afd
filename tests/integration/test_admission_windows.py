"""Admission's rate windows in PostgreSQL: created or locked in one statement, swept once a minute."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared.runtime import db
from shared.runtime.admission import _lock_windows, _save_windows

START = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a schema with the runtime's tables only."""
    pool = await db.create_pool(database_url, "admission_test")
    await db.migrate(pool, "admission_test", [])
    yield pool
    await pool.close()


async def test_a_new_window_starts_at_zero_and_an_existing_one_keeps_its_counts(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        windows = await _lock_windows(conn, {("alice", START)})
        assert (windows[("alice", START)].admitted, windows[("alice", START)].refused) == (0, 0)
        windows[("alice", START)].admitted, windows[("alice", START)].changed = 3, True
        await _save_windows(conn, windows, None)
    async with pool.acquire() as conn, conn.transaction():
        windows = await _lock_windows(conn, {("alice", START), ("bob", START), (None, START)})
    assert {key: w.admitted for key, w in windows.items()} == {("alice", START): 3, ("bob", START): 0}


async def test_a_window_stays_locked_until_the_transaction_that_read_it_ends(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as first, first.transaction():
        windows = await _lock_windows(first, {("alice", START)})
        windows[("alice", START)].admitted, windows[("alice", START)].changed = 1, True

        async def second() -> int:
            async with pool.acquire() as conn, conn.transaction():
                return (await _lock_windows(conn, {("alice", START)}))[("alice", START)].admitted

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the other transaction waits for this one's counts
        await _save_windows(first, windows, None)
    assert await asyncio.wait_for(waiting, 5) == 1


async def test_old_windows_are_swept_only_when_the_bound_moves(pool: asyncpg.Pool) -> None:
    old, now = START - timedelta(hours=2), START
    async with pool.acquire() as conn, conn.transaction():
        await _lock_windows(conn, {("alice", old)})
    async with pool.acquire() as conn, conn.transaction():
        swept = await _save_windows(conn, await _lock_windows(conn, {("alice", now)}), None)
        assert swept == now - timedelta(hours=1)
        assert await conn.fetchval("SELECT count(*) FROM admission_windows WHERE window_start = $1", old) == 0
        await _lock_windows(conn, {("alice", old)})  # (a late one, to see the next call skip the sweep)
        assert await _save_windows(conn, await _lock_windows(conn, {("alice", now)}), swept) == swept
        assert await conn.fetchval("SELECT count(*) FROM admission_windows WHERE window_start = $1", old) == 1
        later = now + timedelta(minutes=1)
        assert await _save_windows(conn, await _lock_windows(conn, {("alice", later)}), swept) == later - timedelta(
            hours=1
        )
        assert await conn.fetchval("SELECT count(*) FROM admission_windows WHERE window_start = $1", old) == 0
