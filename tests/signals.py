"""What tests wait for instead of sleeping: conditions read from the nats-server, the log and the
services' databases, each waited for with `harness.eventually` up to a deadline."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.request
import uuid

from deploy.local.devstack import SERVICES
from harness import Harness, eventually
from shared.contract.events import CertificateIssued


async def subscribed(h: Harness, identity: str, *subjects: str, timeout: float = 10.0) -> None:
    """Wait until the nats-server holds, for a connection of `identity`, a subscription to each of
    `subjects` (a client's SUB is sent without an answer, so only the server can say it arrived)."""
    known = h.identities.get(identity)
    assert known is not None, f"no identity {identity!r}"
    url = f"http://127.0.0.1:{h.nats.monitor_port}/connz?subs=detail&auth=true&limit=100000"

    def held() -> bool:
        with urllib.request.urlopen(url, timeout=5) as response:
            connections = json.loads(response.read()).get("connections") or []
        mine = [c for c in connections if c.get("authorized_user") == known.nkey]
        return set(subjects) <= {s["subject"] for c in mine for s in c.get("subscriptions_list_detail") or []}

    await eventually(lambda: asyncio.to_thread(held), timeout=timeout)


async def idle(h: Harness) -> bool:
    """Whether everything on the log has been applied: no service's outbox holds an unpublished event,
    and every durable consumer of the log and of the ingress stream has had everything delivered and
    acknowledged (outboxes first: an event they publish lands before its cause is acknowledged)."""
    pool = await h.db()
    for service in SERVICES:
        if await pool.fetchval("SELECT to_regclass($1)", f"{service}.outbox") is None:
            continue  # never started here
        if await pool.fetchval(f"SELECT count(*) FROM {service}.outbox WHERE published_at IS NULL"):
            return False
    nc = await h.connect("admin")
    try:
        for stream in (h.common["stream"], h.common["ingress_stream"]):
            for info in await h.js(nc).consumers_info(stream):
                if info.config.durable_name and (info.num_pending or info.num_ack_pending):
                    return False
    finally:
        await nc.close()
    return True


async def applied(h: Harness, timeout: float = 30.0) -> None:
    """Wait until everything on the log has been applied (`idle`)."""
    await eventually(lambda: idle(h), timeout=timeout)


async def audit_caught_up(h: Harness, timeout: float = 30.0) -> None:
    """Wait until audit archived the whole log and signed a checkpoint after which only checkpoints
    were archived: it has nothing left to sign, so the log stays as it is until something happens."""
    pool = await h.db()

    async def checkpointed() -> bool:
        nc = await h.connect("admin")
        try:
            through = (await h.js(nc).stream_info(h.common["stream"])).state.last_seq
        finally:
            await nc.close()
        return bool(
            await pool.fetchval(
                "SELECT h.seq = $1 AND c.last IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audit.archive a "
                "WHERE a.stream_seq > c.last AND a.event_type <> 'AuditCheckpointSigned') "
                "FROM audit.chain_head h, (SELECT max(stream_seq) AS last FROM audit.checkpoints) c",
                through,
            )
        )

    async def settled() -> bool:
        # Idle on both sides: a checkpoint signed in between is still in an outbox or a consumer.
        return await idle(h) and await checkpointed() and await idle(h)

    await eventually(settled, timeout=timeout)


async def audit_checks_ran(h: Harness, timeout: float = 30.0) -> None:
    """Wait for a whole run of audit's scheduled checks that began after this call. Only those runs
    find a certificate issued without an approval: this puts one on the log (a copy of an issued one
    under a request id nobody made, its serial exempt from the closing lint) and waits until its
    finding is raised and the log applied (what a run raises is committed together)."""
    template = next(
        issued for m in await h.stream_messages(f"{h.root}.cert.*.issued") if (issued := _issued(m.data)) is not None
    )
    serial = secrets.token_hex(8)
    probe = template.model_copy(update={"aggregate_id": f"probe-{serial}", "serial": serial, "event_id": uuid.uuid4()})
    h.lint_exempt.add(serial)
    await h.publish_raw(probe.subject(h.root), probe.model_dump_json().encode())

    async def raised() -> bool:
        found = [json.loads(m.data) for m in await h.stream_messages(f"{h.root}.finding.*.raised")]
        return any(f["check"] == "approval" and probe.aggregate_id in f["detail"] for f in found)

    await eventually(raised, timeout=timeout)
    await applied(h, timeout=timeout)


def _issued(data: bytes) -> CertificateIssued | None:
    try:
        return CertificateIssued.model_validate_json(data)
    except ValueError:
        return None
