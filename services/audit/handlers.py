"""Audit's subscriber (archives everything, even malformed events) and its queries."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import nats.js.errors
from pydantic import ValidationError

from services.audit import check_store, checks, domain, lint_job, replay, report, store, verify
from services.audit.checkpoints import Checkpointer
from services.audit.incremental import IncrementalCheck
from shared.base.settings import AuditSettings
from shared.contract.binding import Unbound, loads
from shared.contract.bounds import MAX_FINDINGS
from shared.contract.events import (
    AuditCheckpointSigned,
    AuditFindingRaised,
    CertificateIssued,
    CertificateRevoked,
    LintResult,
)
from shared.contract.queries import (
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
    LintCoverage,
    ReplayAnswer,
    ReplayProgress,
    ReplayQuery,
    ReportAnswer,
    ReportQuery,
    RevocationsAnswer,
    RevocationsQuery,
    VerifyAnswer,
)
from shared.pki.crypto import normalise_serial
from shared.runtime.consumer import Delivery
from shared.runtime.db import SessionLock
from shared.runtime.metrics import EVENTS_CONSUMED
from shared.runtime.outbox import OutboxEntry, enqueue_many
from shared.runtime.service import Runtime
from shared.runtime.stream import read_object

NAME = "audit"
log = logging.getLogger("certbus.audit")


def register(rt: Runtime, checkpointer: Checkpointer, settings: AuditSettings) -> None:
    """Attach audit's consumers and queries."""
    rt.publishes(AuditCheckpointSigned, AuditFindingRaised)

    async def archive(items: list[tuple[tuple[str, bytes], Delivery]]) -> list[OutboxEntry]:
        """Archive a group verbatim and, in the same transaction, raise a finding for each new message
        that is not a valid event on its subject (the scheduled check then finds it raised already)."""
        async with rt.pool.acquire() as conn, conn.transaction():
            messages = [(delivery.seq, subject, data) for (subject, data), delivery in items]
            archived = await store.archive(conn, messages, rt.root)
            found = [checks.Finding(p.check, seq, p.detail) for seq, p in archived.problems]
            entries = await enqueue_findings(conn, rt, found)
        EVENTS_CONSUMED.labels(NAME, "any").inc(archived.count)
        checkpointer.archived(archived.count)
        return entries

    # Every message verbatim, readable or not (the archive is the evidence): a raw batch consumer
    # hands `archive` each pull's (subject, body) pairs at once (see Runtime.batch_consumer).
    rt.batch_consumer(
        "archive",
        None,
        archive,
        description="Archive every message verbatim, readable or not: the archive is the evidence.",
    )

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
            raws = await store.issued_events(conn, query.request_id)
        return IssuedAnswer(request_id=query.request_id, event=_first_issued(raws))

    @rt.query("revocations")
    async def revocations(query: RevocationsQuery) -> RevocationsAnswer:
        """A page of revocations (public: every CRL lists them), validated on their own subject."""
        async with rt.pool.acquire() as conn:
            rows = await store.revocations(conn, query.after, query.since, query.limit)
            through, _, _ = await store.head(conn)
        valid = []
        for seq, raw in rows:
            with contextlib.suppress(ValidationError):
                valid.append((seq, CertificateRevoked.model_validate_json(raw).model_dump(mode="json")))
        return RevocationsAnswer(events=valid, through=through)

    @rt.query("lint")
    async def lint_coverage() -> LintCoverage:
        """Post-issuance pkilint's coverage: issued, linted clean / failing, passed over, waiting."""
        async with rt.pool.acquire() as conn:
            return await lint_job.coverage(conn)

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
        inventory = report.Inventory(root=rt.root)
        async with rt.pool.acquire() as conn:
            through, _, _ = await store.head(conn)
            async for row in store.archive_rows(conn, through=through):
                inventory.add(row.seq, row.subject, row.raw)
        answer = report.summarise(inventory, query.now or rt.clock.now(), query.expiring_days, query.limit)
        return answer.model_copy(update={"seconds": round(time.perf_counter() - started, 3)})

    @rt.query("verify")
    async def run_verify() -> VerifyAnswer | Failure:
        try:
            return await verify.verify(
                rt.pool,
                rt.js,
                stream=rt.settings.stream,
                root=rt.root,
                live_schema=NAME,
                public_key=checkpointer.public_key,
            )
        except replay.StreamUnreadable as exc:
            return Failure(error=str(exc), code="stream_unreadable")

    progress = replay.Progress()

    @rt.query("replay")
    async def run_replay(query: ReplayQuery) -> ReplayAnswer | Failure:
        try:
            answer = await replay.replay(
                rt.pool, rt.js, stream=rt.settings.stream, root=rt.root, live_schema=NAME, progress=progress
            )
        except replay.ReplayBusy as exc:
            return Failure(error=str(exc))
        except replay.StreamUnreadable as exc:
            return Failure(error=str(exc), code="stream_unreadable")
        if query.verify:
            verified = await run_verify()
            if isinstance(verified, Failure):
                return verified
            answer = answer.model_copy(update={"verified": verified})
        return answer

    @rt.query("replay_progress")
    async def replay_progress() -> ReplayProgress:
        return ReplayProgress(
            running=progress.running, done=progress.done, total=progress.total, rate_per_s=round(progress.rate(), 1)
        )


# What `findings` lists: signing's refusals before release (and, on older logs, audit's pkilint alerts),
# profile lint verdicts, and audit's findings (pkilint after issuance, messages that are not valid
# events on their subject, the scheduled checks).
FINDING_TYPES = ["CertificateLintFailed", "ProfileLinted", "AuditFindingRaised"]


