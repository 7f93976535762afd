"""`audit verify` on a clean archive, and on archives tampered with in the database: a changed,
dropped, inserted or reordered event, a truncated archive, a rewritten chain, a forged checkpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from subprocess import PIPE
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from clock import TestClock
from harness import Harness, eventually
from services.audit import domain
from shared.client.sdk import CertbusError
from shared.contract.events import AuditCheckpointSigned, checkpoint_message
from shared.contract.queries import ReplayProgress, VerifyAnswer
from signals import audit_caught_up, audit_checks_ran


async def _settled(h: Harness, certs: int = 3) -> asyncpg.Pool:
    """Issue a few certificates, then wait until audit archived everything and has nothing left to sign."""
    for i in range(certs):
        await h.enroll(f"v{i}.corp.internal")
    await audit_caught_up(h)
    return await h.db()


async def _verify(h: Harness) -> VerifyAnswer:
    async with h.client("operator") as c:
        return await c.verify()


async def _row(pool: asyncpg.Pool, seq: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT stream_seq, subject, raw FROM audit.archive WHERE stream_seq = $1", seq)
    assert row is not None
    return row


async def test_a_clean_archive_verifies(stack: Harness) -> None:
    await _settled(stack)
    answer = await _verify(stack)
    assert answer.clean, answer
    assert answer.checkpoints_checked >= 1
    assert answer.archived_events == answer.stream_last_seq
    result = await stack.cli("audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout


async def test_a_changed_event_is_detected_at_its_position(stack: Harness) -> None:
    pool = await _settled(stack)
    await pool.execute("UPDATE audit.archive SET raw = raw || ' '::bytea WHERE stream_seq = 7")
    answer = await _verify(stack)
    assert (answer.clean, answer.first_seq, answer.kind) == (False, 7, "changed")
    result = await stack.cli("audit", "verify")
    assert result.returncode == 1
    assert "TAMPERED at seq 7: changed" in result.stdout


async def test_a_dropped_event_is_detected(stack: Harness) -> None:
    pool = await _settled(stack)
    await pool.execute("DELETE FROM audit.serial_refs WHERE stream_seq = 9")
    await pool.execute("DELETE FROM audit.archive WHERE stream_seq = 9")
    answer = await _verify(stack)
    assert (answer.first_seq, answer.kind) == (9, "dropped")


async def test_two_swapped_events_are_detected_as_reordered(stack: Harness) -> None:
    pool = await _settled(stack)
    a, b = await _row(pool, 8), await _row(pool, 12)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE audit.archive SET subject = $2, raw = $3 WHERE stream_seq = $1", 8, b["subject"], b["raw"]
        )
        await conn.execute(
            "UPDATE audit.archive SET subject = $2, raw = $3 WHERE stream_seq = $1", 12, a["subject"], a["raw"]
        )
    answer = await _verify(stack)
    assert (answer.first_seq, answer.kind) == (8, "reordered")
    assert {p.stream_seq for p in answer.problems} >= {8, 12}


async def test_a_forged_event_inserted_in_the_middle_is_detected(stack: Harness) -> None:
    pool = await _settled(stack)
    forged = json.dumps({"event_type": "CertificateIssued", "serial": "1", "producer": "signing"}).encode()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM audit.serial_refs")
        await conn.execute("UPDATE audit.archive SET stream_seq = stream_seq + 1000000 WHERE stream_seq >= 10")
        await conn.execute("UPDATE audit.archive SET stream_seq = stream_seq - 999999 WHERE stream_seq > 1000000")
        await conn.execute(
            "INSERT INTO audit.archive (stream_seq, subject, raw, event_type) VALUES (10, $1, $2, 'CertificateIssued')",
            f"{stack.root}.cert.forged.issued",
            forged,
        )
    answer = await _verify(stack)
    assert (answer.first_seq, answer.kind) == (10, "inserted")


async def test_a_truncated_archive_is_detected(stack: Harness) -> None:
    pool = await _settled(stack)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM audit.serial_refs WHERE stream_seq > 15")
        await conn.execute("DELETE FROM audit.archive WHERE stream_seq > 15")
    answer = await _verify(stack)
    assert (answer.first_seq, answer.kind) == (16, "truncated")


async def test_a_rewritten_chain_is_caught_by_the_stream_and_the_signed_checkpoint(stack: Harness) -> None:
    """An attacker with the database changes an event and recomputes every stored hash after it:
    the chain alone looks intact, but the stream and the signed checkpoint do not agree."""
    pool = await _settled(stack)
    cp_seq = await pool.fetchval("SELECT max(stream_seq) FROM audit.checkpoints")
    target = 5
    assert cp_seq > target
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE audit.archive SET raw = raw || ' '::bytea WHERE stream_seq = $1", target)
        rows = await conn.fetch("SELECT stream_seq, subject, raw FROM audit.archive ORDER BY stream_seq")
        current = domain.GENESIS
        for row in rows:
            current = domain.link(current, row["stream_seq"], row["subject"], bytes(row["raw"]))
            await conn.execute("UPDATE audit.archive SET hash = $2 WHERE stream_seq = $1", row["stream_seq"], current)
        await conn.execute("UPDATE audit.chain_head SET hash = $1", current)
    answer = await _verify(stack)
    assert (answer.first_seq, answer.kind) == (target, "changed")
    assert any(p.kind == "checkpoint_mismatch" and p.stream_seq == cp_seq for p in answer.problems), answer.problems


async def test_a_checkpoint_signed_by_another_key_is_detected(stack: Harness) -> None:
    await _settled(stack)
    rogue = ed25519.Ed25519PrivateKey.generate()
    now = datetime.now(UTC)
    message = checkpoint_message(stack.common["stream"], 3, "0" * 64, now)
    forged = AuditCheckpointSigned(
        aggregate_id="3",
        occurred_at=now,
        correlation_id="forged",
        producer="audit",
        stream_seq=3,
        chain_hash="0" * 64,
        events=3,
        signed_at=now,
        public_key=base64.b64encode(rogue.public_key().public_bytes_raw()).decode(),
        signature=base64.b64encode(rogue.sign(message)).decode(),
        event_id=uuid.uuid4(),
    )
    await stack.publish_raw(forged.subject(stack.root), forged.model_dump_json().encode())
    answer = await _verify(stack)
    assert any(p.kind == "checkpoint_invalid" and p.stream_seq == 3 for p in answer.problems), answer.problems


async def test_audit_check_finds_a_certificate_issued_without_approval(stack: Harness) -> None:
    pool = await _settled(stack, certs=2)
    result = await stack.cli("audit", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "consistent" in result.stdout
    issued = json.loads(
        (await pool.fetchrow("SELECT raw FROM audit.archive WHERE event_type = 'CertificateIssued'"))["raw"]
    )
    issued.update(aggregate_id="never-requested", serial="abc123", event_id=str(uuid.uuid4()))
    await stack.publish_raw(f"{stack.root}.cert.never-requested.issued", json.dumps(issued).encode())
    found = None
    for _ in range(50):
        result = await stack.cli("audit", "check", "--json")
        found = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "approval"]
        if found:
            break
        await asyncio.sleep(0.2)
    assert result.returncode == 1
    assert found and "never-requested" in found[0]["detail"]
    stack.lint_exempt.add("abc123")
    # The scheduled run publishes the finding once, as an event operators can subscribe to.
    seq = found[0]["stream_seq"]
    raised = await eventually(lambda: stack.stream_messages(f"{stack.root}.finding.approval-{seq}.raised"))
    assert json.loads(raised[0].data)["check"] == "approval"
    await audit_checks_ran(stack)  # another scheduled run raises nothing new (but its probe's finding)
    everything = await stack.stream_messages(f"{stack.root}.finding.*.raised")
    assert len(everything) == len(raised) + 1, [m.subject for m in everything]


async def test_audit_replay_through_the_cli_reports_equal_and_progress_is_queryable(stack: Harness) -> None:
    await _settled(stack, certs=2)
    result = await stack.cli("audit", "replay")
    assert result.returncode == 0, result.stderr
    assert "equal" in result.stdout
    seen: list[ReplayProgress] = []
    async with stack.client("operator") as c:
        answer = await c.replay(on_progress=seen.append)  # small: may finish before the first poll
        idle = await c._ask("audit", "replay_progress", None, ReplayProgress)
    assert answer.equal
    assert not idle.running
    assert idle.done == idle.total == answer.last_seq
    assert all(p.done <= p.total for p in seen)


async def test_replay_and_verify_need_no_certbus_service(stack: Harness) -> None:
    """With every service stopped, `certbus audit replay --verify` replays in its own process from
    the stream and audit's database alone; a dropped archive row is rebuilt from the log."""
    pool = await _settled(stack, certs=2)
    for name in list(stack.apps):
        await stack.stop(name)
    through = await pool.fetchval("SELECT seq FROM audit.chain_head")
    result = await _as_audit(stack, "shared.client.cli.main", "audit", "replay", "--verify", "--json")
    assert result.returncode == 0, result.stderr
    assert "no audit service answers" in result.stderr
    answer = json.loads(result.stdout)
    assert answer["equal"] and answer["events"] == answer["last_seq"] == through
    assert answer["verified"]["clean"] and answer["verified"]["checkpoints_checked"] >= 1

    middle = through // 2
    await pool.execute("DELETE FROM audit.serial_refs WHERE stream_seq = $1", middle)
    await pool.execute("DELETE FROM audit.archive WHERE stream_seq = $1", middle)
    verify = await stack.cli("audit", "verify")
    assert verify.returncode == 3, "verify asks the audit service, which is not running"
    offline = await _as_audit(stack, "services.audit.offline", "verify", "--json")
    assert offline.returncode == 1 and json.loads(offline.stdout)["first_seq"] == middle
    rebuilt = await _as_audit(stack, "shared.client.cli.main", "audit", "replay", "--verify")
    assert rebuilt.returncode == 1, "a replay that differed from the archive fails the command"
    assert "differed; archive rebuilt from the log" in rebuilt.stdout and "clean" in rebuilt.stdout
    assert await pool.fetchval("SELECT count(*) FROM audit.archive") == through
    again = await _as_audit(stack, "services.audit.offline", "replay", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["equal"]


async def test_a_second_replay_is_refused_while_one_runs(stack: Harness) -> None:
    pool = await _settled(stack, certs=1)
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT pg_advisory_lock(hashtext('replay:audit'))")
        try:
            busy = await _as_audit(stack, "shared.client.cli.main", "audit", "replay", "--standalone")
            assert busy.returncode == 1 and "already running" in busy.stderr
            async with stack.client("operator") as c:
                with pytest.raises(CertbusError, match="already running"):
                    await c.replay()
        finally:
            await conn.fetchval("SELECT pg_advisory_unlock(hashtext('replay:audit'))")


async def _as_audit(h: Harness, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `module` (the `certbus` CLI, or `certbus-audit`, the standalone auditor tool) with audit's
    settings: its identity on the bus and its database, as an auditor's machine has them."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, env=h.env("audit"), stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, stdout.decode(), stderr.decode())


async def _findings(h: Harness, check: str, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """Run `certbus audit check --json` until the findings of `check` satisfy `until`."""
    found: list[dict[str, Any]] = []
    for _ in range(50):
        result = await h.cli("audit", "check", "--json")
        found = [f for f in json.loads(result.stdout)["findings"] if f["check"] == check]
        if until(found):
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{check} findings never settled: {found}")


async def test_audit_check_finds_a_revocation_missing_from_the_crl(harness: Harness) -> None:
    """Signing is down when a certificate is revoked, so no CRL lists it: once the grace has passed
    the check reports it; when signing is back and publishes a CRL the finding is gone. A CRL whose
    bytes in the object store were replaced is reported too."""
    clock = TestClock()
    harness.clocks["audit"] = clock
    harness.overrides["audit"] = {"crl_check_grace_s": 60.0}
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    issued = await harness.enroll("crl-check.corp.internal")
    await harness.stop("signing")
    async with harness.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "tests")
    clock.advance(timedelta(seconds=61))  # audit's time passes the grace; no real time need pass
    missing = await _findings(harness, "crl", bool)
    assert issued.serial in missing[0]["detail"] and "no CRL" in missing[0]["detail"]

    await harness.start("signing")
    await _findings(harness, "crl", lambda found: not found)
    crl_events = await harness.stream_messages(f"{harness.root}.ca.*.crl_published")
    latest = json.loads(crl_events[-1].data)
    nc = await harness.connect("signing")  # whoever can write CRLs: only signing
    try:
        bucket = await harness.js(nc, "signing").object_store(latest["object_bucket"])
        await bucket.put(latest["object_name"], b"not the CRL that was signed")
    finally:
        await nc.close()
    altered = await _findings(harness, "crl", bool)
    assert "do not match the digest" in altered[0]["detail"]
