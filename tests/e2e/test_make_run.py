"""`make run` runs the production trust model: nothing connects to its NATS without an identity,
nothing to its PostgreSQL without a password, each service only to its own schema; the CLI run
from the checkout finds the requester's and the operator's credentials and works."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


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
