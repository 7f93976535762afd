"""Audit's post-issuance lint job (`services.audit.lint_job`) on a migrated schema of a real
PostgreSQL: it lints the archive's issued certificates in log order behind the chained head, raises
a finding for each that fails, passes over (and counts) the oldest when its backlog exceeds its
bound, and its coverage adds up to what was issued."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from services.audit import checks, lint_job, store
from services.audit.linter import Linter
from shared.contract.events import CertificateIssued, LintResult
from shared.pki.crypto import generate_key
from shared.runtime import db
from shared.runtime.outbox import OutboxEntry

MIGRATIONS = Path(store.__file__).parent / "migrations"
ROOT = "certbus"
NOW = datetime(2026, 12, 5, tzinfo=UTC)
KEY = generate_key("ec-p256")


@pytest.fixture
async def audit(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, "audit")
    await db.migrate(pool, "audit", [MIGRATIONS])
    yield pool
    await pool.close()


def _issued(name: str, profile: str = "tls-server") -> CertificateIssued:
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(KEY, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    request_id = str(uuid.uuid4())
    return CertificateIssued(
        aggregate_id=request_id,
        occurred_at=NOW,
        correlation_id=request_id,
        producer="signing",
        serial=format(cert.serial_number, "x"),
        issuer_id="issuing",
        profile=profile,
        cert_pem=pem,
        chain_pem=pem,
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
        dns_names=[name],
        spki_sha256="0" * 64,
        fingerprint_sha256="0" * 64,
    )


async def _archive(pool: asyncpg.Pool, events: list[CertificateIssued | bytes]) -> dict[str, int]:
    """Archive the events (bytes: a message that is no event, on a subject of its own) from seq 1
    on; returns each certificate's stream seq by serial."""
    messages, seqs = [], {}
    for seq, e in enumerate(events, start=1):
        if isinstance(e, bytes):
            messages.append((seq, f"{ROOT}.cert.junk-{seq}.issued", e))
        else:
            messages.append((seq, e.subject(ROOT), e.model_dump_json().encode()))
            seqs[e.serial] = seq
    async with pool.acquire() as conn, conn.transaction():
        await store.archive(conn, messages, ROOT)
    return seqs


class FakeLinter(Linter):
    """pkilint stood in for: the certificates named fail, every one linted is counted."""

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing
        self.linted: list[str] = []

    async def lint(self, certs: dict[uuid.UUID, str]) -> dict[uuid.UUID, list[LintResult]]:
        verdicts = {}
        for key, pem in certs.items():
            serial = format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")
            self.linted.append(serial)
            bad = [LintResult(severity="ERROR", code="pkix.fake", message="stood in")]
            verdicts[key] = bad if serial in self.failing else []
        return verdicts


def _job(pool: asyncpg.Pool, linter: FakeLinter, raised: list[Any], **kw: Any) -> lint_job.LintJob:
    published: list[OutboxEntry] = []

    async def publish(entries: list[OutboxEntry]) -> None:
        published.extend(entries)

    async def enqueue(
        conn: asyncpg.Connection, found: list[checks.Finding], cause: CertificateIssued, results: list[LintResult]
    ) -> list[OutboxEntry]:
        raised.append((found, cause.serial, [r.code for r in results]))
        return []

    rt = SimpleNamespace(pool=pool, root=ROOT, clock=SimpleNamespace(now=lambda: NOW), publish_pending=publish)
    return lint_job.LintJob(rt, enqueue, linter=linter, **kw)  # type: ignore[arg-type]


