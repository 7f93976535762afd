"""`make run` runs the production trust model: nothing connects to its NATS without an identity,
nothing to its PostgreSQL without a password, each service only to its own schema; the CLI run
from the checkout finds the requester's and the operator's credentials and works."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import nats
import nats.errors
import pytest
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from local_stack import devstack

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
OPENSSL = shutil.which("openssl")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


# First in the file: it runs its own stack, stopped before the module's `make_run` starts.
@pytest.mark.skipif(OPENSSL is None, reason="openssl is the relying party here")
def test_the_moment_health_first_says_ready_enroll_and_ocsp_work(tmp_path: Path) -> None:
    with devstack(tmp_path, wait_until_up=False) as (env, proc):
        deadline, polls = time.monotonic() + 180, 0
        while (health := _cli(env, "health")).returncode != 0:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, health.stdout + health.stderr
            polls += 1
            time.sleep(0.1)
        assert polls > 0, "health was ready before anything could have been"  # the poll saw it not ready
        # At once: enroll with the CLI, then ask validation's OCSP URL (from the certificate) about it.
        token = _cli(env, "token", "create", "--san", "ready.make-run.internal")
        assert token.returncode == 0, token.stderr
        out = tmp_path / "ready"
        args = ["--token", token.stdout.strip(), "--san", "ready.make-run.internal", "--out", str(out)]
        enrolled = _cli(env, "enroll", *args)
        assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
        cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        [url] = [d.access_location.value for d in aia if d.access_method == AuthorityInformationAccessOID.OCSP]
        assert OPENSSL is not None
        asked = subprocess.run(
            [OPENSSL, "ocsp", "-issuer", "chain.pem", "-cert", "cert.pem", "-url", url, "-CAfile", "chain.pem"],
            cwd=out,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert asked.returncode == 0 and "Response verify OK" in asked.stderr + asked.stdout, asked.stderr
        assert "cert.pem: good" in asked.stdout, asked.stdout + asked.stderr


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


def test_health_from_the_checkout_lists_make_runs_acme_ready(make_run: dict[str, str]) -> None:
    """`make run` tells the CLI where ACME's /readyz is: health judges ACME with the five, in JSON
    and in its table written to a pipe (one tab-separated row)."""
    as_json = _cli(make_run, "health", "--json")
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    assert {r["service"]: r["ready"] for r in json.loads(as_json.stdout)}.get("acme") is True, as_json.stdout
    table = _cli(make_run, "health")
    assert table.returncode == 0, table.stdout + table.stderr
    [row] = [line.split("\t") for line in table.stdout.splitlines() if line.startswith("acme\t")]
    assert row[2:4] == ["ok", "yes"], table.stdout


def test_certbot_gets_a_certificate_from_make_runs_acme(make_run: dict[str, str], tmp_path: Path) -> None:
    """`make run` prints an ACME directory and the CA bundle its clients trust; certbot, given both,
    gets a certificate with no Certbus code (http-01 on the port make run's ACME checks)."""
    env = make_run
    home = Path(env["CERTBUS_HOME"])
    directory = f"https://127.0.0.1:{int(env['CERTBUS_HTTP_PORT_BASE']) + 6}/acme/directory"
    if shutil.which("certbot") is None:
        pytest.fail("certbot is not installed: `make test` installs it (apt-get install certbot)")
    result = subprocess.run(
        [
            "certbot",
            "certonly",
            "--standalone",
            "--non-interactive",
            "--agree-tos",
            "--email",
            "ops@example.test",
            "--server",
            directory,
            "--http-01-port",
            env["CERTBUS_ACME_HTTP01_PORT"],
            "--http-01-address",
            "127.0.0.1",
            "-d",
            "certbot.make-run.internal",
            "--config-dir",
            str(tmp_path / "c"),
            "--work-dir",
            str(tmp_path / "w"),
            "--logs-dir",
            str(tmp_path / "l"),
        ],
        env={**env, "REQUESTS_CA_BUNDLE": str(home / "acme" / "ca.pem")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cert = x509.load_pem_x509_certificate(
        (tmp_path / "c" / "live" / "certbot.make-run.internal" / "cert.pem").read_bytes()
    )
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["certbot.make-run.internal"]
