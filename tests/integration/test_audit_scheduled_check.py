"""The scheduled check over the archive's SQL: run after run it reads only what was chained since, never
past the chained head, and finds what one pass over the whole archive finds; an archive rebuilt under
it (a replay adopting other rows) is read again from the beginning."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.audit import realistic_log
from services.audit import store
from services.audit.checks import Finding, check_all
from services.audit.incremental import IncrementalCheck
from shared.trust.operators import registration

MIGRATIONS = Path(store.__file__).parent / "migrations"
ROOT = "pki"


@pytest.fixture
def pool(audit_archive: asyncpg.Pool) -> asyncpg.Pool:
    return audit_archive


def _log() -> list[tuple[int, str, bytes]]:
    """A realistic log (real certificates under a versioned profile, revocations, a CRL) with findings
    spread along it: issuances without their approval, under another request id."""
    key = Ed25519PrivateKey.generate()
    first = registration("alice", key, "alice", datetime.now(UTC))
    messages = [(first.subject(ROOT), first.model_dump_json().encode())]
    for subject, raw in realistic_log(300, ROOT, "crls", ("alice", key)).events:
        messages.append((subject, raw))
        if subject.endswith(".issued") and len(messages) % 7 == 0:
            data = {**json.loads(raw), "aggregate_id": f"unapproved-{len(messages)}"}
            messages.append((f"{ROOT}.cert.{data['aggregate_id']}.issued", json.dumps(data).encode()))
    return [(seq, subject, raw) for seq, (subject, raw) in enumerate(messages, start=1)]


async def _archive(pool: asyncpg.Pool, messages: list[tuple[int, str, bytes]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.archive(conn, messages, ROOT)


async def _run(check: IncrementalCheck, pool: asyncpg.Pool) -> list[Finding]:
    await check.catch_up(pool)
    found = check.take_findings()
    check.raised(found)
    return found


async def test_runs_over_what_was_archived_since_find_what_one_pass_finds(pool: asyncpg.Pool) -> None:
    log = _log()
    whole = check_all(log, ROOT)
    assert len(whole.findings) > 10, "the log has findings on both sides of every cut below"
    check = IncrementalCheck(ROOT, batch=16)
    third, gap = len(log) // 3, 2 * len(log) // 3
    await _archive(pool, log[:third])
    found = await _run(check, pool)
    assert check.through == third
    await _archive(pool, log[third:gap] + log[gap + 1 :])  # a redelivery is late: the chain stops at the gap
    found += await _run(check, pool)
    assert check.through == log[gap][0] - 1, "nothing past the chained head is checked"
    await _archive(pool, [log[gap]])
    found += await _run(check, pool)
    found += await _run(check, pool)  # nothing new: nothing found twice
    assert found == whole.findings
    assert check.checker.events == whole.events == len(log)
    assert check.checker.revocations == whole.revocations and check.checker.latest_crl == whole.latest_crl


async def test_an_archive_rebuilt_with_other_rows_is_checked_again_from_the_beginning(pool: asyncpg.Pool) -> None:
    log = _log()
    await _archive(pool, log)
    check = IncrementalCheck(ROOT, batch=64)
    await _run(check, pool)
    # A replay adopts a rebuilt archive: from `cut` on, its rows are another log's (here, without the
    # issuances that had no approval), chained from the hash before them.
    cut = len(log) // 2
    rebuilt = [m for m in log[cut - 1 :] if not json.loads(m[2]).get("aggregate_id", "").startswith("unapproved")]
    rebuilt = log[: cut - 1] + [(seq, subject, raw) for seq, (_, subject, raw) in enumerate(rebuilt, start=cut)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM serial_refs WHERE stream_seq >= $1", cut)
        await conn.execute("DELETE FROM archive WHERE stream_seq >= $1", cut)
        await conn.execute("UPDATE chain_head SET seq = $1, hash = $2", cut - 1, await store.hash_at(conn, cut - 1))
        await store.archive(conn, rebuilt[cut - 1 :], ROOT)
    assert await pool.fetchval("SELECT seq FROM chain_head") == len(rebuilt) < len(log)
    found = await _run(check, pool)
    assert found == check_all(rebuilt, ROOT).findings  # all of them again: the findings table drops repeats
    assert check.checker.events == len(rebuilt)
    assert check.through == len(rebuilt)