async def test_every_issued_certificate_is_linted_in_log_order_and_a_failure_is_a_finding(
    audit: asyncpg.Pool,
) -> None:
    certs = [_issued(f"c{i}.corp.internal") for i in range(5)]
    seqs = await _archive(audit, [certs[0], certs[1], b'{"not": "an event"}', *certs[2:]])
    linter, raised = FakeLinter({certs[3].serial}), []
    job = _job(audit, linter, raised, per_s=1000.0, backlog_max=32)
    assert await job.step() == 5
    assert linter.linted == [c.serial for c in certs]  # log order; the junk message is no certificate
    [(found, serial, codes)] = raised
    assert serial == certs[3].serial and codes == ["pkix.fake"]
    assert [(f.check, f.stream_seq) for f in found] == [("pkilint", seqs[certs[3].serial])]
    assert "fails pkilint: pkix.fake" in found[0].detail
    async with audit.acquire() as conn:
        covered = await lint_job.coverage(conn)
    assert (covered.issued, covered.clean, covered.failed, covered.passed_over, covered.waiting) == (5, 4, 1, 0, 0)
    assert covered.by_profile == {"tls-server": {"clean": 4, "failed": 1}}
    # Nothing new: the next turn lints nothing again.
    assert await job.step() == 0
    assert len(linter.linted) == 5


async def test_past_its_bound_the_oldest_are_passed_over_and_counted_never_silently(audit: asyncpg.Pool) -> None:
    certs = [_issued(f"b{i}.corp.internal") for i in range(45)]
    await _archive(audit, list(certs))
    linter, raised = FakeLinter(set()), []
    job = _job(audit, linter, raised, per_s=1000.0, backlog_max=40, batch=32)
    first = await job.run_batch()
    assert (first.passed_over, first.linted, first.more) == (5, 32, True)
    assert linter.linted == [c.serial for c in certs[5:37]]  # the newest 40 kept, the oldest 5 passed over
    async with audit.acquire() as conn:
        covered = await lint_job.coverage(conn)
        stretch = await conn.fetchrow("SELECT after_seq, through_seq, certificates FROM lint_passed_over")
    assert (covered.clean, covered.passed_over, covered.waiting) == (32, 5, 8)
    assert tuple(stretch) == (0, 5, 5)
    assert await job.step() == 8
    async with audit.acquire() as conn:
        covered = await lint_job.coverage(conn)
    assert covered.issued == covered.clean + covered.failed + covered.passed_over + covered.waiting == 45


async def test_lint_waits_behind_the_chained_head(audit: asyncpg.Pool) -> None:
    """A certificate archived past a gap (a replica's later group first) is not linted until the
    gap is filled: the job walks the log in order and its cursor never skips a position."""
    early, late = _issued("early.corp.internal"), _issued("late.corp.internal")
    async with audit.acquire() as conn, conn.transaction():
        await store.archive(conn, [(2, late.subject(ROOT), late.model_dump_json().encode())], ROOT)
    linter, raised = FakeLinter(set()), []
    job = _job(audit, linter, raised, per_s=1000.0, backlog_max=32)
    assert await job.step() == 0
    async with audit.acquire() as conn, conn.transaction():
        await store.archive(conn, [(1, early.subject(ROOT), early.model_dump_json().encode())], ROOT)
    assert await job.step() == 2
    assert linter.linted == [early.serial, late.serial]


async def test_one_replica_lints_at_a_time(audit: asyncpg.Pool) -> None:
    await _archive(audit, [_issued("one.corp.internal")])
    linter, raised = FakeLinter(set()), []
    job = _job(audit, linter, raised, per_s=1000.0, backlog_max=32)
    async with audit.acquire() as conn, conn.transaction():
        await conn.execute("SELECT through FROM lint_cursor FOR UPDATE")  # another replica's turn
        assert (await job.run_batch()).linted == 0
    assert (await job.run_batch()).linted == 1


async def test_the_job_paces_itself_to_its_rate(audit: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between whole batches it waits what the batch may take at `per_s` (so it never takes more
    than its share of the CPU, however far behind it is)."""
    await _archive(audit, [_issued(f"p{i}.corp.internal") for i in range(100)])
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(lint_job.asyncio, "sleep", sleep)
    linter, raised = FakeLinter(set()), []
    job = _job(audit, linter, raised, per_s=10.0, backlog_max=1000, batch=32)
    assert await job.step() == 100
    assert len(waits) == 3  # after each of the three whole batches; the last, partial one ends the step
    assert all(3.0 < w <= 3.2 for w in waits), waits  # 32 certificates at 10 a second
