"""Validation's composition root."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from faststream import FastStream

from services.validation.endpoints import routes
from services.validation.handlers import NAME, register
from services.validation.ocsp import ResponderSet, ResponseCache
from services.validation.responder import ResponderKeeper
from services.validation.statuses import StatusView
from shared.base.clock import Clock
from shared.base.settings import ValidationSettings
from shared.runtime.service import Runtime, create_service


def build(settings: ValidationSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the validation service: the read model, queries, HTTP and the OCSP responder."""
    settings = settings or ValidationSettings()
    responders = ResponderSet(
        [],
        cache=ResponseCache(settings.ocsp_response_cache_entries),
        validity=timedelta(seconds=settings.ocsp_validity_s),
    )
    keeper = ResponderKeeper(settings, responders)

    def changed(serial: str | None, ca_id: str | None) -> None:
        # Whichever replica consumed it: free the responses cached about the serial, and replace
        # this replica's responder at once if the certificate revoked is its own.
        if serial is not None and ca_id is not None:
            responders.invalidate(ca_id, serial)
            keeper.certificate_revoked(ca_id, serial)

    statuses = StatusView(
        lambda: rt.pool,
        max_entries=settings.ocsp_status_entries,
        keep=timedelta(seconds=settings.ocsp_status_changes_keep_s),
        on_change=changed,
    )

    async def start(rt: Runtime) -> None:
        statuses.start()
        await keeper.start(rt)

    async def stop(rt: Runtime) -> None:
        await keeper.stop(rt)
        await statuses.stop()

    app, rt = create_service(
        NAME,
        settings,
        Path(__file__).parent / "migrations",
        clock=clock,
        on_start=start,
        on_stop=stop,
        routes=lambda rt: routes(rt, settings, responders, statuses),
        readiness=keeper.readiness,
    )
    register(rt, responders, keeper)
    return app, rt
