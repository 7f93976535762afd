"""Audit's subscriber (archives everything, even malformed events) and its queries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import asyncpg
import nats.js.errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from faststream.nats.annotations import NatsMessage
from prometheus_client import Counter

from services.audit import checks, domain, replay, report, store, verify
from services.audit.checkpoints import Checkpointer
from shared.consumer import Delivery, EventRejected, GroupCommit, apply_events
from shared.crypto import normalise_serial
from shared.events import (
    AuditCheckpointSigned,
    AuditFindingRaised,
    CertificateIssued,
    CertificateLintFailed,
    Event,
    LintResult,
)
from shared.lint import errors, lint_certificate
from shared.metrics import EVENTS_CONSUMED
from shared.outbox import OutboxEntry, enqueue
from shared.queries import (
    CheckAnswer,
    CheckFinding,
    Failure,
    FindingsAnswer,
    FindingsQuery,
    HistoryAnswer,
    HistoryEntry,
    HistoryQuery,
    IssuedAnswer,
    IssuedQuery,
    ReplayAnswer,
    ReplayProgress,
    ReplayQuery,
    ReportAnswer,
    ReportQuery,
    VerifyAnswer,
)
from shared.service import Runtime
from shared.settings import AuditSettings
from shared.stream import read_object

NAME = "audit"
log = logging.getLogger("certbus.audit")
LINTED = Counter(
    "certbus_certificates_linted_total", "Issued certificates linted after issuance, by outcome", ["outcome"]
)


def register(rt: Runtime, checkpointer: Checkpointer, settings: AuditSettings) -> None:
    """Attach audit's consumers and queries."""
    rt.publishes(CertificateLintFailed, AuditCheckpointSigned, AuditFindingRaised)
    if settings.lint_after_issuance:
        linter: GroupCommit[Event] = GroupCommit(lambda items: lint_issued(rt, items), rt.publish_pending)

        @rt.consumer("lint", [CertificateIssued.filter(rt.root)])
        async def on_issued(event: CertificateIssued, msg: NatsMessage) -> None:
            """pkilint every issued certificate, off the signing path; a finding is an operator alert."""
            await linter.submit(event, Delivery.of(msg))

    async def archive(items: list[tuple[tuple[str, bytes], Delivery]]) -> list[OutboxEntry]:
        async with rt.pool.acquire() as conn, conn.transaction():
            n = await store.archive(conn, [(delivery.seq, subject, data) for (subject, data), delivery in items])
        EVENTS_CONSUMED.labels(NAME, "any").inc(n)
        checkpointer.archived(n)
        return []

    archiver: GroupCommit[tuple[str, bytes]] = GroupCommit(archive, rt.publish_pending)

    @rt.consumer("archive", [f"{rt.root}.>"])
    async def on_message(msg: NatsMessage) -> None:
        """Archive every message verbatim, readable or not: the archive is the evidence."""
        raw = msg.raw_message
        await archiver.submit((raw.subject, raw.data), Delivery.of(msg))

    @rt.query("history")
    async def history(query: HistoryQuery) -> HistoryAnswer:
        serial = normalise_serial(query.serial)
        async with rt.pool.acquire() as conn:
            cert_id, rows = await store.history(conn, serial)
        return HistoryAnswer(
            serial=serial,
            cert_id=cert_id,
            events=[_entry(r) for r in rows],
        )

    @rt.query("issued")
    async def issued(query: IssuedQuery) -> IssuedAnswer:
        async with rt.pool.acquire() as conn:
            raw = await store.issued_event(conn, query.request_id)
        return IssuedAnswer(request_id=query.request_id, event=json.loads(bytes(raw)) if raw is not None else None)

    @rt.query("findings")
    async def findings(query: FindingsQuery) -> FindingsAnswer:
        async with rt.pool.acquire() as conn:
            rows = await store.events_of_types(conn, FINDING_TYPES, query.limit)
        return FindingsAnswer(findings=[_entry(r) for r in rows])

    @rt.query("check")
    async def run_check() -> CheckAnswer:
        started = time.perf_counter()
        events, found = await check_archive(rt, settings.crl_check_grace_s)
        return CheckAnswer(
            events=events,
            findings=[CheckFinding(check=f.check, stream_seq=f.stream_seq, detail=f.detail) for f in found],
            seconds=round(time.perf_counter() - started, 3),
        )

    @rt.query("report")
    async def run_report(query: ReportQuery) -> ReportAnswer:
        started = time.perf_counter()
        inventory = report.Inventory()
        async with rt.pool.acquire() as conn:
            async for row in store.archive_rows(conn):
                inventory.add(row["stream_seq"], bytes(row["raw"]))
        answer = report.summarise(inventory, query.now or rt.clock.now(), query.expiring_days, query.limit)
        return answer.model_copy(update={"seconds": round(time.perf_counter() - started, 3)})

    @rt.query("verify")
    async def run_verify() -> VerifyAnswer:
        return await verify.verify(rt.pool, rt.js, rt.settings.stream, f"{rt.root}.>", NAME, checkpointer.public_key)

    progress = replay.Progress()

    @rt.query("replay")
    async def run_replay(query: ReplayQuery) -> ReplayAnswer | Failure:
        try:
            answer = await replay.replay(rt.pool, rt.js, rt.settings.stream, f"{rt.root}.>", NAME, progress)
        except replay.ReplayBusy as exc:
            return Failure(error=str(exc))
        if query.verify:
            answer = answer.model_copy(update={"verified": await run_verify()})
        return answer

    @rt.query("replay_progress")
    async def replay_progress() -> ReplayProgress:
        return ReplayProgress(
            running=progress.running, done=progress.done, total=progress.total, rate_per_s=round(progress.rate(), 1)
        )


