"""PostgreSQL access: one pool per service bound to that service's schema, and its migrations."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _encode_jsonb(value: Any) -> bytes:
    return b"\x01" + json.dumps(value, separators=(",", ":"), default=str).encode()


def _decode_jsonb(data: bytes) -> Any:
    return json.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Binary jsonb codec: a text codec would break copy_records_to_table.
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_jsonb, decoder=_decode_jsonb, format="binary"
    )


def check_schema_name(schema: str) -> str:
    """Return `schema` if it is a plain lower-case identifier, else raise ValueError."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r} must match {_SCHEMA_NAME.pattern}")
    return schema


async def create_pool(
    dsn: str, schema: str, min_size: int = 1, max_size: int = 5, *, statement_lifetime_s: float = 60.0
) -> asyncpg.Pool:
    """A pool whose connections see `schema` first on their search path."""
    check_schema_name(schema)
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # A prepared statement keeps the plan PostgreSQL chose for it (after five runs, a generic one)
        # until the table is analyzed. Where autovacuum does not analyze (it is off, or lags behind a
        # fast-growing table), a plan chosen while a table was small (a sequential scan, a hash join)
        # would be kept while it grows to millions of rows: preparing each statement again after a
        # minute lets the plans follow the tables' size.
        max_cached_statement_lifetime=statement_lifetime_s,
        server_settings={
            "search_path": f"{schema},public",
            "application_name": f"certbus-{schema}",
            # Short statements, planned once and run many times: JIT compiling one costs milliseconds
            # and repays nothing. (It switched itself on once the history grew: enrollment's look at
            # a provisioner's last hour, planned above jit_above_cost at 1,000,000 requests, spent
            # 4-6 ms compiling on every batch.)
            "jit": "off",
        },
    )
    assert pool is not None
    return pool


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if the server does not have it yet."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name:
        return
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            pass
        finally:
            await admin.close()
    else:
        await conn.close()


def _migration_files(directories: Sequence[Path]) -> list[tuple[str, str]]:
    files: list[tuple[str, str]] = []
    for directory in directories:
        for path in sorted(directory.glob("*.sql")):
            files.append((f"{directory.parent.name}/{path.name}", path.read_text()))
    return files


async def migrate(pool: asyncpg.Pool, schema: str, directories: Sequence[Path]) -> list[str]:
    """Apply the runtime migrations then the service's own, once each, under an advisory lock."""
    check_schema_name(schema)
    applied: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"migrate:{schema}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch(f"SELECT name FROM {schema}.schema_migrations")}
        for name, sql in _migration_files([RUNTIME_MIGRATIONS, *directories]):
            if name in done:
                continue
            await conn.execute(f"SET LOCAL search_path TO {schema}, public")
            await conn.execute(sql)
            await conn.execute(f"INSERT INTO {schema}.schema_migrations (name) VALUES ($1)", name)
            applied.append(name)
    return applied


async def drop_schema(pool: asyncpg.Pool, schema: str) -> None:
    """Drop a service's whole schema (projections are rebuilt from the log)."""
    check_schema_name(schema)
    async with pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class SessionLock:
    """A session-level advisory lock, held on a connection of its own for as long as this process
    lives (or until `release`): the one replica holding it does what it guards. If that connection
    dies, the server lets the lock go and another replica takes it at its next `held`."""

    def __init__(self, dsn: str, key: str, timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._key = key
        self._timeout_s = timeout_s
        self._conn: asyncpg.Connection | None = None

    async def held(self) -> bool:
        """Whether this process holds the lock, taking it if it is free; False if the database cannot
        be reached (nobody can do what it guards then)."""
        if self._conn is not None:
            try:
                await self._conn.fetchval("SELECT 1", timeout=self._timeout_s)
                return True
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self.release()  # the lock went with the connection
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            return False
        try:
            taken = await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", self._key, timeout=self._timeout_s)
        except BaseException:
            conn.terminate()
            raise
        if not taken:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        """Let the lock go (closing its connection releases it)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), self._timeout_s)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()
