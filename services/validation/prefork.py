"""Validation's OCSP workers, as the service's process runs them: `CERTBUS_OCSP_WORKERS - 1` more
processes answering its HTTP port (SO_REUSEPORT: the kernel spreads new connections over every
process bound to it), like gunicorn's prefork, each a `services.validation.worker`.

The service's process (worker 0) keeps everything else: the NATS consumers, the responder keeper
that enrolls and renews, the heartbeat. It gives each worker its settings and, whenever they change,
every responder certificate and key over a socket pair (inherited by that worker alone: never on a
command line, in an environment or on the log). Each worker reports every second whether it can
serve; the service is ready only while every worker is ready and serves the current responders. A
worker that exits is started again (after 0.5 s, doubling to 30 s while it keeps failing), one that
stops reporting for SILENT_KILL_S is killed and started again; meanwhile the service is not ready.
Stopping the service stops every worker (SIGTERM, then SIGKILL after STOP_TIMEOUT_S), and a worker
whose service process dies stops by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.validation import ipc
from services.validation.endpoints import OCSP_RESPONSES
from services.validation.ocsp import ResponderSet
from shared.base.settings import ValidationSettings

log = logging.getLogger("certbus.validation.prefork")
SUPERVISE_EVERY_S = 0.2
SILENT_AFTER_S = 3.0  # no report for this long: not ready
SILENT_KILL_S = 10.0  # no report for this long: killed and started again
FIRST_RESTART_S = 0.5
MAX_RESTART_S = 30.0
STOP_TIMEOUT_S = 5.0
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    writer: asyncio.StreamWriter | None = None
    listener: asyncio.Task[None] | None = None
    started: float = 0.0
    report: dict[str, Any] | None = None
    reported: float = 0.0
    restarts: int = 0
    exited: str | None = None  # why the last one ended, while it is not running
    restart_at: float = 0.0
    backoff: float = FIRST_RESTART_S
    asks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


Ask = Callable[[str], Awaitable[Any]]


class OcspWorkers:
    """The responder workers of one validation process, and what health says about them."""

    def __init__(self, settings: ValidationSettings, responders: ResponderSet, answer: Ask) -> None:
        if settings.ocsp_workers > 1 and settings.http_port == 0:
            raise ValueError("CERTBUS_OCSP_WORKERS > 1 needs a fixed CERTBUS_HTTP_PORT for the workers to share")
        self.settings = settings
        self.responders = responders
        self._answer = answer  # the service's answer to a worker's `ask` (health, metrics)
        self.workers = [_Worker(i) for i in range(1, settings.ocsp_workers)]
        self._task: asyncio.Task[None] | None = None
        self.stopping = False

    def _config(self, index: int) -> ipc.WorkerConfig:
        s = self.settings
        return ipc.WorkerConfig(
            index=index,
            database_url=s.database_url,
            http_host=s.http_host,
            http_port=s.http_port,
            public_base_url=s.public_base_url,
            ocsp_validity_s=s.ocsp_validity_s,
            ocsp_status_entries=s.ocsp_status_entries,
            ocsp_response_cache_entries=s.ocsp_response_cache_entries,
            ocsp_status_changes_keep_s=s.ocsp_status_changes_keep_s,
            log_level=s.log_level,
            log_format=s.log_format,
        )

    async def start(self) -> None:
        """Start every worker and watch them."""
        for worker in self.workers:
            await self._spawn(worker)
        self._task = asyncio.create_task(self._supervise(), name="ocsp-workers")

    async def _spawn(self, worker: _Worker) -> None:
        parent, child = socket.socketpair()
        # Nothing of the service's environment: a worker needs none of its credentials (NATS, the
        # database URL comes in its config), and every secret it holds came over the socket.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        try:
            worker.proc = subprocess.Popen(  # noqa: ASYNC220 - fork and exec, not waited for
                [sys.executable, "-m", "services.validation.worker", str(child.fileno())],
                pass_fds=(child.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent.close()
            self._ended(worker, f"could not be started: {exc}")
            return
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        worker.writer, worker.report, worker.exited = writer, None, None
        worker.started = worker.reported = time.monotonic()
        writer.write(ipc.frame(self._config(worker.index).message()))
        writer.write(ipc.frame(ipc.responders_message(self.responders)))
        worker.listener = asyncio.create_task(self._listen(worker, reader), name=f"ocsp-worker-{worker.index}")
        log.info("started an OCSP worker", extra={"worker": worker.index, "pid": worker.pid})

    def sync(self) -> None:
        """Send every worker the current responders (called whenever they change)."""
        message = ipc.frame(ipc.responders_message(self.responders))
        for worker in self.workers:
            if worker.writer is not None and not worker.writer.is_closing():
                worker.writer.write(message)

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                message = await ipc.receive(reader)
                if message["op"] == "report":
                    worker.report, worker.reported = message, time.monotonic()
                    for outcome, count in message["counts"].items():
                        OCSP_RESPONSES.labels(outcome).inc(count)
                elif message["op"] == "ask":
                    task = asyncio.create_task(self._reply(worker, message))
                    worker.asks.add(task)
                    task.add_done_callback(worker.asks.discard)

    async def _reply(self, worker: _Worker, message: dict[str, Any]) -> None:
        try:
            body = await self._answer(message["what"])
        except Exception as exc:  # noqa: BLE001 - the worker reports that the service did not answer
            log.warning("could not answer an OCSP worker", extra={"worker": worker.index, "error": repr(exc)})
            return
        if worker.writer is not None and not worker.writer.is_closing():
            worker.writer.write(ipc.frame({"op": "reply", "id": message["id"], "body": body}))

    def _ended(self, worker: _Worker, why: str) -> None:
        """Forget a worker that is no longer running, and say when it is started again."""
        if worker.writer is not None:
            worker.writer.close()
        if worker.listener is not None:
            worker.listener.cancel()
        worker.proc, worker.writer, worker.listener, worker.report = None, None, None, None
        if worker.started and time.monotonic() - worker.started > 4 * MAX_RESTART_S:
            worker.backoff = FIRST_RESTART_S  # it had run well for a while: not a crash loop
        worker.exited, worker.restart_at = why, time.monotonic() + worker.backoff
        worker.backoff = min(worker.backoff * 2, MAX_RESTART_S)
        log.error(
            "an OCSP worker ended; starting it again",
            extra={"worker": worker.index, "why": why, "in_s": round(worker.restart_at - time.monotonic(), 1)},
        )

    async def _supervise(self) -> None:
        while not self.stopping:
            try:
                await self._check()
            except Exception as exc:  # noqa: BLE001 - the supervision must outlive one failed round
                log.error("supervising the OCSP workers failed; trying again", extra={"error": repr(exc)})
            await asyncio.sleep(SUPERVISE_EVERY_S)

    async def _check(self) -> None:
        """Start again the workers that ended or went silent, once their delay has passed."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.proc is not None and (code := worker.proc.poll()) is not None:
                self._ended(worker, _exit_reason(code))
            elif worker.proc is not None and now - worker.reported > SILENT_KILL_S:
                log.error("an OCSP worker stopped reporting: killing it", extra={"worker": worker.index})
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await asyncio.to_thread(worker.proc.wait)
                self._ended(worker, f"killed after {SILENT_KILL_S:.0f} s without a report")
            elif worker.proc is None and now >= worker.restart_at:
                worker.restarts += 1
                await self._spawn(worker)

    async def stop(self) -> None:
        """Stop every worker: SIGTERM, and SIGKILL for any still running after STOP_TIMEOUT_S."""
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        running = [w.proc for w in self.workers if w.proc is not None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_wait_all, running, STOP_TIMEOUT_S)
        for proc in running:
            if proc.poll() is None:
                log.error("an OCSP worker did not stop: killing it", extra={"pid": proc.pid})
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for worker in self.workers:
            for task in [worker.listener, *worker.asks]:
                if task is not None:
                    task.cancel()
            if worker.writer is not None:
                worker.writer.close()
            worker.proc, worker.writer, worker.listener = None, None, None

    def missing(self) -> list[str]:
        """Why a worker cannot serve now (nothing: every worker serves the current responders)."""
        now, found = time.monotonic(), []
        current = ipc.served(self.responders)
        for w in self.workers:
            name = f"OCSP worker {w.index}" + (f" (pid {w.pid})" if w.pid is not None else "")
            if w.proc is None:
                found.append(f"{name} {w.exited or 'is not running'}; starting it again")
            elif w.report is None:
                found.append(f"{name} is starting")
            elif now - w.reported > SILENT_AFTER_S:
                found.append(f"{name} has not reported for {now - w.reported:.0f} s")
            elif not w.report["ready"]:
                found.append(f"{name} cannot serve: {'; '.join(w.report['missing'])}")
            elif lagging := sorted(ca for ca, serial in current.items() if w.report["served"].get(ca) != serial):
                found.append(f"{name} does not serve the current responder of CA {', '.join(lagging)} yet")
        return found

    def facts(self) -> list[dict[str, Any]]:
        """Each worker's pid, readiness and restarts, for health."""
        return [
            {
                "worker": w.index,
                "pid": w.pid,
                "ready": w.report is not None and bool(w.report["ready"]),
                "restarts": w.restarts,
            }
            for w in self.workers
        ]


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait until every process has exited, or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
