"""Revocation's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from services.revocation.handlers import NAME, filters, register
from shared.clock import Clock
from shared.service import Runtime, create_service
from shared.settings import RevocationSettings
from shared.stream import ensure_consumer_filters


async def _update_consumer(rt: Runtime) -> None:
    """A durable created by an earlier release lacks revocation orders: give it today's filters."""
    await ensure_consumer_filters(rt.js, rt.settings.stream, rt.durable("requests"), filters(rt.root))


def build(settings: RevocationSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the revocation service."""
    settings = settings or RevocationSettings()
    app, rt = create_service(
        NAME, settings, Path(__file__).parent / "migrations", clock=clock, on_start=_update_consumer
    )
    register(rt)
    return app, rt
