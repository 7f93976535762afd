"""The ACME service as its own process (`python -m services.acme`) beside the five services: it is not
ready until it serves ACME over TLS with a certificate Certbus issued (and says what is missing), a
client that trusts only Certbus's root reads its directory over HTTPS, and SIGTERM stops it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from acme_client import AcmeProcess, get
from harness import Harness, eventually
from shared.base.settings import ACME_READYZ_URL_FILE
from shared.client.sdk import CertbusClient
from shared.pki.provisioner_keys import public_key_file

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
async def acme_process(stack: Harness, tmp_path: Path) -> AsyncIterator[AcmeProcess]:
    await stack.identity("acme")
    with AcmeProcess.start(stack, tmp_path) as acme:
        yield acme


async def test_acme_is_ready_only_once_it_serves_tls_with_a_certbus_certificate(
    stack: Harness, acme_process: AcmeProcess, tmp_path: Path
) -> None:
    proc, env, key_file = acme_process.proc, acme_process.env, acme_process.key_file
    health = f"http://127.0.0.1:{env['CERTBUS_HTTP_PORT']}"
    await eventually(lambda: asyncio.to_thread(lambda: public_key_file(key_file).exists()), timeout=30)
    # Its provisioner is not registered yet: alive, not ready, and it says why.
    await eventually(lambda: asyncio.to_thread(lambda: get(f"{health}/healthz")[0] == 200), timeout=30)
    status, body = await asyncio.to_thread(get, f"{health}/readyz")
    assert status == 503 and body["ready"] is False
    assert "not served over TLS" in " ".join(body["missing"])  # type: ignore[arg-type]

    await acme_process.register(stack)
    await acme_process.ready()
    # A client that trusts only Certbus's root reaches the directory over TLS at the base URL.
    context = ssl.create_default_context(cadata=acme_process.root_pem())
    status, directory = await asyncio.to_thread(get, f"{env['CERTBUS_ACME_BASE_URL']}/acme/directory", context)
    assert status == 200
    assert directory["newOrder"] == f"{env['CERTBUS_ACME_BASE_URL']}/acme/new-order"
    assert oct((tmp_path / "acme" / "tls" / "server.key.pem").stat().st_mode & 0o777) == "0o600"
    proc.terminate()
    assert await asyncio.to_thread(proc.wait, 20) == 0


async def test_certbus_health_asks_acme_at_its_readyz_and_lists_it_not_ready_then_ready(
    stack: Harness, acme_process: AcmeProcess
) -> None:
    readyz = f"http://127.0.0.1:{acme_process.env['CERTBUS_HTTP_PORT']}/readyz"
    settings = stack.client_settings().model_copy(update={"acme_readyz_url": readyz})

    async def acme() -> dict[str, Any]:
        async with CertbusClient(settings, requester="tests") as c:
            return {r["service"]: r for r in await c.readiness()}["acme"]

    async def alive() -> dict[str, Any] | None:
        report = await acme()
        return report if report["replicas"][0]["status"] == "ok" else None

    # Its provisioner is not registered: health lists ACME as not ready, with what ACME says it lacks.
    before = await eventually(alive, timeout=30, interval=0.2)
    assert not before["ready"] and "not served over TLS" in " ".join(before["missing"])

    await acme_process.register(stack)
    await acme_process.ready()
    assert (await acme())["ready"]
    # The CLI finds the URL where `make run` writes it, and prints ACME's row whole into a pipe.
    written = Path(stack.cli_env()["CERTBUS_HOME"]) / ACME_READYZ_URL_FILE
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(f"{readyz}\n")
    health = await stack.cli("health")
    [row] = [line.split("\t") for line in health.stdout.splitlines() if line.startswith("acme\t")]
    assert row[:4] == ["acme", readyz.split("/")[2], "ok", "yes"], health.stdout
    assert "not ready: acme" not in health.stderr
