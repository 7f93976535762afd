"""The log is bounded and never forgets: once full it refuses new events (nothing old is deleted),
health says so, the services keep what they decided in their outboxes, and once an operator raises
the limit everything decided meanwhile reaches the log and nothing is lost."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path

import nats.js.errors
import pytest

from harness import Harness, eventually
from shared.client.sdk import Unreachable
from shared.pki.crypto import build_csr, generate_key
from shared.pki.holder import enrollment_request

LIMIT = 400  # messages: room for the set-up, not for much more


@pytest.fixture
async def small_log(database_url: str, tmp_path: Path) -> Harness:
    h = Harness(database_url, tmp_path)
    h.common["stream_max_msgs"] = LIMIT
    try:
        await h.open()
        yield await h.serve()
    finally:
        await h.close()


async def test_a_full_log_refuses_new_events_keeps_history_alarms_and_loses_nothing(small_log: Harness) -> None:
    h = small_log
    first = await h.enroll("before.corp.internal")
    stream = h.common["stream"]

    # Fill the log to its limit (as enrollment: junk on its own subject, parked and flagged later).
    nc = await h.connect("enrollment")
    js = h.js(nc, "enrollment")
    try:
        with pytest.raises(nats.js.errors.APIError) as full:
            for _ in range(LIMIT + 1):
                await js.publish(f"{h.root}.cert.f{uuid.uuid4().hex[:12]}.requested", b"{}", stream=stream)
        assert "maximum messages exceeded" in str(full.value).lower()
    finally:
        await nc.close()

    async with h.client() as c:
        health = await c.health("enrollment")
        assert health["status"] == "degraded" and health["log_used"] >= 1.0
        assert any("the log is full" in w for w in health["warnings"])
        # A request is taken by the ingress stream and admitted, but its event cannot reach the log yet.
        key = generate_key("ec-p256")
        request = enrollment_request(
            build_csr(key, ["during.corp.internal"]).decode(), h.token("during.corp.internal"), "tests"
        )
        with pytest.raises(Unreachable):
            await c.submit(request, timeout=3.0)

    # Nothing was deleted to make room: the log still starts at sequence 1, with the first certificate.
    first_seen = await h.stream_messages(f"{h.root}.cert.{first.aggregate_id}.issued")
    assert len(first_seen) == 1

    # An operator (the admin) raises the limit: what the services decided meanwhile reaches the log.
    admin = await h.connect("admin")
    try:
        info = await h.js(admin).stream_info(stream)
        await h.js(admin).update_stream(replace(info.config, max_msgs=LIMIT * 10))
    finally:
        await admin.close()
    async with h.client() as c:
        issued = await c.submit(request, timeout=60)  # sent again: admission knows it, nothing twice
        assert issued.dns_names == ["during.corp.internal"]
        health = await c.health("enrollment")
        assert health["status"] == "ok" and not health["warnings"]

    async with h.client("operator") as c:

        async def archived_all() -> bool:
            verified = await c.verify()
            return verified.clean and verified.archived_events == verified.stream_last_seq

        await eventually(archived_all, timeout=60, interval=1.0)
    await asyncio.sleep(0)
