"""An OCSP worker: one more process answering validation's HTTP port (SO_REUSEPORT), started and
watched by the service's process (`prefork`), as `python -m services.validation.worker FD`.

It serves the relying-party routes (OCSP, CRLs, CA certificates) from a pool of its own, with its
own `StatusView` (so a revocation committed before a request is answered `revoked` here too) and
response cache; it has no NATS connection and consumes nothing. Its settings and the responder keys
come over the socket pair at FD. /healthz, /readyz and /metrics answer what the service's process
answers (asked over that socket), with this worker's own checks added, so a probe on the shared port
gets the service's answer whichever process it reaches. It stops on SIGTERM, and when the service's
process goes away (the socket closes; PR_SET_PDEATHSIG too), so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket
import sys
from datetime import timedelta
from typing import Any

import asyncpg
import uvloop
from aiohttp import web

from services.validation import ipc
from services.validation.endpoints import OCSP_RESPONSES, routes
from services.validation.ocsp import ResponderSet, ResponseCache
from services.validation.statuses import StatusView
from shared.base import logs
from shared.base.clock import SystemClock
from shared.runtime import db

log = logging.getLogger("certbus.validation.worker")
ASK_TIMEOUT_S = 3.0
POLL_CHECK_TIMEOUT_S = 2.0
POOL_MAX = 4  # the poll's own connection, status reads, CRL and CA reads
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM when the process that started this one dies (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Worker:
    """One worker's state: its channel to the service's process, and what it serves."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: ipc.WorkerConfig) -> None:
        self.reader, self.writer, self.config = reader, writer, config
        self.responders = ResponderSet(
            [],
            cache=ResponseCache(config.ocsp_response_cache_entries),
            validity=timedelta(seconds=config.ocsp_validity_s),
        )
        self._pool: asyncpg.Pool | None = None
        self.statuses = StatusView(
            lambda: self.pool,
            max_entries=config.ocsp_status_entries,
            keep=timedelta(seconds=config.ocsp_status_changes_keep_s),
            on_change=self._changed,
        )
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._sent: dict[str, float] = {}  # OCSP responses by outcome, as far as reported
        self.serving = False
        self.closed = asyncio.Event()  # the service's process has gone away

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the worker's database pool is not open yet")
        return self._pool

    def _changed(self, serial: str | None, ca_id: str | None) -> None:
        if serial is not None and ca_id is not None:
            self.responders.invalidate(ca_id, serial)

    async def open(self) -> None:
        self._pool = await db.create_pool(self.config.database_url, "validation", 1, POOL_MAX)
        self.statuses.start()

    async def close(self) -> None:
        await self.statuses.stop()
        if self._pool is not None:
            await self._pool.close()

    async def listen(self) -> None:
        """Apply what the service's process sends until it closes the channel."""
        try:
            while True:
                message = await ipc.receive(self.reader)
                if message["op"] == "responders":
                    ipc.apply_responders(message, self.responders)
                elif message["op"] == "reply":
                    future = self._asks.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message["body"])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            for future in self._asks.values():
                if not future.done():
                    future.set_exception(ConnectionError("the service's process closed the channel"))

    async def ask(self, what: str) -> Any:
        """The service's process's answer to `health` or `metrics`."""
        if self.closed.is_set():
            raise ConnectionError("the service's process closed the channel")
        ask_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[ask_id] = future
        try:
            self.writer.write(ipc.frame({"op": "ask", "id": ask_id, "what": what}))
            async with asyncio.timeout(ASK_TIMEOUT_S):
                return await future
        finally:
            self._asks.pop(ask_id, None)

    async def own_missing(self) -> list[str]:
        """What this worker lacks to answer OCSP requests now."""
        missing = [] if self.serving else ["its HTTP port is not open yet"]
        try:
            async with asyncio.timeout(POLL_CHECK_TIMEOUT_S):
                await self.statuses.fresh()
        except Exception as exc:  # noqa: BLE001 - reported as what it lacks
            missing.append(f"its status polls fail ({type(exc).__name__})")
        return missing

    def _counts(self) -> dict[str, float]:
        """OCSP responses by outcome since the last report."""
        now: dict[str, float] = {}
        for metric in OCSP_RESPONSES.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    now[sample.labels["outcome"]] = sample.value
        delta = {k: v - self._sent.get(k, 0.0) for k, v in now.items() if v != self._sent.get(k, 0.0)}
        self._sent = now
        return delta

    async def report(self) -> None:
        """Tell the service's process every REPORT_EVERY_S whether this worker can serve."""
        while not self.closed.is_set():
            missing = await self.own_missing()
            message = {
                "op": "report",
                "pid": os.getpid(),
                "ready": not missing,
                "missing": missing,
                "served": ipc.served(self.responders),
                "counts": self._counts(),
                "polls": self.statuses.polls,
            }
            self.writer.write(ipc.frame(message))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ipc.REPORT_EVERY_S):
                    await self.closed.wait()

    def probe_routes(self) -> list[web.RouteDef]:
        """/healthz, /readyz and /metrics: the service's answer, with this worker's checks added."""

        async def report() -> dict[str, Any]:
            missing = await self.own_missing()
            try:
                service: dict[str, Any] = await self.ask("health")
            except Exception as exc:  # noqa: BLE001 - reported
                service = {"service": "validation", "status": "degraded", "ready": False, "missing": []}
                missing.append(f"the service's process does not answer ({type(exc).__name__})")
            worker_missing = [f"OCSP worker {self.config.index} (pid {os.getpid()}): {m}" for m in missing]
            return {
                **service,
                "status": service.get("status", "degraded") if not missing else "degraded",
                "ready": bool(service.get("ready")) and not missing,
                "missing": [*service.get("missing", []), *worker_missing],
                "answered_by": {"ocsp_worker": self.config.index, "pid": os.getpid()},
            }

        async def healthz(_: web.Request) -> web.Response:
            answer = await report()
            return web.json_response(answer, status=200 if answer["status"] == "ok" else 503)

        async def readyz(_: web.Request) -> web.Response:
            answer = await report()
            return web.json_response(answer, status=200 if answer["ready"] else 503)

        async def metrics(_: web.Request) -> web.Response:
            try:
                text = await self.ask("metrics")
            except Exception as exc:  # noqa: BLE001 - reported
                return web.Response(status=503, text=f"the service's process does not answer ({type(exc).__name__})")
            return web.Response(text=text, content_type="text/plain", charset="utf-8")

        return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


