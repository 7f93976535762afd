"""The renewal agent over the real stack: enrollment says renewal is due, the agent renews with a new
key, installs it, reloads, and attests and destroys the old key; `certbus renew` by hand."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from asyncio.subprocess import PIPE
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from integration.conftest import EnrollWithKey

from clock import TestClock
from harness import Harness, eventually
from shared.client.agent import Agent, AgentSettings, CertificateEntry
from shared.contract.events import (
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    KeyDestroyed,
    RenewalRequested,
)
from shared.pki.crypto import PrivateKey, key_pem, serial_hex, spki_sha256
from shared.pki.holder import load_private_key
from signals import applied, subscribed

Renewing = tuple[Harness, TestClock, TestClock]


@pytest.fixture
async def renewing(harness: Harness) -> Renewing:
    """The stack with enrollment on a clock the test can pin at a certificate's renewal point, and
    signing on one it can move on (so that a renewed certificate starts later than the one it renews)."""
    enrollment_clock, signing_clock = TestClock(), TestClock()
    harness.clocks.update(enrollment=enrollment_clock, signing=signing_clock)
    harness.overrides["enrollment"] = {"renewal_check_s": 0.2}
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    return harness, enrollment_clock, signing_clock


async def listening(h: Harness, identity: str, timeout: float = 10.0) -> None:
    """Wait until an agent connected as `identity` hears its certificates' renewal-due and revoked events."""
    subjects = (CertificateRenewalDue.filter(h.root), CertificateRevoked.filter(h.root))
    await subscribed(h, identity, *subjects, timeout=timeout)


def holder_files(tmp: Path, key: PrivateKey, issued: CertificateIssued) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cert.pem").write_text(issued.cert_pem)
    fd = os.open(tmp / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key_pem(key))
    os.close(fd)
    return tmp / "cert.pem", tmp / "key.pem"


