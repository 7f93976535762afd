"""A service whose database is lost while its durables on the log live on refuses to start, says
why, and decides nothing: signing creates no new CA beside the one it has keys for, and the
refusal holds on every later start until the database is restored. Audit, which rebuilds itself
(`certbus audit replay`), is not refused; a service whose durable is new replays as before."""

from __future__ import annotations

import pytest

from harness import Harness, eventually
from shared.runtime.db import create_pool, drop_schema
from shared.runtime.lineage import DatabaseLost


async def _lose_database(stack: Harness, name: str) -> None:
    """What losing the whole database is for one service: its schema gone, its durables kept."""
    await stack.stop(name)
    pool = await create_pool(stack.database_url, name)
    try:
        await drop_schema(pool, name)
    finally:
        await pool.close()


@pytest.mark.parametrize("service", ["signing", "enrollment", "revocation", "validation"])
async def test_a_service_that_lost_its_database_refuses_to_start_and_decides_nothing(
    stack: Harness, service: str
) -> None:
    await stack.enroll("lost.corp.internal")
    cas_before = [m.data for m in await stack.stream_messages(f"{stack.root}.ca.*.created")]
    keys_before = sorted(p.name for p in stack.key_dir.iterdir())
    await _lose_database(stack, service)
    for _ in range(2):  # and again: the refusal does not vanish because the first start made the schema
        with pytest.raises(DatabaseLost, match=r"database is new.*already acknowledged events.*Restore it"):
            await stack.start(service)
    assert [m.data for m in await stack.stream_messages(f"{stack.root}.ca.*.created")] == cas_before
    assert sorted(p.name for p in stack.key_dir.iterdir()) == keys_before
    rows = await (await stack.db()).fetch(f"SELECT durable, ack_floor FROM {service}.lost_database")
    assert rows and all(r["ack_floor"] > 0 for r in rows)


async def test_audit_is_not_refused_and_a_service_with_a_new_durable_replays(stack: Harness) -> None:
    issued = await stack.enroll("replayed.corp.internal")
    await _lose_database(stack, "audit")
    await stack.start("audit")  # audit rebuilds itself with `certbus audit replay`
    # Validation forgotten the way a rebuild asks for: its schema and its durable, so it replays.
    await stack.stop("validation")
    await stack.forget("validation", "validation-status")
    await stack.start("validation")
    async with stack.client() as c:

        async def good() -> bool:
            return (await c.status(issued.serial)).status == "good"

        await eventually(good)
