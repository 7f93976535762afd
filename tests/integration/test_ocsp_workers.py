"""Validation with OCSP workers (CERTBUS_OCSP_WORKERS > 1): several processes answer one HTTP port
(SO_REUSEPORT), each from its own statuses and cache; a revocation is answered `revoked` by every
one, readiness waits for all of them, a killed worker is started again (unready meanwhile) and
stopping the service, or killing it, leaves no worker behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509 import ocsp
from test_ocsp_over_http import fetch, ocsp_request, write_files

from harness import Harness, eventually

WORKERS = 3
REQUESTS = 60  # per round, a new connection each: each of the 3 processes is reached (misses 1 in 10^10)


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


async def none_alive(pids: set[int]) -> bool:
    return not any(alive(pid) for pid in pids)


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = await fetch(f"http://127.0.0.1:{port}/readyz")
    return status, json.loads(body)


async def all_ready(port: int, timeout: float = 60.0) -> dict[str, Any]:
    """The service's /readyz answer once it is ready (every worker with it)."""

    async def ready() -> dict[str, Any] | None:
        status, report = await readyz(port)
        return report if status == 200 else None

    return dict(await eventually(ready, timeout=timeout, interval=0.2))


def pids(report: dict[str, Any]) -> set[int]:
    """The service's process and every worker it lists."""
    return {report["pid"], *(w["pid"] for w in report["ocsp_workers"] if w["pid"] is not None)}


async def statuses(port: int, request: bytes, n: int = REQUESTS) -> list[ocsp.OCSPCertStatus | None]:
    """`n` OCSP answers about one certificate, by POST, each on a new connection, six at a time."""
    url = f"http://127.0.0.1:{port}/ocsp"

    async def one() -> ocsp.OCSPCertStatus | None:
        status, _, body = await fetch(url, request, {"Content-Type": "application/ocsp-request"})
        assert status == 200
        response = ocsp.load_der_ocsp_response(body)
        return response.certificate_status if response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL else None

    answers: list[ocsp.OCSPCertStatus | None] = []
    for _ in range(n // 6):
        answers += await asyncio.gather(*(one() for _ in range(6)))
    return answers


async def counted(port: int, outcome: str, at_least: int) -> bool:
    """Whether /metrics (whichever process answers) counts `at_least` OCSP responses of `outcome`."""
    _, _, metrics = await fetch(f"http://127.0.0.1:{port}/metrics")
    prefix = f'certbus_ocsp_responses_total{{outcome="{outcome}"}} '
    lines = [line for line in metrics.decode().splitlines() if line.startswith(prefix)]
    return any(float(line.removeprefix(prefix)) >= at_least for line in lines)


@pytest.fixture
async def with_workers(stack: Harness) -> AsyncIterator[tuple[Harness, int]]:
    """The stack, with validation's provisioner registered and one more validation replica in this
    process running WORKERS - 1 workers on a port of its own; its port."""
    await stack.register_ocsp_provisioner()
    stack.overrides["validation"] = {"ocsp_workers": WORKERS}
    await stack.start_replica("validation", "validation-prefork")
    yield stack, stack.runtime("validation-prefork").settings.http_port
    if "validation-prefork" in stack.apps:
        await stack.stop("validation-prefork")


async def test_every_worker_answers_revoked_once_a_revocation_is_committed(
    with_workers: tuple[Harness, int], tmp_path: Path
) -> None:
    stack, port = with_workers
    issued = await stack.enroll("workers.corp.internal")
    files = await write_files(stack, issued, tmp_path / "workers")
    report = await all_ready(port)
    assert len(report["ocsp_workers"]) == WORKERS - 1 and all(w["ready"] for w in report["ocsp_workers"])
    request = ocsp_request(files.cert, files.issuer)

    # New connections are spread over the processes: probes reach each of them.
    seen: set[int] = set()
    for _ in range(REQUESTS):
        _, answer = await readyz(port)
        seen.add(answer.get("answered_by", {}).get("pid", answer["pid"]))
    assert seen == pids(report)

    assert set(await statuses(port, request)) == {ocsp.OCSPCertStatus.GOOD}  # cached in every process
    async with stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "tests")

    async def revoked_once() -> bool:
        return (await statuses(port, request, 6))[0] is ocsp.OCSPCertStatus.REVOKED

    await eventually(revoked_once, timeout=10)
    # Committed now: no process may answer from what it held before.
    assert set(await statuses(port, request)) == {ocsp.OCSPCertStatus.REVOKED}
    # The workers' responses are counted by the service (each reports every second).
    await eventually(lambda: counted(port, "revoked", REQUESTS), timeout=5)

    await stack.stop("validation-prefork")
    await eventually(lambda: none_alive(pids(report) - {os.getpid()}), timeout=10)


async def test_a_killed_worker_makes_the_service_unready_until_it_is_started_again(
    with_workers: tuple[Harness, int], tmp_path: Path
) -> None:
    stack, port = with_workers
    issued = await stack.enroll("killed.corp.internal")
    files = await write_files(stack, issued, tmp_path / "killed")
    report = await all_ready(port)
    victim = report["ocsp_workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)

    async def unready() -> dict[str, Any] | None:
        try:
            status, report = await readyz(port)
        except ConnectionResetError:
            # Connections the kernel had queued on the killed worker's socket are reset (without
            # net.ipv4.tcp_migrate_req they are not handed to the others); a client tries again.
            return None
        return report if status == 503 else None

    report = await eventually(unready, timeout=5, interval=0.1)
    assert any(f"OCSP worker {victim['worker']}" in m for m in report["missing"]), report["missing"]
    # The port is served by the others meanwhile: nothing is refused.
    assert set(await statuses(port, ocsp_request(files.cert, files.issuer), 12)) == {ocsp.OCSPCertStatus.GOOD}

    report = await all_ready(port, timeout=30)
    again = next(w for w in report["ocsp_workers"] if w["worker"] == victim["worker"])
    assert again["pid"] != victim["pid"] and again["restarts"] == 1 and again["ready"]


async def test_stopping_or_killing_the_service_process_leaves_no_worker(stack: Harness) -> None:
    await stack.register_ocsp_provisioner()
    stack.overrides["validation"] = {"ocsp_workers": WORKERS}
    for name, sig in (("validation-term", signal.SIGTERM), ("validation-kill", signal.SIGKILL)):
        service = await stack.spawn_replica("validation", name)
        assert service.proc is not None
        report = await all_ready(int(service.env["CERTBUS_HTTP_PORT"]))
        everyone = pids(report)
        assert len(everyone) == WORKERS and report["pid"] == service.proc.pid
        service.proc.send_signal(sig)
        await asyncio.to_thread(service.proc.wait, 30)
        await eventually(lambda: none_alive(everyone), timeout=10)
        service.proc = None
