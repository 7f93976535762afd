"""The ACME service as its own process (`python -m services.acme`) beside the five services: it is not
ready until it serves ACME over TLS with a certificate Certbus issued (and says what is missing), a
client that trusts only Certbus's root reads its directory over HTTPS, and SIGTERM stops it."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.devstack import free_port
from harness import Harness, eventually
from shared.contract.events import ProvisionerRegistered, utcnow
from shared.pki.provisioner_keys import public_key_file

pytestmark = pytest.mark.timeout(150)


def _get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, {}


@pytest.fixture
def acme_process(stack: Harness, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    http_port, acme_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    for key, value in stack.common_settings.model_dump().items():
        if value is not None and key not in ("identity", "nats_seed_file", "nats_user", "nats_password"):
            env[f"CERTBUS_{key.upper()}"] = str(value)
    key_file = tmp_path / "acme" / "acme-provisioner.key.pem"
    env.update(
        CERTBUS_IDENTITY="acme",
        CERTBUS_NATS_SEED_FILE=str(stack.identities.seed_file("acme")),
        CERTBUS_DATABASE_URL=stack.database_url,
        CERTBUS_HTTP_PORT=str(http_port),
        CERTBUS_ACME_PORT=str(acme_port),
        CERTBUS_ACME_BASE_URL=f"https://127.0.0.1:{acme_port}",
        CERTBUS_ACME_PROVISIONER_KEY_FILE=str(key_file),
        CERTBUS_ACME_TLS_DIR=str(tmp_path / "acme" / "tls"),
        CERTBUS_ACME_ENROLL_TIMEOUT_S="10",
        CERTBUS_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
    )
    log = open(tmp_path / "acme.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "services.acme"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc, env, key_file
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def test_acme_is_ready_only_once_it_serves_tls_with_a_certbus_certificate(
    stack: Harness, acme_process: tuple[subprocess.Popen[bytes], dict[str, str], Path], tmp_path: Path
) -> None:
    await stack.identity("acme")
    proc, env, key_file = acme_process
    health = f"http://127.0.0.1:{env['CERTBUS_HTTP_PORT']}"
    await eventually(lambda: asyncio.to_thread(lambda: public_key_file(key_file).exists()), timeout=30)
    # Its provisioner is not registered yet: alive, not ready, and it says why.
    await eventually(lambda: asyncio.to_thread(lambda: _get(f"{health}/healthz")[0] == 200), timeout=30)
    status, body = await asyncio.to_thread(_get, f"{health}/readyz")
    assert status == 503 and body["ready"] is False
    assert "not served over TLS" in " ".join(body["missing"])  # type: ignore[arg-type]

    async with stack.client("operator") as c:
        await c.publish(
            ProvisionerRegistered(
                aggregate_id="acme",
                occurred_at=utcnow(),
                correlation_id="tests",
                producer="operator",
                name="acme",
                public_key_pem=public_key_file(key_file).read_text(),
                registered_by="tests",
                requesters=["acme"],
            )
        )
    ready = await eventually(lambda: asyncio.to_thread(lambda: _get(f"{health}/readyz")[0] == 200 or None), timeout=60)
    assert ready
    # A client that trusts only Certbus's root reaches the directory over TLS at the base URL.
    chain = (tmp_path / "acme" / "tls" / "server.chain.pem").read_text()
    root_pem = chain[chain.rindex("-----BEGIN CERTIFICATE-----") :]
    context = ssl.create_default_context(cadata=root_pem)
    status, directory = await asyncio.to_thread(_get, f"{env['CERTBUS_ACME_BASE_URL']}/acme/directory", context)
    assert status == 200
    assert directory["newOrder"] == f"{env['CERTBUS_ACME_BASE_URL']}/acme/new-order"
    assert oct((tmp_path / "acme" / "tls" / "server.key.pem").stat().st_mode & 0o777) == "0o600"
    proc.terminate()
    assert await asyncio.to_thread(proc.wait, 20) == 0
