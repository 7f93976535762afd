"""Enrollment's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.enrollment.handlers import NAME, expire_overdue, readiness, register
from services.enrollment.replay import LogPosition
from services.enrollment.schedule import RenewalSchedule
from shared.base.clock import Clock
from shared.base.settings import EnrollmentSettings
from shared.runtime.loops import WakeableLoop
from shared.runtime.service import Runtime, create_service


def build(settings: EnrollmentSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the enrollment service."""
    settings = settings or EnrollmentSettings()

    async def on_start(rt: Runtime) -> None:
        await position.mark_start()  # before the consumer runs: what was on the log before this process
        expiry.start()
        schedule.loop.start()

    async def on_stop(rt: Runtime) -> None:
        await expiry.stop()
        await schedule.loop.stop()

    app, rt = create_service(
        NAME,
        settings,
        Path(__file__).parent / "migrations",
        clock=clock,
        on_start=on_start,
        on_stop=on_stop,
        readiness=readiness,
    )
    # Pending approvals whose window closed are rejected (checked every pending_sweep_s).
    position = LogPosition(rt)
    expiry = WakeableLoop("approval-expiry", lambda: expire_overdue(rt, position), idle_s=settings.pending_sweep_s)
    # Renewal-due, expired and superseded events, sent when due (checked every renewal_check_s).
    schedule = RenewalSchedule(rt, settings, position)
    register(rt, settings, schedule, position)
    return app, rt
