"""`make run` runs the production trust model: nothing connects to its NATS without an identity,
nothing to its PostgreSQL without a password, each service only to its own schema; the CLI run
from the checkout finds the requester's and the operator's credentials and works."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

from deploy.local.devstack import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`python -m deploy.local.devstack` (what `make run` runs) on free ports, until it says it is up."""
    tmp_path = tmp_path_factory.mktemp("make-run")
    # Under a directory the `postgres` user may enter (pytest's are the test user's alone): `make run`
    # runs its PostgreSQL cluster as that user, in $CERTBUS_HOME/pg.
    outer = Path(tempfile.mkdtemp(prefix="certbus-make-run-"))
    outer.chmod(0o755)
    home = outer / "home"
    nats_port, pg_port = free_port(), free_port()
    http_base = next(port for port in iter(free_port, None) if all(_free(port + i) for i in range(1, 5)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env.update(
        CERTBUS_HOME=str(home),
        CERTBUS_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        CERTBUS_PG_PORT=str(pg_port),
        CERTBUS_HTTP_PORT_BASE=str(http_base),
        CERTBUS_PUBLIC_BASE_URL=f"http://127.0.0.1:{http_base}",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT),
    )
    log = open(tmp_path / "make-run.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "deploy.local.devstack"], env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while b"all five services are up" not in (tmp_path / "make-run.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()[-3000:]
            time.sleep(0.05)
        yield {**env, "CERTBUS_PG_PORT": str(pg_port)}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(outer, ignore_errors=True)
    assert proc.returncode == 0, (tmp_path / "make-run.log").read_text()[-3000:]


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


async def test_make_run_refuses_anonymous_nats_and_password_less_postgres(make_run: dict[str, str]) -> None:
    env = make_run
    with pytest.raises(nats.errors.Error) as refused:
        await nats.connect(env["CERTBUS_NATS_URL"], allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3)
    assert "authorization violation" in str(refused.value).lower()

    port = env["CERTBUS_PG_PORT"]
    for role in ("postgres", "enrollment", "signing"):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://{role}@127.0.0.1:{port}/certbus")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(f"postgresql://{role}:wrong@127.0.0.1:{port}/certbus")
    # With its own password, a service's role reads its own schema and no other.
    home = Path(env["CERTBUS_HOME"])
    password = (home / "secrets" / "db-enrollment").read_text().strip()
    conn = await asyncpg.connect(f"postgresql://enrollment:{password}@127.0.0.1:{port}/certbus")
    try:
        assert await conn.fetchval("SELECT count(*) FROM enrollment.profiles") >= 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetchval("SELECT count(*) FROM signing.cas")
    finally:
        await conn.close()
    # No monitoring port (unauthenticated, it would list every connection) is opened.
    pid = (home / "nats" / "nats-server.pid").read_text().strip()
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"-m" not in args and b"--http_port" not in args, args
    # Secrets, seeds and keys are the owner's alone.
    for path in [*(home / "identities").glob("*.nk"), *(home / "secrets").iterdir(), *(home / "operators").iterdir()]:
        assert path.stat().st_mode & 0o077 == 0, path


async def test_the_cli_from_the_checkout_connects_as_requester_and_as_operator(make_run: dict[str, str]) -> None:
    env = make_run
    health = await asyncio.to_thread(_cli, env, "health", "--json")
    assert health.returncode == 0, health.stderr
    token = await asyncio.to_thread(_cli, env, "token", "create", "--san", "web.make-run.internal")
    assert token.returncode == 0, token.stderr
    out = Path(env["CERTBUS_HOME"]) / "web"
    enrolled = await asyncio.to_thread(
        _cli,
        env,
        "enroll",
        "--token",
        token.stdout.strip(),
        "--san",
        "web.make-run.internal",
        "--out",
        str(out),
        "--json",
    )
    assert enrolled.returncode == 0, enrolled.stderr
    # An operator's query, as the operator `make run` registered (signing with its key).
    listed = await asyncio.to_thread(_cli, env, "requests", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "web.make-run.internal" in listed.stdout
    # The requester identity may not ask it: the server refuses the import, so nobody answers.
    as_requester = {
        **env,
        "CERTBUS_NATS_SEED_FILE": str(Path(env["CERTBUS_HOME"]) / "identities" / "requester.nk"),
        "CERTBUS_IDENTITY": "requester",
    }
    denied = await asyncio.to_thread(_cli, as_requester, "requests", "list", "--json")
    assert denied.returncode == 3, denied.stdout + denied.stderr  # unreachable: no such service for a requester
