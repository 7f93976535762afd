"""deploy/nats/accounts.conf, served by a real nats-server: who may publish which events."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from shared.devstack import NatsServer

pytestmark = pytest.mark.e2e
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nats"
USERS = ("admin", "enrollment", "signing", "validation", "revocation", "audit", "operator", "requester")


@pytest.fixture(scope="module")
def secured_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    conf_dir = tmp_path_factory.mktemp("nats-conf")
    shutil.copy(DEPLOY / "accounts.conf", conf_dir / "accounts.conf")
    (conf_dir / "node.conf").write_text("max_payload: 1MB\ninclude ./accounts.conf\n")
    saved = dict(os.environ)
    os.environ.update({f"{u.upper()}_PASSWORD": f"pw-{u}" for u in USERS})
    try:
        server = NatsServer(config_file=conf_dir / "node.conf").start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield server
    server.cleanup()


async def connect(server: NatsServer, user: str, errors: list[str]) -> nats.NATS:
    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await nats.connect(
        server.url,
        user=user,
        password=f"pw-{user}",
        inbox_prefix=f"_INBOX_{user}",
        error_cb=on_error,
        max_reconnect_attempts=1,
    )


async def stream_count(server: NatsServer) -> int:
    admin = await connect(server, "admin", [])
    try:
        return (await admin.jetstream().stream_info("CERTBUS")).state.messages
    finally:
        await admin.close()


@pytest.fixture(scope="module")
async def stream(secured_nats: NatsServer) -> NatsServer:
    admin = await connect(secured_nats, "admin", [])
    try:
        await admin.jetstream().add_stream(StreamConfig(name="CERTBUS", subjects=["pki.>"]))
    finally:
        await admin.close()
    return secured_nats


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("requester", "pki.cert.{id}.issued"),
        ("requester", "pki.cert.{id}.revoked"),
        ("enrollment", "pki.cert.{id}.issued"),
        ("validation", "pki.cert.{id}.revoked"),
        ("audit", "pki.cert.{id}.approved"),
        ("revocation", "pki.ca.{id}.created"),
        ("requester", "pki.revoke.{id}.ordered"),
        ("enrollment", "pki.revoke.{id}.ordered"),
        ("revocation", "pki.revoke.{id}.ordered"),
        ("requester", "pki.ca.{id}.compromised"),
        ("signing", "pki.ca.{id}.compromised"),
        ("requester", "pki.cert.{id}.renewal_due"),
        ("requester", "pki.cert.{id}.superseded"),
        ("requester", "pki.cert.{id}.expired"),
        ("requester", "pki.cert.{id}.destroyed"),
        ("requester", "pki.revoke.{id}.destroy_ordered"),
        ("requester", "pki.ca.{id}.retired"),
        ("requester", "pki.ca.{id}.key_destroyed"),
        ("enrollment", "pki.cert.{id}.destroyed"),
        ("revocation", "pki.revoke.{id}.destroy_ordered"),
        ("operator", "pki.ca.{id}.key_destroyed"),
        ("signing", "pki.ca.{id}.retired"),
    ],
)
async def test_a_forged_event_is_refused_by_the_server(stream: NatsServer, user: str, subject: str) -> None:
    before = await stream_count(stream)
    errors: list[str] = []
    nc = await connect(stream, user, errors)
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await nc.jetstream().publish(subject.format(id=uuid.uuid4().hex), b"{}", stream="CERTBUS", timeout=1.0)
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert any("permissions violation" in e.lower() for e in errors), errors
    assert await stream_count(stream) == before


@pytest.mark.parametrize(
    ("user", "subject"),
    [
        ("signing", "pki.cert.{id}.issued"),
        ("revocation", "pki.cert.{id}.revoked"),
        ("enrollment", "pki.cert.{id}.approved"),
        ("requester", "pki.cert.{id}.requested"),
        ("operator", "pki.revoke.{id}.requested"),
        ("operator", "pki.revoke.{id}.ordered"),
        ("requester", "pki.revoke.{id}.requested"),
        ("operator", "pki.ca.{id}.compromised"),
        ("revocation", "pki.cert.{id}.renewal_due"),
        ("requester", "pki.cert.{id}.renewal_requested"),
        ("requester", "pki.key.{id}.destroyed"),
        ("enrollment", "pki.cert.{id}.renewal_due"),
        ("enrollment", "pki.cert.{id}.superseded"),
        ("enrollment", "pki.cert.{id}.expired"),
        ("operator", "pki.revoke.{id}.destroy_ordered"),
        ("revocation", "pki.cert.{id}.destroyed"),
        ("operator", "pki.ca.{id}.retired"),
        ("signing", "pki.ca.{id}.key_destroyed"),
    ],
)
async def test_each_producer_may_publish_its_own_events(stream: NatsServer, user: str, subject: str) -> None:
    nc = await connect(stream, user, [])
    try:
        ack = await nc.jetstream().publish(subject.format(id=uuid.uuid4().hex), b"{}", stream="CERTBUS", timeout=2.0)
    finally:
        await nc.close()
    assert ack.stream == "CERTBUS"


async def test_an_agent_as_requester_hears_renewal_due_and_revocations_and_may_fetch_its_certificate(
    stream: NatsServer,
) -> None:
    """What `certbus agent` needs with the requester's credentials: its certificates' renewal-due and
    revocation events (core subscriptions) and audit's `issued` query (to fetch a certificate issued
    while it was not listening; no responder here, which is not a permission error), but not a
    certificate's whole history."""
    errors: list[str] = []
    agent = await connect(stream, "requester", errors)
    enrollment = await connect(stream, "enrollment", [])
    revocation = await connect(stream, "revocation", [])
    try:
        heard: list[str] = []

        async def hear(msg: nats.aio.msg.Msg) -> None:
            heard.append(msg.subject)

        for subject in ("pki.cert.*.renewal_due", "pki.cert.*.revoked"):
            await agent.subscribe(subject, cb=hear)
        await agent.flush()
        await enrollment.publish("pki.cert.c1.renewal_due", b"{}")
        await revocation.publish("pki.cert.c1.revoked", b"{}")
        for _ in range(50):
            if len(heard) == 2:
                break
            await asyncio.sleep(0.02)
        with pytest.raises(nats.errors.NoRespondersError):  # allowed: nobody answers here
            await agent.request("certbus.q.audit.issued", b"{}", timeout=1.0)
        await asyncio.sleep(0.2)
        assert not any("permissions violation" in e.lower() for e in errors), errors
        # A whole certificate's history (operators' names, comments, requests) is not the requester's.
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await agent.request("certbus.q.audit.history", b"{}", timeout=1.0)
        await asyncio.sleep(0.2)
    finally:
        for nc in (agent, enrollment, revocation):
            await nc.close()
    assert sorted(heard) == ["pki.cert.c1.renewal_due", "pki.cert.c1.revoked"]
    assert any("permissions violation" in e.lower() and "audit.history" in e for e in errors), errors
