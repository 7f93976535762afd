"""Validation's composition root."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from faststream import FastStream

from services.validation.endpoints import routes
from services.validation.handlers import NAME, register
from services.validation.ocsp import ResponderSet
from services.validation.responder import ResponderKeeper
from shared.base.clock import Clock
from shared.base.settings import ValidationSettings
from shared.runtime.service import Runtime, create_service


def build(settings: ValidationSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the validation service: the read model, queries, HTTP and the OCSP responder."""
    settings = settings or ValidationSettings()
    responders = ResponderSet([], validity=timedelta(seconds=settings.ocsp_validity_s))
    keeper = ResponderKeeper(settings, responders)
    app, rt = create_service(
        NAME,
        settings,
        Path(__file__).parent / "migrations",
        clock=clock,
        on_start=keeper.start,
        on_stop=keeper.stop,
        routes=lambda rt: routes(rt, settings, responders),
        readiness=keeper.readiness,
    )
    register(rt, responders, keeper)
    return app, rt