async def check_archive(rt: Runtime, crl_grace_s: float) -> tuple[int, list[checks.Finding]]:
    """Run the consistency checks over the whole chained archive, in log order, then check each
    issuer's latest CRL (fetched from the object store) against the revocations before it. Only
    up to the chain's head: replicas archive groups concurrently, and a later event archived
    before an earlier one (an issuance before its approval) is not the log's order yet. What the
    checks learn of each certificate is kept in temporary tables on the run's one connection."""
    full = IncrementalCheck(rt.root, tables=check_store.TEMPORARY)
    async with rt.pool.acquire() as conn:
        await check_store.create_temporary(conn)
        try:
            await full.catch_up(conn)
            found = full.take_findings() + await crl_findings(rt, full, conn, crl_grace_s)
        finally:
            await check_store.drop_temporary(conn)
    return full.checker.events, found


async def crl_findings(
    rt: Runtime, check: IncrementalCheck, db: asyncpg.Pool | asyncpg.Connection, crl_grace_s: float
) -> list[checks.Finding]:
    """The latest CRL of each issuer (shard) a revocation is due in, fetched from the object store one at
    a time and checked against the revocations before it (a shard nobody revoked from is not fetched)."""

    async def fetch(key: str) -> bytes | None:
        latest = check.checker.latest_crl.get(key)
        return None if latest is None else await _fetch(rt, latest.bucket, latest.name)

    return await check.crl_findings(db, fetch, rt.clock.now(), timedelta(seconds=crl_grace_s))


async def _fetch(rt: Runtime, bucket: str, name: str) -> bytes | None:
    """An object's bytes, or None if the object store does not have it."""
    try:
        return await read_object(rt.js, bucket, name)
    except (nats.js.errors.NotFoundError, nats.js.errors.BadObjectMetaError, nats.js.errors.DigestMismatchError):
        return None


class RaisedFindings:
    """The scheduled check's findings, each raised as AuditFindingRaised (once: `enqueue_findings`) in the
    transaction of the batch that found it, and published once that commits."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    async def record(self, conn: asyncpg.Connection, found: list[checks.Finding]) -> list[OutboxEntry]:
        return await enqueue_findings(conn, self._rt, found)

    async def publish(self, entries: list[OutboxEntry]) -> None:
        await self._rt.publish_pending(entries)


async def raise_findings(rt: Runtime, check: IncrementalCheck, lock: SessionLock, crl_grace_s: float) -> None:
    """The scheduled run, on the one replica holding `lock`: bring `check` (whose sink raises what each
    batch finds) up to the chained head, reading only what was archived since its last run, then judge
    the latest CRLs again and raise what is new."""
    if not await lock.held():
        return  # another replica runs the checks
    await check.catch_up(rt.pool)
    found = check.take_findings()  # none with a sink; any if `check` has none
    crls = await crl_findings(rt, check, rt.pool, crl_grace_s)  # judged again each run, against the latest CRLs
    async with rt.pool.acquire() as conn, conn.transaction():
        entries = await enqueue_findings(conn, rt, found + crls)
    check.raised(found)
    await rt.publish_pending(entries)


async def enqueue_findings(
    conn: asyncpg.Connection,
    rt: Runtime,
    found: list[checks.Finding],
    *,
    cause: CertificateIssued | None = None,
    lint: list[LintResult] | None = None,
) -> list[OutboxEntry]:
    """Enqueue an AuditFindingRaised (aggregate id `<check>-<seq>`) for each finding not raised before,
    in the caller's transaction; `cause` and `lint` are the issued certificate and its pkilint errors."""
    now = rt.clock.now()
    new = await store.new_findings(conn, [(f.check, f.stream_seq, f.detail) for f in found], now)
    events = []
    for f in found:
        if (f.check, f.stream_seq) not in new:
            continue
        new.discard((f.check, f.stream_seq))  # once, even if a group names it twice
        log.error("audit finding", extra={"check": f.check, "seq": f.stream_seq, "detail": f.detail})
        aggregate_id = f"{f.check}-{f.stream_seq}"
        detail = domain.safe_text(f.detail)
        findings = (lint or [])[:MAX_FINDINGS]
        events.append(
            AuditFindingRaised.caused_by(
                cause,
                producer=NAME,
                at=now,
                aggregate_id=aggregate_id,
                check=f.check,
                stream_seq=f.stream_seq,
                detail=detail,
                serial=cause.serial,
                findings=findings,
            )
            if cause is not None
            else AuditFindingRaised.first(
                aggregate_id,
                producer=NAME,
                at=now,
                correlation_id=f"check-{f.check}-{f.stream_seq}",
                check=f.check,
                stream_seq=f.stream_seq,
                detail=detail,
                findings=findings,
            )
        )
    return await enqueue_many(conn, events, rt.root)


def _first_issued(raws: list[bytes]) -> dict[str, Any] | None:
    """The first of a request's archived `CertificateIssued` bodies that its schema accepts."""
    for raw in raws:
        try:
            CertificateIssued.model_validate_json(raw)
        except ValidationError:
            continue
        event: dict[str, Any] = domain.displayable(json.loads(raw))
        return event
    return None


# An entry whose occurred_at the archive could not read (the answer's schema requires a time).
UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _entry(row: asyncpg.Record) -> HistoryEntry:
    """A history or findings entry; the archived body is shown as it is, or described if unreadable."""
    try:
        event = domain.displayable(loads(bytes(row["raw"])))
    except Unbound as exc:
        event = {"unreadable": domain.safe_text(str(exc))}
    return HistoryEntry(
        stream_seq=row["stream_seq"],
        event_type=domain.safe_text(row["event_type"], domain.SHORT_MAX),
        subject=row["subject"],
        producer=row["producer"] or "?",
        actor=domain.actor(event),
        occurred_at=row["occurred_at"] or UNKNOWN_TIME,
        event=event,
    )
