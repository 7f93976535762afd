"""Validation's composition root."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from faststream import FastStream
from prometheus_client import generate_latest

from services.validation.endpoints import routes
from services.validation.handlers import NAME, register
from services.validation.ocsp import ResponderSet, ResponseCache
from services.validation.prefork import OcspWorkers
from services.validation.responder import ResponderKeeper
from services.validation.statuses import StatusView
from shared.base.clock import Clock
from shared.base.settings import ValidationSettings
from shared.runtime.service import Readiness, Runtime, _own_health, create_service


def build(settings: ValidationSettings | None = None, clock: Clock | None = None) -> tuple[FastStream, Runtime]:
    """Wire the validation service: the read model, queries, HTTP and the OCSP responder (and its
    `ocsp_workers - 1` responder workers sharing the HTTP port, see `prefork`)."""
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

    async def answer_worker(what: str) -> Any:
        # A probe that reached a worker gets the service's answer, as if it had reached this process.
        return await _own_health(rt) if what == "health" else generate_latest().decode()

    workers = OcspWorkers(settings, responders, answer_worker) if settings.ocsp_workers > 1 else None
    if workers is not None:
        responders.on_change = workers.sync

    async def readiness(rt: Runtime) -> Readiness:
        own = await keeper.readiness(rt)
        if workers is None:
            return own
        facts = {**own.facts, "ocsp_workers": workers.facts()}
        return Readiness(missing=[*own.missing, *workers.missing()], facts=facts)

    async def start(rt: Runtime) -> None:
        statuses.start()
        await keeper.start(rt)
        if workers is not None:
            await workers.start()

    async def stop(rt: Runtime) -> None:
        if workers is not None:
            await workers.stop()
        await keeper.stop(rt)
        await statuses.stop()

    app, rt = create_service(
        NAME,
        settings,
        Path(__file__).parent / "migrations",
        clock=clock,
        on_start=start,
        on_stop=stop,
        routes=lambda rt: routes(lambda: rt.pool, rt.clock, settings.public_base_url, responders, statuses),
        readiness=readiness,
        reuse_port=workers is not None,
    )
    register(rt, responders, keeper)
    return app, rt
