"""The scheduled check over the archive's SQL: run after run it reads only what was chained since, never
past the chained head, and finds what one pass over the whole archive finds; an archive rebuilt under
it (a replay adopting other rows) is read again from the beginning. What it knows of each certificate
is in PostgreSQL, not in the process, and belongs to one checker: another starts again from the
beginning; an on-demand check keeps its own in temporary tables."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.audit import realistic_log
from services.audit import check_store, store
from services.audit.checks import Facts, Finding, Revoked, check_all
from services.audit.incremental import IncrementalCheck
from shared.runtime.outbox import OutboxEntry
from shared.trust.operators import registration

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_audit_incremental import LOG, _approve
from test_audit_samples import rows, subject_of

MIGRATIONS = Path(store.__file__).parent / "migrations"
ROOT = "pki"


@pytest.fixture
def pool(audit_archive: asyncpg.Pool) -> asyncpg.Pool:
    return audit_archive


def _log(objects: dict[str, bytes] | None = None) -> list[tuple[int, str, bytes]]:
    """A realistic log (real certificates under a versioned profile, revocations, a CRL) with findings
    spread along it: issuances without their approval, under another request id."""
    key = Ed25519PrivateKey.generate()
    first = registration("alice", key, "alice", datetime.now(UTC))
    messages = [(first.subject(ROOT), first.model_dump_json().encode())]
    bench = realistic_log(300, ROOT, "crls", ("alice", key))
    if objects is not None:
        objects.update(bench.objects)
    for subject, raw in bench.events:
        messages.append((subject, raw))
        if subject.endswith(".issued") and len(messages) % 7 == 0:
            data = {**json.loads(raw), "aggregate_id": f"unapproved-{len(messages)}"}
            messages.append((f"{ROOT}.cert.{data['aggregate_id']}.issued", json.dumps(data).encode()))
    return [(seq, subject, raw) for seq, (subject, raw) in enumerate(messages, start=1)]


async def _archive(pool: asyncpg.Pool, messages: list[tuple[int, str, bytes]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.archive(conn, messages, ROOT)


async def _run(check: IncrementalCheck, pool: asyncpg.Pool | asyncpg.Connection) -> list[Finding]:
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
    assert check.checker.latest_crl == whole.latest_crl
    assert await _stored_revocations(pool) == {(issuer, r) for issuer, rs in whole.revocations.items() for r in rs}
    # The process keeps nothing of any certificate between batches: it is all in the tables.
    assert check.checker.facts == Facts() and check.checker.revocations == {}
    assert await pool.fetchval("SELECT count(*) FROM check_issued") == _issued(log)


def _issued(log: list[tuple[int, str, bytes]]) -> int:
    """How many serials (of an issuer) the log issues: those the tables must know."""
    issued = (json.loads(raw) for _, subject, raw in log if subject.endswith(".issued"))
    return len({(data["issuer_id"], data["serial"]) for data in issued})


async def _stored_revocations(pool: asyncpg.Pool) -> set[tuple[str, Revoked]]:
    rows = await pool.fetch("SELECT issuer, serial, stream_seq, revoked_at FROM check_revocations")
    return {(r["issuer"], Revoked(r["serial"], r["stream_seq"], r["revoked_at"])) for r in rows}


@pytest.mark.parametrize("batch", [1, 5])
async def test_each_finding_kind_is_found_as_one_pass_finds_it_with_the_facts_loaded_for_each_batch(
    pool: asyncpg.Pool, batch: int
) -> None:
    """Every per-certificate check (approval, serial, revoked_unknown, renewal, key_destroyed...) reads its
    facts from the tables: a batch of one loads all it knows of a certificate from them."""
    log = rows(*LOG)
    await _archive(pool, log)
    check = IncrementalCheck(ROOT, batch=batch)
    assert await _run(check, pool) == check_all(log, ROOT).findings
    assert {f.check for f in check_all(log, ROOT).findings} >= {
        "approval",
        "serial",
        "revoked_unknown",
        "renewal",
        "key_destroyed",
        "issuer",
        "ca_closed",
    }


class Raised:
    """A sink that keeps what each batch records; `fail_at` makes that call fail (after recording
    nothing), as a database error would roll the batch back."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.found: list[Finding] = []
        self.calls = 0
        self.fail_at = fail_at

    async def record(self, conn: asyncpg.Connection, found: list[Finding]) -> list[OutboxEntry]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the findings could not be recorded")
        self.found += found
        return []

    async def publish(self, entries: list[OutboxEntry]) -> None:
        raise AssertionError("nothing recorded to publish")


