"""A service's prepared statements follow its tables' growth even where PostgreSQL never analyzes
them (autovacuum off, as on this machine): a plan chosen while a table was small (a sequential
scan and a hash join) is not kept while the table grows, because statements are prepared again
once they are older than the pool's statement lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.runtime import db

SCHEMA = "planstest"
# Longer than growing the table takes (1.4 s on a slow day: with 1 s, the statement was prepared again
# before the first look-up after the growth, and the test showed nothing).
LIFETIME_S = 5.0
LOOKUP = (
    "SELECT c.key, c.owner FROM claims c JOIN unnest($1::text[], $2::text[]) AS k(kind, key) "
    "ON c.kind = k.kind AND c.key = k.key"
)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, SCHEMA, statement_lifetime_s=LIFETIME_S)
    await pool.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    await pool.execute(f"CREATE SCHEMA {SCHEMA}")
    await pool.execute(
        "CREATE TABLE claims (kind text NOT NULL, key text NOT NULL, owner text NOT NULL, PRIMARY KEY (kind, key)) "
        "WITH (autovacuum_enabled = false)"
    )
    yield pool
    await pool.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    await pool.close()


async def _seq_scans(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(f"SELECT seq_scan FROM pg_stat_user_tables WHERE relid = '{SCHEMA}.claims'::regclass")
    )


async def _look_up(conn: asyncpg.Connection, keys: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(LOOKUP, ["request"] * len(keys), keys)


async def _grow(conn: asyncpg.Connection, first: int, last: int) -> None:
    await conn.execute(
        "INSERT INTO claims SELECT 'request', 'r' || g, 'someone' FROM generate_series($1::int, $2::int) g", first, last
    )


async def test_a_plan_chosen_while_the_table_was_small_is_not_kept_as_it_grows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await _grow(conn, 1, 20)
        keys = [f"r{i}" for i in range(1, 14)]
        for _ in range(8):  # five custom plans, then the generic one PostgreSQL keeps
            assert len(await _look_up(conn, keys)) == 13
        await _grow(conn, 21, 200_000)
        before = await _seq_scans(conn)
        await _look_up(conn, keys)
        kept = await _seq_scans(conn) - before
        await asyncio.sleep(LIFETIME_S + 0.2)  # older than the statement lifetime: prepared again on its next use
        before = await _seq_scans(conn)
        for _ in range(8):
            assert len(await _look_up(conn, keys)) == 13
        after = await _seq_scans(conn) - before
    assert kept == 1, "the small table's plan (a sequential scan) was not kept: this test shows nothing"
    assert after == 0
