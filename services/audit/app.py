"""Audit's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.audit.checkpoints import Checkpointer
from services.audit.handlers import NAME, RaisedFindings, enqueue_findings, raise_findings, register
from services.audit.incremental import IncrementalCheck
from services.audit.lint_job import LintJob
from shared.base.clock import Clock
from shared.base.settings import AuditSettings
from shared.runtime.db import SessionLock
from shared.runtime.loops import WakeableLoop
from shared.runtime.service import Runtime, create_service


def build(settings: AuditSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the audit service."""
    settings = settings or AuditSettings()

    async def on_start(rt: Runtime) -> None:
        checkpointer.loop.start()
        checker.start()
        if linting is not None:
            linting.start()

    async def on_stop(rt: Runtime) -> None:
        await checkpointer.loop.stop()
        await checker.stop()
        await checks_lock.release()
        if linting is not None:
            await linting.stop()
            lint.close()

    # Audit rebuilds itself: after losing its tables it starts, and `certbus audit replay` archives
    # the log again from sequence 1 (the same chain hashes), so it is not refused.
    app, rt = create_service(
        NAME,
        settings,
        Path(__file__).parent / "migrations",
        clock=clock,
        on_start=on_start,
        on_stop=on_stop,
        lost_database="ignore",
    )
    checkpointer = Checkpointer(rt, settings)  # the hooks above run after this line, at start-up
    register(rt, checkpointer, settings)
    # The consistency checks also run on a schedule, each run over what was archived since the last;
    # each new finding is published once.
    # One replica at a time runs them (each run goes on from the state the last one stored).
    incremental = IncrementalCheck(rt.root, sink=RaisedFindings(rt))
    checks_lock = SessionLock(settings.database_url, f"certbus-audit-checks:{rt.root}")
    checker = WakeableLoop(
        "audit-checks",
        lambda: raise_findings(rt, incremental, checks_lock, settings.crl_check_grace_s),
        idle_s=settings.check_interval_s,
    )
    # pkilint of every issued certificate, after issuance and off its path: a background job over
    # the archive at a capped rate, its coverage counted (services/audit/lint_job.py).
    lint = LintJob(
        rt,
        lambda conn, found, cause, results: enqueue_findings(conn, rt, found, cause=cause, lint=results),
        per_s=settings.lint_per_s,
        backlog_max=settings.lint_backlog_max,
    )
    linting = WakeableLoop("audit-lint", lint.step, idle_s=1.0) if settings.lint_after_issuance else None
    return app, rt
