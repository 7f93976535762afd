"""Replicas of a service share one durable consumer (one request still yields one certificate), and
health lists every one of them, whichever answers."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg

from harness import Harness, eventually
from shared.contract.events import EnrollmentApproved, parse_event
from shared.pki.crypto import build_csr, generate_key
from shared.pki.holder import enrollment_request
from shared.runtime.replicas import HEARTBEAT_S, SILENT_AFTER_S
from shared.runtime.service import _health
from signals import applied

N = 30


async def test_two_signing_replicas_fed_duplicate_approvals_issue_each_request_once(stack: Harness) -> None:
    await stack.start_replica("signing", "signing-2")
    requests = [
        enrollment_request(
            build_csr(generate_key("ec-p256"), [f"r{i}.corp.internal"]).decode(),
            stack.token(f"r{i}.corp.internal"),
            "tests",
        )
        for i in range(N)
    ]
    async with stack.client() as c:
        await asyncio.gather(*(c.publish(r) for r in requests))
    ids = {r.aggregate_id for r in requests}

    async def approvals() -> list[EnrollmentApproved]:
        found = [parse_event(m.data) for m in await stack.stream_messages(f"{stack.root}.cert.*.approved")]
        return [e for e in found if isinstance(e, EnrollmentApproved)] if len(found) == N else []

    # Hand every approval to signing twice more, as concurrent redeliveries to either replica would
    # (published with enrollment's credentials: only enrollment may publish approvals).
    nc = await stack.connect("enrollment")
    try:
        js = stack.js(nc, "enrollment")
        copies = [a for a in await eventually(approvals) for _ in range(2)]
        await asyncio.gather(
            *(
                js.publish(
                    a.subject(stack.root),
                    a.model_dump_json().encode(),
                    stream=stack.common["stream"],
                    headers={"Nats-Msg-Id": str(uuid.uuid4())},
                )
                for a in copies
            )
        )
    finally:
        await nc.close()

    async def all_issued() -> list[str]:
        msgs = await stack.stream_messages(f"{stack.root}.cert.*.issued")
        return [m.subject.split(".")[2] for m in msgs] if len(msgs) >= N else []

    await eventually(all_issued, timeout=30)
    await applied(stack)  # both replicas have worked off and acknowledged every copy
    issued = await all_issued()
    assert sorted(issued) == sorted(ids)  # each request exactly once
    pool = await stack.db()
    assert await pool.fetchval("SELECT count(*) FROM signing.issuances WHERE cert_der IS NOT NULL") == N
    serials = [json.loads(m.data)["serial"] for m in await stack.stream_messages(f"{stack.root}.cert.*.issued")]
    assert len(set(serials)) == N


async def test_health_lists_every_replica_a_killed_one_turns_silent_and_a_stopped_one_disappears(
    stack: Harness,
) -> None:
    first = stack.runtime("signing").instance
    killed = await stack.spawn_replica("signing", "signing-killed")
    await stack.start_replica("signing", "signing-stopped")
    replica = stack.runtime("signing-stopped")

    async def signing() -> dict[str, Any]:
        async with stack.client() as c:
            return {r["service"]: r for r in await c.readiness()}["signing"]

    def listed(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {r["instance"]: r for r in report["replicas"]}

    async def all_three_ready() -> dict[str, Any] | None:
        report = await signing()
        ready = {name for name, r in listed(report).items() if r["ready"]}
        return report if ready == {first, "signing-killed", "signing-stopped"} else None

    report = await eventually(all_three_ready, timeout=20)
    assert report["ready"] and report["warnings"] == []
    assert listed(report)["signing-killed"]["pid"] == killed.proc.pid  # type: ignore[union-attr]

    # Killed, it says nothing more: listed as silent once not seen for 6 s; signing stays ready.
    killed.stop(kill=True)

    async def killed_is_silent() -> dict[str, Any] | None:
        report = await signing()
        return report if listed(report)["signing-killed"]["silent"] else None

    report = await eventually(killed_is_silent, timeout=SILENT_AFTER_S + 3 * HEARTBEAT_S, interval=0.5)
    assert listed(report)["signing-killed"]["seen_s"] >= SILENT_AFTER_S  # rounded to 0.1 s
    assert report["ready"] is True and report["missing"] == []
    assert [w for w in report["warnings"] if "replica signing-killed is silent" in w]
    assert {name for name, r in listed(report).items() if r["ready"]} == {first, "signing-stopped"}
    health = await stack.cli("health")
    rows = [line.split("\t") for line in health.stdout.splitlines()]
    assert rows[0][:4] == ["service", "replica", "status", "ready"]
    assert sorted(row[1:4] for row in rows if row[0] == "signing") == sorted(
        [[first, "ok", "yes"], ["signing-killed", "silent", "no"], ["signing-stopped", "ok", "yes"]]
    )
    assert "replica signing-killed is silent" in health.stderr and "not ready: signing" not in health.stderr

    # Its database unreachable, a replica still answers (saying so) and its heartbeat lives on.
    pool = replica._pool
    replica._pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:1/none", min_size=0)
    try:
        own = await _health(replica)
        assert own["database"] is False and own["ready"] is False and own["status"] == "degraded"
        assert [r["instance"] for r in own["replicas"]] == ["signing-stopped"]

        async def cut_off_is_silent() -> bool:
            return bool(listed(await _health(stack.runtime("signing")))["signing-stopped"]["silent"])

        await eventually(cut_off_is_silent, timeout=SILENT_AFTER_S + 3 * HEARTBEAT_S, interval=0.5)
        assert replica._heartbeat is not None and not replica._heartbeat.loop._task.done()  # type: ignore[union-attr]
    finally:
        await replica.pool.close()
        replica._pool = pool

    async def heard_again() -> bool:
        return not listed(await _health(stack.runtime("signing")))["signing-stopped"]["silent"]

    await eventually(heard_again, timeout=3 * HEARTBEAT_S + 10)  # after the failed beats' backoff

    # Stopped gracefully, it deletes its row at once: no longer listed at all.
    await stack.stop("signing-stopped")
    report = await signing()
    assert set(listed(report)) == {first, "signing-killed"} and report["ready"] is True
    pool = await stack.db()
    assert await pool.fetchval("SELECT count(*) FROM signing.replicas WHERE instance = 'signing-stopped'") == 0
