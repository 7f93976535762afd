"""pkilint for audit's post-issuance lint job, in a process of its own at the lowest CPU priority.

pkilint takes about 8 ms a certificate. It used to run in a thread of the audit process at nice 19,
so that it would use only CPU that issuance leaves idle. But a thread shares the interpreter lock:
on a busy machine the OS left the nice-19 thread unscheduled while it held the lock, and audit's
event loop waited for it (one core and two busy processes: 15 loop turns in 4 s, stalls of 0.3 to
0.5 s; at nice 0, 200 turns and 19 ms). After a burst, with thousands of certificates to lint, its
consumers stopped acknowledging for minutes. In a process of its own, lint still uses only idle
CPU, and the event loop never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.contract.events import LintResult
from shared.pki.lint import errors, lint_certificate

Found = list[tuple[str, str, str]]  # (severity, code, message): what crosses the process boundary


PARENT_CHECK_S = 1.0  # how often the worker looks whether audit is still there


def _start_worker(parent: int) -> None:
    """In the worker: the lowest CPU priority, and an exit as soon as audit is gone (killed, even
    with SIGKILL: nothing would tell the worker, which would wait on its queue for good)."""
    with contextlib.suppress(OSError):
        os.nice(19)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def lint_pems(certs: dict[str, str]) -> dict[str, Found]:
    """pkilint's errors for each PEM certificate (in the worker process)."""
    verdicts: dict[str, Found] = {}
    for key, pem in certs.items():
        try:
            der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
        except ValueError as exc:
            verdicts[key] = [("FATAL", "certbus.not_a_certificate", str(exc))]
            continue
        try:
            verdicts[key] = [(f.severity, f.code, f.message or f.path) for f in errors(lint_certificate(der))]
        except Exception as exc:  # noqa: BLE001 - one certificate pkilint cannot read must not stop the rest
            verdicts[key] = [("FATAL", "certbus.lint_failed_to_run", f"{type(exc).__name__}: {exc}"[:500])]
    return verdicts


class Linter:
    """One worker process (started on first use, started again if it dies)."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a process with threads and a loop
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
            )
        return self._pool

    async def lint(self, certs: dict[uuid.UUID, str]) -> dict[uuid.UUID, list[LintResult]]:
        """pkilint's errors for each certificate, by event id."""
        sent = {str(k): v for k, v in certs.items()}
        loop = asyncio.get_running_loop()
        try:
            found = await loop.run_in_executor(self._worker(), lint_pems, sent)
        except BrokenProcessPool:
            self.close()  # the worker died (killed, out of memory): one new one, one more try
            found = await loop.run_in_executor(self._worker(), lint_pems, sent)
        return {uuid.UUID(k): [LintResult(severity=s, code=c, message=m) for s, c, m in v] for k, v in found.items()}

    def close(self) -> None:
        """Stop the worker process."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
