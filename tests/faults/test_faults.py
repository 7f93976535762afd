"""Nothing accepted is lost, nothing is issued twice, and no false alarm is raised while the
engines and the services fail under a burst of enrollments, in cluster mode.

Each scenario sends CERTBUS_FAULTS_N enrollments (300 by default, 10,000 in `make faults`),
64 in flight, publish-and-wait with the same request again after a failure, while one kind of
fault is injected (a replica killed, the stream's leader killed, PostgreSQL crash-stopped, a
service's database deleted); afterwards every request has exactly one CertificateIssued on the log (read
back by subject), none is missing or refused, nothing is parked, no publish alarm was raised,
`certbus audit verify` is clean, `audit check` finds nothing and every replica is ready again.
With CERTBUS_FAULTS_RESULTS set, each scenario's figures (rate, p50/p99 latency, the longest
stall of a request, the time until the system issued again after a fault) go to that JSON file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from bench.burst import (
    Burst,
    Fault,
    findings_raised,
    issued_more_than_once,
    issued_per_request,
    parked_and_alarms,
    published_twice,
    run_burst,
    wait_caught_up,
)
from deploy.local.devstack import LocalStack, wait_ready

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("CERTBUS_FAULTS_N", "300"))
IN_FLIGHT = int(os.environ.get("CERTBUS_FAULTS_IN_FLIGHT", "64"))
RESULTS = os.environ.get("CERTBUS_FAULTS_RESULTS")
# A burst's bound: generous for a loaded 2-core machine (about 10 enrollments a second at worst).
TIMEOUT_S = 300 + N * 0.3


def _cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli.main", *args],
        env=dict(stack.env, PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


async def _nothing_lost(
    stack: LocalStack, name: str, burst: Burst, before: Before, extra: dict[str, Any] | None = None
) -> None:
    """The checks every scenario ends with, and its figures recorded."""
    await wait_caught_up(stack)
    summary = burst.summary()
    refused = [o for o in burst.outcomes if o.refused]
    assert not refused, f"{len(refused)} refused, e.g. {refused[0].refused}"
    assert summary["issued"] == N, summary
    issued = await issued_per_request(stack, [o.request_id for o in burst.outcomes])
    missing = [rid for rid, n in issued.items() if n == 0]
    twice = [rid for rid, n in issued.items() if n > 1]
    assert not missing and not twice, f"{len(missing)} missing, {len(twice)} issued more than once"
    assert await issued_more_than_once(stack) == []
    after = await parked_and_alarms(stack)
    grew = {s: {k: after[s][k] - before.db[s][k] for k in after[s] if after[s][k] != before.db[s][k]} for s in after}
    assert not any(grew.values()), f"parked messages or publish alarms appeared: {grew}"
    # Nor did audit's scheduled checks raise a finding while the faults went on (a false alarm).
    assert await findings_raised(stack) == before.findings
    verify = await asyncio.to_thread(_cli, stack, "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    check = await asyncio.to_thread(_cli, stack, "audit", "check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["findings"] == [], check.stdout
    missing_ready = await wait_ready(stack.identity_settings("requester"), 60.0)
    assert missing_ready == [], missing_ready
    _record(name, {**summary, **(extra or {})})


@dataclass
class Before:
    """What the checks compare with: parked messages and alarms per service, findings on the log."""

    db: dict[str, dict[str, int]]
    findings: int

    @classmethod
    async def of(cls, stack: LocalStack) -> Before:
        return cls(await parked_and_alarms(stack), await findings_raised(stack))


def _record(name: str, summary: dict[str, Any]) -> None:
    print(f"{name}: {json.dumps(summary)}")
    if RESULTS:
        path = Path(RESULTS)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[name] = {**summary, "in_flight": IN_FLIGHT, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")


# A single fault once a quarter of the burst is issued.
ONE_FAULT_AT = 0.25


def _hit(burst: Burst, at_least: int) -> None:
    """A fault that came after the last certificate proves nothing: enough must have hit the burst."""
    assert burst.faults_during() >= at_least, f"only {burst.faults_during()} faults hit the burst"


@pytest.mark.timeout(TIMEOUT_S)
async def test_kill_minus_nine_each_service_replica_in_turn(cluster: LocalStack) -> None:
    before = await Before.of(cluster)
    procs = list(cluster.procs)

    def kill(instance: str) -> Fault:
        async def fault() -> None:
            replica = cluster.replica(instance)
            replica.stop(kill=True)
            await asyncio.sleep(1.0)
            replica.start()

        return fault

    # Spread over the burst: the k-th kill once k/(replicas + 2) of it is issued.
    faults = [((k + 1) / (len(procs) + 2), kill(p.instance)) for k, p in enumerate(procs)]
    burst = await run_burst(cluster, N, IN_FLIGHT, faults)
    _hit(burst, len(faults) - 1)  # the last may land as the burst's tail is issued at once
    await _nothing_lost(
        cluster, "kill -9 each service replica", burst, before, extra={"killed": [p.instance for p in procs]}
    )


async def _stream_leader(stack: LocalStack) -> str:
    settings = stack.identity_settings("admin")
    nc = await nats.connect(settings.nats_servers, connect_timeout=3, **settings.connect_options())
    try:
        info = await nc.jetstream(prefix=settings.js_prefix).stream_info(settings.stream)
        assert info.cluster is not None and info.cluster.leader, "the log has no leader"
        return str(info.cluster.leader)
    finally:
        await nc.close()


@pytest.mark.timeout(TIMEOUT_S)
async def test_kill_minus_nine_the_nats_node_that_leads_the_stream(cluster: LocalStack) -> None:
    before = await Before.of(cluster)
    killed: list[str] = []

    async def fault() -> None:
        leader = await _stream_leader(cluster)
        node = cluster.nats[int(leader.rsplit("-", 1)[1]) - 1]
        killed.append(leader)
        node.stop(kill=True)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(node.start)

    burst = await run_burst(cluster, N, IN_FLIGHT, [(ONE_FAULT_AT, fault)])
    _hit(burst, 1)
    await _nothing_lost(cluster, f"kill -9 the stream's leader ({killed[0]})", burst, before)


@pytest.mark.timeout(TIMEOUT_S)
async def test_crash_stop_postgresql_and_restart_it(cluster: LocalStack) -> None:
    before = await Before.of(cluster)
    pg = cluster.pg
    assert pg is not None

    async def fault() -> None:
        await asyncio.to_thread(pg.stop, "immediate")
        await asyncio.sleep(2.0)
        await asyncio.to_thread(pg.start)

    burst = await run_burst(cluster, N, IN_FLIGHT, [(ONE_FAULT_AT, fault)])
    _hit(burst, 1)
    await _nothing_lost(cluster, "crash-stop PostgreSQL", burst, before)


# The services whose database is deleted, one scenario each (CERTBUS_FAULTS_LOSE to choose).
LOSE = os.environ.get("CERTBUS_FAULTS_LOSE", "signing,enrollment,revocation,validation").split(",")


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("service", LOSE)
async def test_delete_a_service_database_and_let_it_rebuild(cluster: LocalStack, service: str) -> None:
    before = await Before.of(cluster)
    pg = cluster.pg
    assert pg is not None
    keys = cluster.home / "signing" / "keys"
    keys_before = sorted(p.name for p in keys.iterdir())
    replicas = [p for p in cluster.procs if p.name == service]

    async def fault() -> None:
        conn = await asyncpg.connect(pg.url, timeout=10)
        try:
            # Dropping every table while the replicas write to them can deadlock with one of their
            # transactions; Postgres then cancels one side (here, at times, the drop): drop again.
            for attempt in range(10):
                try:
                    await conn.execute(f"DROP SCHEMA {service} CASCADE")
                    break
                except asyncpg.DeadlockDetectedError:
                    assert attempt < 9, f"could not drop {service}'s schema: deadlocked ten times"
                    await asyncio.sleep(0.1)
        finally:
            await conn.close()
        # Each replica notices within a heartbeat and stops itself; its supervisor (here) starts it again.
        deadline = time.monotonic() + 60
        while any(p.proc is not None and p.proc.poll() is None for p in replicas):
            assert time.monotonic() < deadline, f"a {service} replica kept running on a dropped schema"
            await asyncio.sleep(0.2)
        for p in replicas:
            p.start()

    burst = await run_burst(cluster, N, IN_FLIGHT, [(ONE_FAULT_AT, fault)])
    _hit(burst, 1)
    rebuild = await _rebuild_of(pg.url, service)
    await _nothing_lost(cluster, f"delete {service}'s database", burst, before, extra={"rebuild": rebuild})
    assert sorted(p.name for p in keys.iterdir()) == keys_before, "signing created a key"
    assert rebuild["divergent"] == 0, rebuild
    twice = await published_twice(cluster, service)
    assert not twice, f"{service} published {len(twice)} decisions twice, e.g. {twice[:3]}"


async def _rebuild_of(url: str, service: str, timeout: float = 300.0) -> dict[str, Any]:
    """The service's finished rebuild: events per second, and how much it did not publish again."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                row = await conn.fetchrow(f"SELECT * FROM {service}.rebuilds ORDER BY id DESC LIMIT 1")
            except asyncpg.UndefinedTableError:
                row = None  # its replicas are starting again: the schema is not made yet
            if row is not None and row["finished_at"] is not None:
                break
            assert time.monotonic() < deadline, f"{service}'s rebuild did not finish: {row}"
            await asyncio.sleep(0.5)
        seconds = row["read_s"] + (row["finished_at"] - row["started_at"]).total_seconds()
        return {
            "log_through": row["through_seq"],
            "events_applied_again": row["applied"],
            "own_events_read_back": row["recorded"],
            "seconds": round(seconds, 2),
            "events_per_s": round((row["applied"] + row["recorded"]) / seconds, 1),
            "read_back_s": round(row["read_s"], 2),
            "not_published_again": row["suppressed"],
            "divergent": row["divergent"],
        }
    finally:
        await conn.close()
