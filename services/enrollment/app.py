"""Enrollment's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.enrollment.handlers import NAME, register
from shared.clock import Clock
from shared.service import Runtime, create_service
from shared.settings import EnrollmentSettings


def build(settings: EnrollmentSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the enrollment service."""
    settings = settings or EnrollmentSettings()
    app, rt = create_service(NAME, settings, Path(__file__).parent / "migrations", clock=clock)
    register(rt, settings)
    return app, rt