async def serve(channel_fd: int) -> None:
    """Run one worker on the socket pair at `channel_fd` until SIGTERM or the channel closes."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=channel_fd))
    first = await ipc.receive(reader)
    if first["op"] != "config":
        raise ValueError(f"a worker's first message must be its config, not {first['op']!r}")
    config = ipc.WorkerConfig.of(first)
    logs.configure(config.log_level, config.log_format)
    worker = Worker(reader, writer, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    listening = asyncio.create_task(worker.listen(), name="ocsp-worker-channel")
    await worker.open()
    app = web.Application()
    app.add_routes(worker.probe_routes())
    app.add_routes(
        routes(lambda: worker.pool, SystemClock(), config.public_base_url, worker.responders, worker.statuses)
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.http_host, config.http_port, reuse_port=True).start()
    worker.serving = True
    reporting = asyncio.create_task(worker.report(), name="ocsp-worker-report")
    log.info("OCSP worker serving", extra={"worker": config.index, "http": f"{config.http_host}:{config.http_port}"})
    closed = asyncio.create_task(worker.closed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if worker.closed.is_set() and not stop.is_set():
        log.warning("the service's process went away: stopping", extra={"worker": config.index})
    worker.serving = False
    await runner.cleanup()
    for task in (reporting, listening, closed, stopped):
        task.cancel()
    await worker.close()
    writer.close()


def main() -> None:
    _die_with_parent()
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        raise SystemExit("usage: python -m services.validation.worker FD (started by validation, not by hand)")
    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