async def test_a_restarted_check_goes_on_from_the_stored_state_and_finds_nothing_twice(pool: asyncpg.Pool) -> None:
    """The second half's certificates are judged by the profile, CA and operators the first half
    brought: a checker that went on without them would find every one of them wrong."""
    log = _log()
    whole = check_all(log, ROOT).findings
    half = whole[len(whole) // 2].stream_seq  # findings on both sides; issuances under the profile after it
    await _archive(pool, log[:half])
    first_raised = Raised()
    first = IncrementalCheck(ROOT, batch=16, sink=first_raised)
    await first.catch_up(pool)
    await _archive(pool, log[half:])
    second_raised = Raised()
    second = IncrementalCheck(ROOT, batch=16, sink=second_raised)  # another process: a restart, a replica
    await second.catch_up(pool)
    assert first_raised.found and second_raised.found
    assert first_raised.found + second_raised.found == whole
    assert second.checker.events == len(log) - half, "it read only what followed the stored state"
    assert second.take_findings() == []  # recorded as it went
    # The first finds the stored state is no longer where it left it, and goes on from there too.
    late = _approve("late")
    await _archive(pool, [(len(log) + 1, subject_of(late), late)])
    await first.catch_up(pool)
    assert first.through == len(log) + 1 and first.checker.events == 1
    assert first_raised.found + second_raised.found == whole


async def test_a_batch_whose_findings_cannot_be_recorded_is_checked_again(pool: asyncpg.Pool) -> None:
    log = _log()
    await _archive(pool, log)
    raised = Raised(fail_at=3)
    check = IncrementalCheck(ROOT, batch=16, sink=raised)
    with pytest.raises(RuntimeError, match="could not be recorded"):
        await check.catch_up(pool)
    assert 0 < await pool.fetchval("SELECT through FROM check_cursor") < len(log)
    await check.catch_up(pool)  # from the last batch that committed, with what it knew there
    assert raised.found == check_all(log, ROOT).findings
    assert check.through == len(log)


async def test_without_a_sink_another_checker_starts_again_from_the_beginning(pool: asyncpg.Pool) -> None:
    """A run that does not record its findings as it goes stores no state: going on from its facts
    would miss the findings it had not yet handed over."""
    log = rows(*LOG)
    await _archive(pool, log)
    first = IncrementalCheck(ROOT, batch=4)
    whole = check_all(log, ROOT).findings
    assert await _run(first, pool) == whole
    assert await pool.fetchval("SELECT state FROM check_cursor") is None
    second = IncrementalCheck(ROOT, batch=4)
    assert await _run(second, pool) == whole
    assert (await pool.fetchrow("SELECT through, run FROM check_cursor"))["run"] == second.run
    late = _approve("late")
    await _archive(pool, [(len(log) + 1, subject_of(late), late)])
    assert await _run(first, pool) == whole  # from the beginning again: the findings table drops repeats
    assert first.through == len(log) + 1


async def test_each_batch_looks_its_certificates_up_by_key_and_never_reads_a_table_whole(pool: asyncpg.Pool) -> None:
    """A plan kept with its prepared statement, made while the table was small or had no statistics
    (a temporary table never has any), read the whole table for every batch: the check slowed down as
    the log grew, five times over 100,000 events."""
    key = Ed25519PrivateKey.generate()
    first = registration("alice", key, "alice", datetime.now(UTC))
    log = rows(
        first.model_dump_json().encode(), *(raw for _, raw in realistic_log(6_000, ROOT, "crls", ("alice", key)).events)
    )
    await _archive(pool, log)
    on_demand = IncrementalCheck(ROOT, tables=check_store.TEMPORARY)  # batches of the scheduled check's size
    async with pool.acquire() as conn:
        await check_store.create_temporary(conn)
        try:
            await on_demand.catch_up(conn)
            await conn.execute("SELECT pg_stat_force_next_flush()")
            scans = await conn.fetch(
                "SELECT relname, seq_scan, idx_scan FROM pg_stat_all_tables "
                "WHERE schemaname LIKE 'pg_temp%' AND relname IN ('check_approvals', 'check_issued', 'check_serials')"
            )
        finally:
            await check_store.drop_temporary(conn)
    assert len(scans) == 3 and on_demand.through == len(log) > 20 * on_demand.batch
    # An empty table is rightly read whole, while the first batch plans for it; no batch after.
    assert all(s["seq_scan"] <= 2 for s in scans), [dict(s) for s in scans]


async def test_an_on_demand_check_keeps_its_facts_in_temporary_tables(pool: asyncpg.Pool) -> None:
    objects: dict[str, bytes] = {}
    log = _log(objects)
    await _archive(pool, log)
    whole = check_all(log, ROOT)
    on_demand = IncrementalCheck(ROOT, batch=64, tables=check_store.TEMPORARY)
    async with pool.acquire() as conn:
        await check_store.create_temporary(conn)
        try:
            found = await _run(on_demand, conn)
            assert await conn.fetchval("SELECT count(*) FROM pg_temp.check_issued") > 0
            now, grace = datetime.now(UTC), timedelta(seconds=0)

            async def fetch(key: str) -> bytes | None:
                latest = on_demand.checker.latest_crl.get(key)
                return None if latest is None else objects.get(latest.name)

            crls = await on_demand.crl_findings(conn, fetch, now, grace)
        finally:
            await check_store.drop_temporary(conn)
    assert found == whole.findings
    by_key = {key: objects.get(c.name) for key, c in whole.latest_crl.items()}
    assert crls == whole.crl_findings(by_key, now, grace)
    # The realistic log's CRL lists each revocation: a copy that lists none is found out, revocation by revocation.
    assert whole.revocations and not crls
    assert await pool.fetchval("SELECT count(*) FROM check_issued") == 0  # the scheduled check's tables: untouched
    assert await pool.fetchval("SELECT run FROM check_cursor") is None


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
    assert await pool.fetchval("SELECT count(*) FROM check_issued") == _issued(rebuilt)
