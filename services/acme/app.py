"""ACME's composition root: its schema, its provisioner key, the ACME resources over HTTPS, health and
metrics over HTTP, and the loops that keep it going (orders left processing, expired nonces, its
own certificate's renewal).

Ready means ready: /readyz answers 200 only once the database answers and ACME is served over TLS
with a certificate Certbus issued; until then it lists what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.acme.challenges import Resolver, Validator
from services.acme.dns01 import TxtLookup
from services.acme.finalize import BusFinalizer
from services.acme.lifecycle import BusRevoker
from services.acme.server import Acme, AcmeConfig
from services.acme.tls import ServerCertificate
from shared.base.logs import configure
from shared.base.settings import AcmeSettings
from shared.pki import provisioner_keys
from shared.runtime import db
from shared.runtime.consumer import TRANSIENT_ERRORS

log = logging.getLogger("certbus.acme")
NAME = "acme"
MIGRATIONS = Path(__file__).parent / "migrations"
NONCE_PRUNE_S = 60.0
RETRYABLE: tuple[type[BaseException], ...] = (OSError, TimeoutError, *TRANSIENT_ERRORS)
UNREADY: tuple[type[BaseException], ...] = (AssertionError, *RETRYABLE)
CERT_CHECK_S = 60.0
CERT_RETRY_S = 2.0


class AcmeService:
    """One ACME process."""

    def __init__(self, settings: AcmeSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.acme: Acme | None = None
        self.cert: ServerCertificate | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._acme_site = False

    async def start(self) -> None:
        s = self.settings
        pool = await db.create_pool(s.database_url, NAME, s.db_pool_min, s.db_pool_max)
        await db.migrate(pool, NAME, [MIGRATIONS])
        self.pool = pool
        key = provisioner_keys.load_or_create(s.acme_provisioner_key_file, whose="ACME's")
        finalizer = BusFinalizer(
            s, s.identity or NAME, s.acme_provisioner_id, key, s.acme_profile, timeout_s=s.acme_enroll_timeout_s
        )
        validator = Validator(
            Resolver.parse(s.acme_resolve),
            http_port=s.acme_http01_port,
            tls_alpn_port=s.acme_tlsalpn01_port,
            dns=TxtLookup.parse(s.acme_dns_server),
        )
        config = AcmeConfig(
            base_url=s.acme_base_url,
            validator=validator,
            finalizer=finalizer,
            revoker=BusRevoker(s, s.identity or NAME, timeout_s=s.acme_enroll_timeout_s),
            terms_of_service=s.acme_terms_of_service,
            eab_required=s.acme_eab_required,
            orders_per_hour=s.acme_orders_per_hour,
            failed_validations_per_hour=s.acme_failed_validations_per_hour,
        )
        self.acme = Acme(lambda: pool, config)
        self.cert = ServerCertificate(s, key)
        health = web.Application()
        health.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)])
        health.add_routes([web.get("/metrics", self._metrics)])
        await self._serve(health, s.http_host, s.http_port, None)
        self._tasks = [
            asyncio.create_task(self._every(CERT_CHECK_S, self._certificate), name="acme-certificate"),
            asyncio.create_task(self._every(s.acme_sweep_s, self.acme.sweep), name="acme-sweep"),
            asyncio.create_task(self._every(NONCE_PRUNE_S, self.acme.prune), name="acme-nonces"),
        ]
        log.info("ACME started", extra={"directory": f"{s.acme_base_url.rstrip('/')}/acme/directory"})

    async def _serve(self, app: web.Application, host: str, port: int, ssl_context: object) -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()  # type: ignore[arg-type]
        self._runners.append(runner)

    async def _certificate(self) -> float:
        """Keep the server certificate current, and serve ACME once there is one: when to look again
        (soon while there is none)."""
        assert self.cert is not None and self.acme is not None
        if not await self.cert.ensure():
            return CERT_RETRY_S
        if not self._acme_site:
            s = self.settings
            await self._serve(self.acme.application(), s.acme_host, s.acme_port, self.cert.context)
            self._acme_site = True
            log.info("ACME served over TLS", extra={"port": s.acme_port})
        return CERT_CHECK_S

    async def _every(self, period_s: float, step: Callable[[], Awaitable[object]]) -> None:
        """Run `step` every `period_s` (or after as many seconds as it returns), through failures."""
        while True:
            delay = period_s
            try:
                result = await step()
                if isinstance(result, float):
                    delay = result
            except RETRYABLE as e:
                log.warning("ACME background step failed; trying again", extra={"error": repr(e)[:300]})
            await asyncio.sleep(delay)

    def missing(self) -> list[str]:
        """What stops ACME from serving (empty once it can)."""
        missing = []
        if self.cert is None or not self._acme_site:
            problem = self.cert.problem if self.cert is not None else "not started"
            missing.append(f"ACME is not served over TLS yet: {problem}")
        return missing

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"service": NAME, "status": "alive"})

    async def _readyz(self, _: web.Request) -> web.Response:
        missing = self.missing()
        try:
            assert self.pool is not None
            await self.pool.fetchval("SELECT 1")
        except UNREADY as e:
            missing.append(f"database unreachable: {type(e).__name__}")
        return web.json_response(
            {"service": NAME, "ready": not missing, "missing": missing}, status=503 if missing else 200
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.acme is not None:
            await self.acme.close()
        for runner in reversed(self._runners):
            await runner.cleanup()
        if self.pool is not None:
            await self.pool.close()


async def main(settings: AcmeSettings | None = None) -> None:
    settings = settings or AcmeSettings()
    configure(settings.log_level, settings.log_format)
    service = AcmeService(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
    finally:
        await service.stop()