FINDING_TYPES = ["CertificateLintFailed", "ProfileLinted", "AuditFindingRaised"]


async def check_archive(rt: Runtime, crl_grace_s: float) -> tuple[int, list[checks.Finding]]:
    """Run the consistency checks over the whole archive, in log order, then check each issuer's
    latest CRL (fetched from the object store) against the revocations before it."""
    checker = checks.Checker()
    async with rt.pool.acquire() as conn:
        async for row in store.archive_rows(conn):
            checker.add(row["stream_seq"], bytes(row["raw"]))
    crls = {issuer: await _fetch(rt, crl.bucket, crl.name) for issuer, crl in checker.latest_crl.items()}
    grace = timedelta(seconds=crl_grace_s)
    return checker.events, checker.findings + checker.crl_findings(crls, rt.clock.now(), grace)


async def _fetch(rt: Runtime, bucket: str, name: str) -> bytes | None:
    """An object's bytes, or None if the object store does not have it."""
    try:
        return await read_object(rt.js, bucket, name)
    except (nats.js.errors.NotFoundError, nats.js.errors.BadObjectMetaError, nats.js.errors.DigestMismatchError):
        return None


async def raise_findings(rt: Runtime, crl_grace_s: float) -> int:
    """The scheduled run: publish each finding not raised before as AuditFindingRaised."""
    _, found = await check_archive(rt, crl_grace_s)
    entries = []
    async with rt.pool.acquire() as conn, conn.transaction():
        for f in found:
            if not await store.new_finding(conn, f.check, f.stream_seq, f.detail, rt.clock.now()):
                continue
            log.error("consistency check failed", extra={"check": f.check, "seq": f.stream_seq, "detail": f.detail})
            finding = AuditFindingRaised(
                aggregate_id=f"{f.check}-{f.stream_seq}",
                occurred_at=rt.clock.now(),
                correlation_id=f"check-{f.check}-{f.stream_seq}",
                producer=NAME,
                check=f.check,
                stream_seq=f.stream_seq,
                detail=f.detail,
            )
            entries.append(await enqueue(conn, finding, rt.root))
    await rt.publish_pending(entries)
    return len(entries)


def _entry(row: asyncpg.Record) -> HistoryEntry:
    event = json.loads(bytes(row["raw"]))
    return HistoryEntry(
        stream_seq=row["stream_seq"],
        event_type=row["event_type"],
        subject=row["subject"],
        producer=row["producer"] or "?",
        actor=domain.actor(event) if isinstance(event, dict) else "?",
        occurred_at=row["occurred_at"],
        event=event,
    )


async def lint_issued(rt: Runtime, items: list[tuple[Event, Delivery]]) -> list[OutboxEntry]:
    """Lint a group of issued certificates in a worker thread, then record findings and progress."""
    certs = {}
    for event, _ in items:
        if not isinstance(event, CertificateIssued):
            raise EventRejected(f"audit's lint consumer does not take {event.event_type}")
        certs[event.event_id] = event.cert_pem
    verdicts = await asyncio.get_running_loop().run_in_executor(_LINT_WORKER, _lint_all, certs)

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        assert isinstance(event, CertificateIssued)
        found = verdicts[event.event_id]
        LINTED.labels("error" if found else "clean").inc()
        if not found:
            return []
        log.error(
            "an issued certificate fails pkilint",
            extra={"serial": event.serial, "profile": event.profile, "codes": [f.code for f in found]},
        )
        alert = CertificateLintFailed(
            aggregate_id=str(uuid.uuid4()),
            occurred_at=rt.clock.now(),
            correlation_id=event.correlation_id,
            causation_id=str(event.event_id),
            producer=NAME,
            stage="post-issuance",
            request_id=event.aggregate_id,
            serial=event.serial,
            profile=event.profile,
            findings=found,
        )
        return [await enqueue(conn, alert, rt.root)]

    async with rt.pool.acquire() as conn, conn.transaction():
        return await apply_events(conn, rt.durable("lint"), items, apply)


def _lowest_priority() -> None:
    """Run the lint thread at nice 19: pkilint (~8 ms a certificate) then uses only CPU that
    issuance leaves idle, and catches up after a burst instead of slowing it down."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


_LINT_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pkilint", initializer=_lowest_priority)


def _lint_all(certs: dict[uuid.UUID, str]) -> dict[uuid.UUID, list[LintResult]]:
    verdicts = {}
    for event_id, pem in certs.items():
        try:
            der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            verdicts[event_id] = [LintResult(severity="FATAL", code="certbus.not_a_certificate", message=str(exc))]
            continue
        verdicts[event_id] = [
            LintResult(severity=f.severity, code=f.code, message=f.message or f.path)
            for f in errors(lint_certificate(der))
        ]
    return verdicts
