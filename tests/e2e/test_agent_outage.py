"""NATS is down when a certificate's renewal falls due: the agent backs off (a connection attempt per
jittered slot, no request), and renews once NATS is back, with exactly one renewal request."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from clock import TestClock
from harness import Harness, eventually
from shared.client.agent import Agent, AgentSettings, CertificateEntry
from shared.pki.crypto import build_csr, generate_key, key_pem, serial_hex

pytestmark = pytest.mark.e2e


OUTAGE_S = 5.0
# How far into the outage the renewal falls due. Signing, a process on the system clock, dates the renewed
# certificate, so its renewal point leads the old one's only by the real time between the two issuances,
# while the agent's clock runs on through the outage (its backoff needs that): the renewal point put this
# far into the outage stays ahead of the agent's clock for as long after the renewal.
DUE_INTO_OUTAGE = timedelta(seconds=3)


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

    clock = TestClock()
    settings = AgentSettings(transient_base_s=0.2, transient_cap_s=1.0, request_timeout_s=20)
    entry = CertificateEntry(cert=holder / "cert.pem", key=holder / "key.pem")
    agent = Agent([entry], settings, h.client_settings("agent"), clock=clock)
    task = asyncio.create_task(agent.run())
    try:
        await eventually(lambda: asyncio.sleep(0, agent.stats["connects"] >= 1), timeout=10)
        h.nats.stop(kill=True)  # the harness's own server: same port and store when it comes back
        lifetime = old.not_after - old.not_before
        clock.run_from(old.not_after - lifetime / 3 + timedelta(seconds=0.5) - DUE_INTO_OUTAGE)
        connects_before = agent.stats["connects"]
        # The outage is what is measured: the agent's connection attempts over real seconds of it.
        await asyncio.sleep(OUTAGE_S)
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
