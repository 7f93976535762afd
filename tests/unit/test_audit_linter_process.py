"""Audit's lint worker process never outlives audit: killed with SIGKILL (as the fault tests and an
out-of-memory killer do), audit leaves no worker behind waiting on its queue for good."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import asyncio, sys
from services.audit.linter import Linter

async def main() -> None:
    linter = Linter()
    await linter.lint({})  # starts the worker
    print(*linter._pool._processes, flush=True)  # the worker's pid
    await asyncio.sleep(60)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else ""
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_lint_worker_exits_when_audit_is_killed() -> None:
    audit = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        assert audit.stdout is not None
        worker = int(audit.stdout.readline().split()[0])
        assert _alive(worker)
        audit.send_signal(signal.SIGKILL)
        audit.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the lint worker outlived audit"
    finally:
        audit.kill()
        audit.wait(timeout=10)
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)  # the test failed: leave nothing behind
