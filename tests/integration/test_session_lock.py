"""A session lock is held by one process at a time, kept between calls, and passes to another when the
holder's connection dies; an unreachable database holds it for nobody."""

from __future__ import annotations

import time

import asyncpg

from deploy.local.devstack import free_port
from shared.runtime.db import SessionLock


async def test_one_holder_at_a_time_and_the_lock_passes_on_when_its_connection_dies(database_url: str) -> None:
    first, second = SessionLock(database_url, "certbus-test"), SessionLock(database_url, "certbus-test")
    other = SessionLock(database_url, "certbus-test-other")
    try:
        assert await first.held()
        assert not await second.held()
        assert await first.held(), "kept between calls"
        assert await other.held(), "another key is another lock"
        admin = await asyncpg.connect(database_url)
        try:
            holder = await admin.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('certbus-test')::oid"
            )
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", holder)
        finally:
            await admin.close()
        assert await second.held(), "the server let the lock go with its connection"
        assert not await first.held(), "the first finds its connection gone, and the lock taken"
        await second.release()
        assert await first.held()
    finally:
        for lock in (first, second, other):
            await lock.release()


async def test_an_unreachable_database_holds_the_lock_for_nobody() -> None:
    started = time.monotonic()
    lock = SessionLock(f"postgresql://postgres@127.0.0.1:{free_port()}/certbus", "certbus-test", timeout_s=2.0)
    assert not await lock.held()
    assert time.monotonic() - started < 10
