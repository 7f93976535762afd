"""A provisioner's hourly limit is judged from its requests in the hour before each request,
counted up to the limit only (a busy provisioner's whole hour is not read for every request)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from services.enrollment import store


async def _provisioner(conn: asyncpg.Connection, limit: int | None) -> None:
    await conn.execute(
        "INSERT INTO provisioners (provisioner_id, name, public_key_pem, registered_at, registered_by, max_per_hour) "
        "VALUES ('p', 'p', 'pem', now(), 'operator', $1)",
        limit,
    )


async def _requests(conn: asyncpg.Connection, n: int, at: datetime, status: str = "issued") -> None:
    await conn.execute(
        "INSERT INTO requests (request_id, requester, profile, status, requested_at, decided_at, provisioner_id, "
        "accepted_at) SELECT $4 || g, 'svc', 'tls-server', $3, $2, $2, 'p', $2::timestamptz - g * interval '1 s' "
        "FROM generate_series(1, $1) g",
        n,
        at,
        status,
        f"{status}-{at.timestamp()}-",
    )


async def test_the_hour_is_counted_up_to_the_limit(enrollment_schema: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    async with enrollment_schema.acquire() as conn:
        await _provisioner(conn, 5)
        await _requests(conn, 3, now)
        assert (await store.context(conn, "p", "tls-server", None, now)).issued_last_hour == 3
        await _requests(conn, 40, now - timedelta(minutes=30))
        await _requests(conn, 50, now - timedelta(hours=2))  # before the hour: not counted
        await _requests(conn, 50, now, status="rejected")  # not enrolled: not counted
        assert (await store.context(conn, "p", "tls-server", None, now)).issued_last_hour == 5  # the limit


async def test_without_a_limit_nothing_is_counted(enrollment_schema: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    async with enrollment_schema.acquire() as conn:
        await _provisioner(conn, None)
        await _requests(conn, 3, now)
        assert (await store.context(conn, "p", "tls-server", None, now)).issued_last_hour == 0
