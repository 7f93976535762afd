"""Validation's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.validation.handlers import NAME, register, routes
from shared.clock import Clock
from shared.service import Runtime, create_service
from shared.settings import ValidationSettings


def build(settings: ValidationSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the validation service."""
    settings = settings or ValidationSettings()
    app, rt = create_service(NAME, settings, Path(__file__).parent / "migrations", clock=clock, routes=routes)
    register(rt)
    return app, rt
