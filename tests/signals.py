"""What tests wait for instead of sleeping: each waits, up to a deadline, until the nats-server or
the database shows the condition itself."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from deploy.local.devstack import SERVICES
from harness import Harness, eventually


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


async def applied(h: Harness, timeout: float = 30.0) -> None:
    """Wait until everything on the log has been applied: no service's outbox holds an unpublished
    event, and every durable consumer of the log and of the ingress stream has had everything
    delivered and acknowledged (outboxes first: an event they publish lands before its cause is acked)."""
    pool = await h.db()
    streams = (h.common["stream"], h.common["ingress_stream"])
    nc = await h.connect("admin")
    js = h.js(nc)

    async def idle() -> bool:
        for service in SERVICES:
            if await pool.fetchval("SELECT to_regclass($1)", f"{service}.outbox") is None:
                continue  # never started here
            if await pool.fetchval(f"SELECT count(*) FROM {service}.outbox WHERE published_at IS NULL"):
                return False
        for stream in streams:
            for info in await js.consumers_info(stream):
                if info.config.durable_name and (info.num_pending or info.num_ack_pending):
                    return False
        return True

    try:
        await eventually(idle, timeout=timeout)
    finally:
        await nc.close()
