"""Nothing accepted is lost when NATS or PostgreSQL is killed (SIGKILL / immediate stop) and restarted."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import asyncpg
import pytest

from deploy.local.devstack import PostgresCluster, ServiceProcess
from harness import Harness, eventually
from shared.contract.events import EnrollmentRequested
from shared.pki.crypto import build_csr, generate_key
from shared.pki.holder import enrollment_request

pytestmark = pytest.mark.e2e
REQUESTS = 20


def requests_for(h: Harness, n: int) -> list[EnrollmentRequested]:
    names = [f"outage{i}.corp.internal" for i in range(n)]
    return [
        enrollment_request(build_csr(generate_key("ec-p256"), [name]).decode(), h.token(name), "tests")
        for name in names
    ]


async def issued_exactly_once(h: Harness, requests: list[EnrollmentRequested], timeout: float = 60) -> None:
    wanted = {r.aggregate_id for r in requests}

    async def all_issued() -> bool:
        msgs = await h.stream_messages(f"{h.root}.cert.*.issued")
        ids = [m.subject.split(".")[2] for m in msgs if m.subject.split(".")[2] in wanted]
        assert len(ids) == len(set(ids)), "a request was issued twice"
        return set(ids) == wanted

    await eventually(all_issued, timeout=timeout, interval=0.5)


def _health(proc: ServiceProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{proc.env['CERTBUS_HTTP_PORT']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as degraded:  # 503 and the same report
        return json.loads(degraded.read())


async def every_service_lost(h: Harness, what: Literal["nats", "database"]) -> None:
    """Wait until every service's /healthz says it lost `what`: the outage has reached them all."""

    def lost() -> bool:
        return not any(_health(proc)[what] for proc in h.procs.values())

    await eventually(lambda: asyncio.to_thread(lost), timeout=60, interval=0.2)


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresCluster]:
    cluster = await asyncio.to_thread(PostgresCluster().start)
    yield cluster
    cluster.cleanup()


async def test_killing_nats_mid_stream_loses_and_duplicates_nothing(harness: Harness) -> None:
    h = harness
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.apply_profiles()
    requests = requests_for(h, REQUESTS)
    async with h.client() as c:
        for r in requests:
            await c.publish(r)  # acknowledged by the ingress stream: accepted
    h.nats.stop(kill=True)  # the harness's own server: same port and store when it comes back
    await every_service_lost(h, "nats")
    await asyncio.to_thread(h.nats.start)
    await issued_exactly_once(h, requests)
    for name, proc in h.procs.items():
        assert proc.proc is not None and proc.proc.poll() is None, f"{name} died"


async def test_killing_postgres_loses_and_duplicates_nothing(own_postgres: PostgresCluster, tmp_path: Path) -> None:
    h = Harness(own_postgres.url, tmp_path)
    try:
        await h.open()
        await asyncio.to_thread(h.spawn_all)
        await h.register_provisioner()
        await h.apply_profiles()
        requests = requests_for(h, REQUESTS)
        async with h.client() as c:
            for r in requests[: REQUESTS // 2]:
                await c.publish(r)
            own_postgres.stop("immediate")  # a crash: no shutdown checkpoint
            for r in requests[REQUESTS // 2 :]:
                await c.publish(r)  # accepted by the ingress stream while the database is down
            await every_service_lost(h, "database")
            await asyncio.to_thread(own_postgres.start)
        await issued_exactly_once(h, requests, timeout=90)
        conn = await asyncpg.connect(own_postgres.url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM signing.issuances") == REQUESTS
            for name in ("enrollment", "signing", "validation", "revocation", "audit"):
                parked = await conn.fetch(f"SELECT subject, reason FROM {name}.parked")
                assert not parked, (name, [tuple(p) for p in parked])
        finally:
            await conn.close()
        for name, proc in h.procs.items():
            assert proc.proc is not None and proc.proc.poll() is None, f"{name} died"
    finally:
        await h.close()