def _process_env(h: Harness, identity: str) -> dict[str, str]:
    """The environment of a Certbus process (the agent) that connects as `identity`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    for key, value in h.client_settings(identity).model_dump().items():
        if value is not None:
            env[f"CERTBUS_{key.upper()}"] = str(value)
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return env


def subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


async def test_the_agent_renews_when_renewal_is_due_reloads_and_destroys_the_old_key(
    renewing: Renewing, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    h, enrollment_clock, signing_clock = renewing
    old_key, old = await enroll_with_key("agent.corp.internal")
    cert_file, key_file = holder_files(tmp_path / "web", old_key, old)
    marker = tmp_path / "reloaded"
    entry = CertificateEntry(cert=cert_file, key=key_file, reload=f'echo "$CERTBUS_SERIAL" > {marker}')
    agent = Agent([entry], AgentSettings(request_timeout_s=20), h.client_settings("agent"))
    task = asyncio.create_task(agent.run())
    try:
        await listening(h, "agent")
        signing_clock.advance(timedelta(seconds=10))  # the renewed certificate starts 10 s after the old one
        lifetime = old.not_after - old.not_before
        # Half a second past the renewal point (whole seconds): the new certificate's comes later.
        enrollment_clock.pin((old.not_after - lifetime / 3).replace(microsecond=500_000))
        await eventually(lambda: asyncio.sleep(0, agent.stats["renewals"] >= 1), timeout=60)
        await eventually(lambda: asyncio.sleep(0, not (tmp_path / "web" / "key.pem.old").exists()), timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    new_cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    new_serial = serial_hex(new_cert)
    new_key = load_private_key(key_file.read_bytes())
    assert new_serial != old.serial
    assert spki_sha256(new_key.public_key()) != spki_sha256(old_key.public_key())
    assert spki_sha256(new_key.public_key()) == spki_sha256(new_cert.public_key())  # type: ignore[arg-type]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert marker.read_text().strip() == new_serial
    assert sorted(p.name for p in (tmp_path / "web").iterdir()) == ["cert.pem", "chain.pem", "key.pem"]

    await applied(h)  # the attestation the agent handed to the ingress stream is on the log
    renewals = await h.stream_messages(f"{h.root}.cert.*.renewal_requested")
    assert len(renewals) == 1
    request = RenewalRequested.model_validate_json(renewals[0].data)
    assert request.renews_serial == old.serial
    (issued_msg,) = await h.stream_messages(f"{h.root}.cert.{request.aggregate_id}.issued")
    assert CertificateIssued.model_validate_json(issued_msg.data).supersedes == old.serial
    destroyed = await h.stream_messages(f"{h.root}.key.*.destroyed")
    assert [KeyDestroyed.model_validate_json(m.data).spki_sha256 for m in destroyed] == [old.spki_sha256]

    async def history() -> list[str] | None:
        async with h.client("operator") as c:  # a certificate's whole history is an operator's query
            types = [e.event_type for e in (await c.history(old.serial)).events]
        return types if {"CertificateSuperseded", "KeyDestroyed"} <= set(types) else None

    types = await eventually(history, timeout=30, interval=0.3)
    # requested -> issued -> renewal due -> renewed (the request, then the new certificate naming this
    # one as superseded) -> superseded -> key destroyed, in log order
    in_order = [
        "EnrollmentRequested",
        "CertificateIssued",
        "CertificateRenewalDue",
        "RenewalRequested",
        "CertificateIssued",
        "CertificateSuperseded",
        "KeyDestroyed",
    ]
    assert subsequence(in_order, types), types
    async with h.client("operator") as c:  # the attestation names the certificate's key and is signed by it
        assert (await c.check()).findings == []


async def test_with_signing_down_when_renewal_is_due_the_agent_sends_one_request_and_renews_when_it_returns(
    renewing: Renewing, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    """The CA (signing) is down when renewal falls due: enrollment approves the agent's one request,
    nothing is issued; the agent asks what became of it on its backoff (accelerated here) and sends
    nothing more; signing comes back, works off the approval it missed, and the agent renews."""
    h, enrollment_clock, _ = renewing
    old_key, old = await enroll_with_key("outage.corp.internal")
    cert_file, key_file = holder_files(tmp_path / "svc", old_key, old)
    settings = AgentSettings(request_timeout_s=1, transient_base_s=0.2, transient_cap_s=1)
    agent = Agent([CertificateEntry(cert=cert_file, key=key_file)], settings, h.client_settings("agent"))
    await h.stop("signing")
    task = asyncio.create_task(agent.run())
    try:
        await listening(h, "agent")
        enrollment_clock.pin((old.not_after - (old.not_after - old.not_before) / 3).replace(microsecond=500_000))
        await eventually(lambda: asyncio.sleep(0, agent.stats["submits"] >= 4), timeout=60)
        assert len(await h.stream_messages(f"{h.root}.cert.*.renewal_requested")) == 1
        assert serial_hex(x509.load_pem_x509_certificate(cert_file.read_bytes())) == old.serial
        tracked = agent.tracked[0]
        assert (tracked.failure_kind, tracked.failures >= 3) == ("transient", True)  # no outcome yet: short backoff
        await h.start("signing")
        await eventually(lambda: asyncio.sleep(0, agent.stats["renewals"] >= 1), timeout=60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert serial_hex(x509.load_pem_x509_certificate(cert_file.read_bytes())) != old.serial
    assert len(await h.stream_messages(f"{h.root}.cert.*.renewal_requested")) == 1  # never a second request


async def test_the_certbus_agent_process_looks_after_two_certificates_and_stops_cleanly_on_sigterm(
    renewing: Renewing, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    """`certbus agent --config` as an operator runs it: one process, two certificates, each with its
    reload command; renewal-due events from enrollment drive both; SIGTERM stops it with exit 0. Its
    requests are recorded as from the identity it connects as (its own NKey user)."""
    h, enrollment_clock, signing_clock = renewing
    await h.identity("agent-under-test")
    olds, config = {}, []
    for name in ("alpha", "beta"):
        key, issued = await enroll_with_key(f"{name}.corp.internal")
        holder_files(tmp_path / name, key, issued)
        olds[name] = issued
        config.append(
            f'[[certificate]]\ncert = "{name}/cert.pem"\nkey = "{name}/key.pem"\n'
            f'exec = "echo $CERTBUS_SERIAL > {name}/reloaded"\n'
        )
    (tmp_path / "agent.toml").write_text("\n".join(config))
    env = _process_env(h, "agent-under-test")
    env.update(CERTBUS_HOME=str(tmp_path / "home"))
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shared.client.cli.main", "agent", "--config", str(tmp_path / "agent.toml"),
        env=env, cwd=tmp_path, stdout=PIPE, stderr=PIPE,
    )  # fmt: skip
    try:
        await listening(h, "agent-under-test", timeout=30)  # a process of its own: started, connected
        signing_clock.advance(timedelta(seconds=10))  # the renewed certificates' renewal points come later
        latest = max(o.not_after - (o.not_after - o.not_before) / 3 for o in olds.values())
        enrollment_clock.pin(latest.replace(microsecond=500_000))

        def renewed() -> bool:
            return all((tmp_path / name / "reloaded").exists() for name in olds)

        await eventually(lambda: asyncio.sleep(0, renewed()), timeout=60, interval=0.2)
        await eventually(
            lambda: asyncio.sleep(0, not any((tmp_path / n / "key.pem.old").exists() for n in olds)), timeout=30
        )
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(agent.communicate(), timeout=30)
    assert agent.returncode == 0, stderr.decode()
    assert "certbus agent: stopped" in stdout.decode()
    for name, old in olds.items():
        cert = x509.load_pem_x509_certificate((tmp_path / name / "cert.pem").read_bytes())
        assert serial_hex(cert) != old.serial
        assert (tmp_path / name / "reloaded").read_text().strip() == serial_hex(cert)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["cert.pem", "chain.pem", "key.pem", "reloaded"]
    messages = await h.stream_messages(f"{h.root}.cert.*.renewal_requested")
    requests = [RenewalRequested.model_validate_json(m.data) for m in messages]
    assert sorted(r.renews_serial for r in requests) == sorted(o.serial for o in olds.values())
    assert {r.requester for r in requests} == {"agent-under-test"}


async def test_after_its_ca_is_compromised_the_agent_renews_at_once_under_the_replacement_ca(
    stack: Harness, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    """No clock is moved: enrollment's CertificateRenewalDue (cause ca_compromise) alone makes the agent
    renew, by proof of its key (still only its own), with a new key, from the replacement CA."""
    old_key, old = await enroll_with_key("ca-hit.corp.internal")
    cert_file, key_file = holder_files(tmp_path / "svc", old_key, old)
    agent = Agent([CertificateEntry(cert=cert_file, key=key_file)], AgentSettings(), stack.client_settings("agent"))
    task = asyncio.create_task(agent.run())
    try:
        await listening(stack, "agent")
        done = await stack.cli("ca", "compromise", old.issuer_id, "--reason", "HSM backup copied")
        assert done.returncode == 0, done.stderr
        await eventually(lambda: asyncio.sleep(0, agent.stats["renewals"] >= 1), timeout=60, interval=0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    (message,) = await stack.stream_messages(f"{stack.root}.cert.*.renewal_requested")
    request = RenewalRequested.model_validate_json(message.data)
    (issued_msg,) = await stack.stream_messages(f"{stack.root}.cert.{request.aggregate_id}.issued")
    issued = CertificateIssued.model_validate_json(issued_msg.data)
    assert request.renews_serial == old.serial and issued.supersedes == old.serial
    assert issued.issuer_id != old.issuer_id  # the replacement CA
    assert issued.spki_sha256 != old.spki_sha256
    assert serial_hex(x509.load_pem_x509_certificate(cert_file.read_bytes())) == issued.serial
    async with stack.client() as c:
        assert (await c.status(issued.serial)).status == "good"


async def test_after_a_key_compromise_the_agent_re_enrolls_with_a_token_and_a_new_key(
    stack: Harness, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    """The old key proves nothing after keyCompromise, so enrollment refuses a key-proof renewal; the
    agent's token_command gives it a one-time token and it enrolls a new key at once."""
    old_key, old = await enroll_with_key("leaked.corp.internal")
    cert_file, key_file = holder_files(tmp_path / "svc", old_key, old)
    (tmp_path / "token").write_text(stack.token("leaked.corp.internal"))
    entry = CertificateEntry(cert=cert_file, key=key_file, token_command=f"cat {tmp_path / 'token'}")
    agent = Agent([entry], AgentSettings(), stack.client_settings("agent"))
    task = asyncio.create_task(agent.run())
    try:
        await listening(stack, "agent")
        async with stack.client() as c:
            await c.revoke(old.serial, "keyCompromise", key=old_key)
        await eventually(lambda: asyncio.sleep(0, agent.stats["renewals"] >= 1), timeout=60, interval=0.2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert await stack.stream_messages(f"{stack.root}.cert.*.renewal_requested") == []  # no key proof was tried
    new = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert serial_hex(new) != old.serial
    assert spki_sha256(load_private_key(key_file.read_bytes()).public_key()) != old.spki_sha256
    async with stack.client() as c:
        assert (await c.status(serial_hex(new))).status == "good"
    # the compromised key's file is gone like any superseded key's (it is blocked at enrollment anyway)
    assert sorted(p.name for p in (tmp_path / "svc").iterdir()) == ["cert.pem", "chain.pem", "key.pem"]


async def test_certbus_renew_writes_a_new_key_and_certificate(
    stack: Harness, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    old_key, old = await enroll_with_key("manual.corp.internal")
    cert_file, key_file = holder_files(tmp_path / "old", old_key, old)
    out = tmp_path / "new"
    done = await stack.cli("renew", "--cert", str(cert_file), "--key", str(key_file), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    new_key = load_private_key((out / "key.pem").read_bytes())
    new_cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert spki_sha256(new_key.public_key()) == spki_sha256(new_cert.public_key())  # type: ignore[arg-type]
    assert spki_sha256(new_key.public_key()) != old.spki_sha256
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert (out / "chain.pem").read_text()
    assert key_file.read_bytes() == key_pem(old_key)  # the old key is left alone

    same_dir = await stack.cli(
        "renew", "--cert", str(cert_file), "--key", str(key_file), "--out", str(tmp_path / "old")
    )
    assert same_dir.returncode == 2
    assert "is the current key" in " ".join(same_dir.stderr.replace("│", " ").split())  # the box wraps lines
