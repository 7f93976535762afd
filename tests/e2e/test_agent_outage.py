"""NATS is down when a certificate's renewal falls due: the agent backs off (a connection attempt per
jittered slot, no request), and renews once NATS is back, with exactly one renewal request."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from harness import Harness, eventually
from shared.client.agent import Agent, AgentSettings, CertificateEntry
from shared.pki.crypto import build_csr, generate_key, key_pem, serial_hex

pytestmark = pytest.mark.e2e


class OffsetClock:
    """The real time moved by `offset` (which the test sets)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


async def test_nats_down_when_renewal_is_due_the_agent_backs_off_and_renews_once_it_is_back(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.apply_profiles()
    key = generate_key("ec-p256")
    async with h.client("agent") as c:  # the agent's own certificate, which it renews below
        csr = build_csr(key, ["outage.corp.internal"]).decode()
        old = await c.enroll(csr, h.token("outage.corp.internal"))
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "cert.pem").write_text(old.cert_pem)
    fd = os.open(holder / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key_pem(key))
    os.close(fd)

    clock = OffsetClock()
    settings = AgentSettings(transient_base_s=0.2, transient_cap_s=1.0, request_timeout_s=20)
    entry = CertificateEntry(cert=holder / "cert.pem", key=holder / "key.pem")
    agent = Agent([entry], settings, h.client_settings("agent"), clock=clock)
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: asyncio.sleep(0, agent.stats["connects"] >= 1), timeout=10)
        await asyncio.sleep(3)  # so the renewed certificate's renewal point stays ahead of the agent's clock
        h.nats.stop(kill=True)  # the harness's own server: same port and store when it comes back
        lifetime = old.not_after - old.not_before
        clock.offset = (old.not_after - lifetime / 3 + timedelta(seconds=0.5)) - datetime.now(UTC)  # due now
        connects_before = agent.stats["connects"]
        await asyncio.sleep(5)  # the outage
        during = agent.stats["connects"] - connects_before
        assert agent.stats["renewals"] == 0 and agent.stats["submits"] == 0
        assert 2 <= during <= 30, during  # one attempt per jittered slot (mean 0.5 s at the cap): no spinning
        await asyncio.to_thread(h.nats.start)
        await eventually(lambda: asyncio.sleep(0, agent.stats["renewals"] >= 1), timeout=90, interval=0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    new_serial = serial_hex(x509.load_pem_x509_certificate((holder / "cert.pem").read_bytes()))
    assert new_serial != old.serial
    assert sorted(p.name for p in holder.iterdir()) == ["cert.pem", "chain.pem", "key.pem"]
    renewals = await h.stream_messages(f"{h.root}.cert.*.renewal_requested")
    assert len(renewals) == 1  # no burst of duplicates when NATS came back
    assert len(await h.stream_messages(f"{h.root}.key.*.destroyed")) == 1
    for name, proc in h.procs.items():
        assert proc.proc is not None and proc.proc.poll() is None, f"{name} died"
