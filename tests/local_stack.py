"""The stack `make run` starts (`python -m deploy.local.devstack`), on free ports with its own
home, for the tests that use Certbus as a user would."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from deploy.local.devstack import free_port, free_run

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def devstack(tmp_path: Path, wait_until_up: bool = True) -> Iterator[tuple[dict[str, str], subprocess.Popen[bytes]]]:
    """`python -m deploy.local.devstack` (what `make run` runs) on free ports with its own
    CERTBUS_HOME; with `wait_until_up`, until it says it is up. Yields the CLI's environment and
    the process; stopped with Ctrl-C after, and it must exit 0."""
    # Under a directory the `postgres` user may enter (pytest's are the test user's alone): `make run`
    # runs its PostgreSQL cluster as that user, in $CERTBUS_HOME/pg.
    outer = Path(tempfile.mkdtemp(prefix="certbus-make-run-"))
    outer.chmod(0o755)
    home = outer / "home"
    nats_port, pg_port = free_port(), free_port()
    http_base = free_run(7)  # the five services, then ACME's health and HTTPS ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env.update(
        CERTBUS_HOME=str(home),
        CERTBUS_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        CERTBUS_PG_PORT=str(pg_port),
        CERTBUS_HTTP_PORT_BASE=str(http_base),
        CERTBUS_PUBLIC_BASE_URL=f"http://127.0.0.1:{http_base}",
        CERTBUS_ACME_HTTP01_PORT=str(free_port()),
        CERTBUS_ACME_TLSALPN01_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    log_path = tmp_path / "make-run.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "deploy.local.devstack"], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while wait_until_up and b"all five services are up" not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        yield env, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(outer, ignore_errors=True)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
