"""Audit at scale: 100,000 realistic events archived live, verified, and replayed from sequence 1
into fresh tables give the same archive, the same final hash and the same certificate histories."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from bench.audit import harness_operator, publish, realistic_log
from harness import Harness, eventually

N = int(os.environ.get("CERTBUS_SCALE_EVENTS", "100000"))


@pytest.mark.timeout(900)
async def test_replaying_100000_events_gives_the_same_archive_hash_and_histories(harness: Harness) -> None:
    h = harness
    h.lint_at_close = False  # 25,000 certificates from one template: pkilint is tested elsewhere
    log = await asyncio.to_thread(realistic_log, N, h.root, h.common["crl_bucket"], harness_operator(h))
    published = await publish(h, log)  # each event by its type's publisher, after the operator's registration
    # pkilint of 25,000 certificates (~3 min) is not what this tests; the checks run once, below
    h.overrides["audit"] = {"lint_after_issuance": False, "check_interval_s": 3600.0}
    await h.start("audit")
    pool = await h.db()

    async def archived_everything() -> bool:
        return (await pool.fetchval("SELECT seq FROM audit.chain_head")) >= published.last_seq

    await eventually(archived_everything, timeout=600, interval=0.1)  # in 10 minutes
    serials = [r["serial"] for r in await pool.fetch("SELECT DISTINCT serial FROM audit.serial_refs")]
    sample = random.Random(7).sample(serials, 20)
    head = await pool.fetchrow("SELECT seq, hash FROM audit.chain_head")
    async with h.client("operator") as c:  # history, verify, check and replay are the operator's queries
        before = {s: [e.stream_seq for e in (await c.history(s)).events] for s in sample}
        verified = await c.verify()
        checked = await c.check()
    assert verified.clean, verified.problems[:3]
    # A consistent log: every certificate approved once, by an announced issuer, allowed by its
    # profile version (re-read from its bytes), every revocation in the issuer's signed CRL.
    assert checked.findings == []
    assert verified.archived_events >= N
    # Lose every audit table: nothing is left but the log. The live consumer has acknowledged
    # everything, so only replay from sequence 1 can bring the archive and the histories back.
    await h.stop("audit")
    await pool.execute("DROP SCHEMA audit CASCADE")
    await h.start("audit")
    async with h.client("operator") as c:
        answer = await c.replay()
        after = {s: [e.stream_seq for e in (await c.history(s)).events] for s in sample}
    assert answer.events >= N
    assert answer.last_seq >= head["seq"]
    rebuilt = await pool.fetchval("SELECT hash FROM audit.archive WHERE stream_seq = $1", head["seq"])
    assert bytes(rebuilt) == bytes(head["hash"])  # the same chain hash at the same position
    assert after == before
    assert all(len(v) >= 3 for v in before.values())  # requested, approved, issued (and revoked)
