"""Revocation's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.revocation.handlers import NAME, register
from shared.base.clock import Clock
from shared.base.settings import RevocationSettings
from shared.runtime.service import Runtime, create_service


def build(settings: RevocationSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the revocation service."""
    settings = settings or RevocationSettings()
    app, rt = create_service(NAME, settings, Path(__file__).parent / "migrations", clock=clock)
    register(rt, settings)
    return app, rt
