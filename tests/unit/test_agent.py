"""The renewal agent against a fake Certbus, in virtual time: when it renews, how it backs off, what
it writes, what survives a crash, and how it treats a CA that is gone for an hour."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import stat
import statistics
from collections.abc import AsyncIterator, Container
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

import shared.client.agent.host as agent_module
from clock import TestClock
from shared.client.agent import Agent, AgentSettings, Backoff, CertificateEntry, load_config, run_command
from shared.client.sdk import LifecycleEvent, Rejected, Unreachable
from shared.contract.events import (
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    EnrollmentRequested,
    Event,
    KeyDestroyed,
    RenewalRequested,
    key_destroyed_message,
    renewal_message,
    utcnow,
)
from shared.contract.queries import StatusAnswer
from shared.contract.reasons import Reason
from shared.pki.crypto import (
    PrivateKey,
    fingerprint_sha256,
    key_pem,
    serial_hex,
    spki_sha256,
    verify_message,
)
from shared.pki.holder import load_private_key
from shared.pki.tokens import create_token

START = datetime(2026, 3, 1, tzinfo=UTC)
LIFETIME = timedelta(hours=3)  # renewal point: one hour before expiry
NAME = "web.corp.internal"


class VirtualTime:
    """A clock that jumps when the agent sleeps, up to a horizon the test moves."""

    def __init__(self) -> None:
        self.clock = TestClock(START)
        self.horizon = START
        self._moved = asyncio.Event()
        self.parked = asyncio.Event()

    def now(self) -> datetime:
        return self.clock.now()

    async def sleep(self, seconds: float) -> None:
        target = self.now() + timedelta(seconds=seconds)
        try:
            while target > self.horizon:
                self.clock.advance(self.horizon - self.now())
                self._moved.clear()
                self.parked.set()
                await self._moved.wait()
        finally:
            self.parked.clear()  # moving on, or woken by an event
        self.clock.advance(max(target - self.now(), timedelta(0)))
        await asyncio.sleep(0)

    async def run_until(self, when: datetime) -> None:
        """Let the agent's time run up to `when`; return once it sleeps past it with nothing left to do."""
        self.horizon = when
        self._moved.set()
        while True:
            await asyncio.wait_for(self.parked.wait(), timeout=20)
            for _ in range(20):  # let events already delivered wake it
                await asyncio.sleep(0)
            if self.parked.is_set():
                return


class FakeCertbus:
    """Issues certificates for renewal and enrollment requests with a throwaway CA and counts what it
    is asked. `reachable` False is NATS down; `answering` False is enrollment silent; `issuing` False
    is a request accepted but no outcome yet; `refusal` refuses every request."""

    def __init__(self, vt: VirtualTime) -> None:
        self.vt = vt
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.reachable = True
        self.answering = True
        self.issuing = True
        self.refusal: list[Reason] | None = None
        self.token: str | None = None
        self.certs: dict[str, x509.Certificate] = {}
        self.revoked: dict[str, str] = {}
        self.superseded: dict[str, str] = {}  # old serial -> the serial of the renewal that replaced it
        self.held: set[str] = set()  # serials whose renewal's outcome waits for `release`
        self.release = asyncio.Event()
        self.shows_superseded = True  # validation's status shows it
        self.published: list[Event] = []
        self.outcomes: dict[str, CertificateIssued | list[Reason]] = {}
        self.clients: list[FakeClient] = []
        self.connects = self.queries = self.status_queries = 0
        self.in_flight = self.max_in_flight = 0
        self.query_times: list[datetime] = []

    def requests(self) -> list[Event]:
        return [e for e in self.published if isinstance(e, RenewalRequested | EnrollmentRequested)]

    def attestations(self) -> list[KeyDestroyed]:
        return [e for e in self.published if isinstance(e, KeyDestroyed)]

    def issue(self, public_key: object, request_id: str, age: timedelta = timedelta(0), supersedes: str | None = None):
        not_before = self.vt.now() - age
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CA")]))
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        serial = serial_hex(cert)
        self.certs[serial] = cert
        if supersedes is not None:
            self.superseded[supersedes] = serial
        return CertificateIssued(
            aggregate_id=request_id,
            occurred_at=self.vt.now(),
            correlation_id=request_id,
            producer="signing",
            serial=serial,
            issuer_id="fake-ca",
            profile="tls-server",
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem="CHAIN OF fake-ca\n",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            dns_names=[NAME],
            spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
            fingerprint_sha256=fingerprint_sha256(cert),
            supersedes=supersedes,
        )

    def decide(self, request: RenewalRequested | EnrollmentRequested) -> CertificateIssued | list[Reason]:
        csr = x509.load_pem_x509_csr(request.csr_pem.encode())
        if isinstance(request, EnrollmentRequested):
            if request.token != (self.token or "").rpartition("~")[0]:
                return [Reason(code="token_invalid", message="not the expected token")]
            return self.issue(csr.public_key(), request.aggregate_id)
        old = self.certs[request.renews_serial]
        message = renewal_message(
            request.aggregate_id, request.renews_serial, csr.public_bytes(serialization.Encoding.DER)
        )
        old_public = old.public_key()
        assert verify_message(old_public, base64.b64decode(request.proof), message), "not by the current key"  # type: ignore[arg-type]
        if spki_sha256(csr.public_key()) == spki_sha256(old.public_key()):  # type: ignore[arg-type]
            return [Reason(code="key_reused", message="use a new key")]
        if self.revoked.get(request.renews_serial, "cACompromise") != "cACompromise":
            return [Reason(code="certificate_revoked", message="revoked: re-enroll with a token")]
        if self.refusal is not None:
            return self.refusal
        return self.issue(csr.public_key(), request.aggregate_id, supersedes=request.renews_serial)

    async def connect(self) -> FakeClient:
        self.connects += 1
        if not self.reachable:
            raise Unreachable("cannot reach NATS")
        client = FakeClient(self)
        self.clients.append(client)
        return client

    def go_down(self) -> None:
        self.reachable = False
        for client in self.clients:
            client.close_now()

    def announce(self, event: LifecycleEvent) -> None:
        for client in self.clients:
            client.events.put_nowait(event)


class FakeClient:
    def __init__(self, ca: FakeCertbus) -> None:
        self.ca = ca
        self.closed = False
        self.events: asyncio.Queue[LifecycleEvent | None] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        return not self.closed and self.ca.reachable

    def close_now(self) -> None:
        self.closed = True
        self.events.put_nowait(None)

    async def close(self) -> None:
        self.close_now()

    async def submit(
        self, request: EnrollmentRequested | RenewalRequested, timeout: float = 30.0, wait_visible: bool = True
    ) -> CertificateIssued:
        ca = self.ca
        ca.in_flight += 1
        ca.max_in_flight = max(ca.max_in_flight, ca.in_flight)
        try:
            await asyncio.sleep(0)
            if not self.connected:
                raise Unreachable("connection closed")
            ca.queries += 1
            ca.query_times.append(ca.vt.now())
            if not ca.answering:
                raise Unreachable("enrollment did not answer 'request'")
            request_id = request.aggregate_id
            if request_id not in {r.aggregate_id for r in ca.requests()}:
                ca.published.append(request)
            if isinstance(request, RenewalRequested) and request.renews_serial in ca.held:
                await ca.release.wait()  # this one's outcome is slow to come
            if not ca.issuing:
                raise Unreachable(f"no outcome for request {request_id} within {timeout:.0f} s")
            outcome = ca.outcomes.setdefault(request_id, ca.decide(request))
            if isinstance(outcome, list):
                raise Rejected(outcome)
            return outcome
        finally:
            ca.in_flight -= 1

    async def status(self, serial: str) -> StatusAnswer:
        self.ca.status_queries += 1
        reason = self.ca.revoked.get(serial)
        return StatusAnswer(
            serial=serial,
            status="revoked" if reason else "good",
            reason=reason,
            superseded_by=self.ca.superseded.get(serial) if self.ca.shows_superseded else None,
        )

    async def publish(self, event: Event, timeout: float = 5.0) -> int:
        if not self.connected:
            raise Unreachable("the Certbus stream did not acknowledge")
        self.ca.published.append(event)
        return len(self.ca.published)

    async def lifecycle(self, serials: Container[str]) -> AsyncIterator[LifecycleEvent]:
        while (event := await self.events.get()) is not None:
            if event.serial in serials:
                yield event


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def ca(vt: VirtualTime) -> FakeCertbus:
    return FakeCertbus(vt)


def enrolled(
    ca: FakeCertbus, tmp_path: Path, age: timedelta = timedelta(0), key: PrivateKey | None = None, **fields: object
) -> tuple[CertificateEntry, PrivateKey, str]:
    """A certificate `age` old with its key in tmp_path; returns the entry, the key and the serial."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue(key.public_key(), "first", age=age)
    (tmp_path / "cert.pem").write_text(issued.cert_pem)
    fd = os.open(tmp_path / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key_pem(key))
    os.close(fd)
    entry = CertificateEntry(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem", **fields)  # type: ignore[arg-type]
    return entry, key, issued.serial


def make_agent(
    ca: FakeCertbus, vt: VirtualTime, *entries: CertificateEntry, seed: int = 1, **settings: object
) -> Agent:
    return Agent(
        list(entries),
        AgentSettings(**settings),  # type: ignore[arg-type]
        connect=ca.connect,
        clock=vt.clock,
        sleep=vt.sleep,
        rng=random.Random(seed),
    )


async def running(agent: Agent) -> asyncio.Task[None]:
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def current_serial(entry: CertificateEntry) -> str:
    return serial_hex(x509.load_pem_x509_certificate(entry.cert.read_bytes()))


# --- backoff --------------------------------------------------------------------------------------------


def test_backoff_ceilings_double_from_the_base_up_to_the_cap() -> None:
    transient = Backoff(1.0, 300.0)
    assert [transient.ceiling(n) for n in range(1, 12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    terminal = Backoff(600.0, 6 * 3600.0)
    assert [terminal.ceiling(n) for n in range(1, 8)] == [600, 1200, 2400, 4800, 9600, 19200, 21600]
    assert terminal.ceiling(10_000) == 21600


def test_backoff_delays_are_full_jitter_within_zero_and_the_ceiling() -> None:
    backoff, rng = Backoff(1.0, 300.0), random.Random(7)
    for failures in (1, 4, 20):
        delays = [backoff.delay(failures, rng) for _ in range(2000)]
        ceiling = backoff.ceiling(failures)
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.05 and max(delays) > ceiling * 0.95  # spread over the whole range


# --- renewal --------------------------------------------------------------------------------------------


async def test_renews_once_a_third_of_the_lifetime_is_left_and_destroys_the_old_key(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    marker = tmp_path / "reloaded"
    entry, old_key, old_serial = enrolled(ca, tmp_path, exec=f'echo "$CERTBUS_SERIAL" > {marker}')
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(hours=1, minutes=59))
    assert ca.requests() == [] and current_serial(entry) == old_serial
    await vt.run_until(START + timedelta(hours=2, minutes=1))
    await stop(task)

    (request,) = ca.requests()
    assert isinstance(request, RenewalRequested) and request.renews_serial == old_serial
    new_serial = current_serial(entry)
    assert new_serial != old_serial and ca.outcomes[request.aggregate_id].serial == new_serial  # type: ignore[union-attr]
    new_key = load_private_key(entry.key.read_bytes())
    assert spki_sha256(new_key.public_key()) != spki_sha256(old_key.public_key())
    assert spki_sha256(new_key.public_key()) == spki_sha256(ca.certs[new_serial].public_key())  # type: ignore[arg-type]
    assert stat.S_IMODE(entry.key.stat().st_mode) == 0o600
    assert (tmp_path / "chain.pem").read_text() == "CHAIN OF fake-ca\n"
    assert marker.read_text().strip() == new_serial  # the reload command ran, after the files were in place
    (attested,) = ca.attestations()
    assert attested.serial == old_serial and attested.spki_sha256 == spki_sha256(old_key.public_key())
    proof = base64.b64decode(attested.proof)
    message = key_destroyed_message(old_serial, attested.spki_sha256, attested.destroyed_at)
    assert verify_message(old_key.public_key(), proof, message)  # the old key's last signature
    assert files_in(tmp_path) == ["cert.pem", "chain.pem", "key.pem", "reloaded"]  # no .old, .next, state


async def test_the_old_key_is_destroyed_only_once_certbus_shows_the_old_certificate_superseded(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    entry, _, old_serial = enrolled(ca, tmp_path)
    ca.shows_superseded = False  # the new certificate is issued, but validation does not show the old one superseded
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(hours=2, minutes=1))
    assert current_serial(entry) != old_serial
    assert ca.attestations() == [] and entry.beside_key(".old").exists()
    ca.shows_superseded = True
    await vt.run_until(START + timedelta(hours=2, minutes=10))
    await stop(task)
    assert [a.serial for a in ca.attestations()] == [old_serial]
    assert not entry.beside_key(".old").exists()


async def test_a_failed_reload_is_retried_and_the_old_key_waits_until_one_succeeds(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken, tries, marker = tmp_path / "broken", tmp_path / "tries", tmp_path / "reloaded"
    broken.touch()
    reload = f'echo x >> {tries}; test ! -e {broken} && echo "$CERTBUS_SERIAL" > {marker}'
    entry, _, old_serial = enrolled(ca, tmp_path, age=timedelta(hours=2, minutes=1), exec=reload)
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(minutes=30))
    new_serial = current_serial(entry)
    assert new_serial != old_serial and len(ca.requests()) == 1  # installed, and never requested again
    attempts = len(tries.read_text().split())
    assert 5 <= attempts <= 40, attempts  # retried on the short schedule (1 s up to 5 min), not hammered
    assert not marker.exists() and ca.attestations() == [] and entry.beside_key(".old").exists()
    failed = [r for r in caplog.records if "reload command failed (exit code 1)" in r.getMessage()]
    assert failed and all(r.levelname == "ERROR" for r in failed)
    broken.unlink()
    await vt.run_until(START + timedelta(minutes=40))
    await stop(task)
    assert marker.read_text().strip() == new_serial
    assert [a.serial for a in ca.attestations()] == [old_serial] and len(ca.requests()) == 1
    assert files_in(tmp_path) == ["cert.pem", "chain.pem", "key.pem", "reloaded", "tries"]


async def test_a_certificate_waiting_for_its_outcome_does_not_hold_up_the_others(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    slow, _, slow_serial = enrolled(ca, tmp_path / "a", age=timedelta(hours=2, minutes=1))
    fast, _, fast_serial = enrolled(ca, tmp_path / "b", age=timedelta(hours=2, minutes=1))
    ca.held.add(slow_serial)
    task = await running(make_agent(ca, vt, slow, fast))
    async with asyncio.timeout(10):  # the agent's step waits on the slow outcome: no virtual sleep comes
        while current_serial(fast) == fast_serial:
            await asyncio.sleep(0.01)
    assert current_serial(slow) == slow_serial  # its outcome has not come; the other did not wait for it
    ca.release.set()
    await vt.run_until(START + timedelta(minutes=2))
    await stop(task)
    assert current_serial(slow) != slow_serial
    assert len(ca.requests()) == 2


async def test_an_unanswered_request_is_retried_on_the_short_schedule_with_the_same_request(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    entry, _, _ = enrolled(ca, tmp_path, age=timedelta(hours=2, minutes=30))
    ca.issuing = False  # accepted, but signing is down: no outcome
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(hours=1))
    await stop(task)
    assert len(ca.requests()) == 1  # published once; every retry asked what became of it
    gaps = [(b - a).total_seconds() for a, b in zip(ca.query_times, ca.query_times[1:], strict=False)]
    assert len(gaps) >= 10
    transient = Backoff(1.0, 300.0)
    assert all(gap <= transient.ceiling(n) for n, gap in enumerate(gaps, start=1))  # full jitter, within bounds
    assert max(gaps) > 150 and sum(gaps[-5:]) > 300  # it does back off
    assert ca.max_in_flight == 1
    assert ca.requests()[0].aggregate_id in (tmp_path / "key.pem.renewal.json").read_text()


async def test_a_refusal_backs_off_long_and_the_next_try_is_a_new_request_with_a_new_key(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry, _, _ = enrolled(ca, tmp_path, age=timedelta(hours=2, minutes=10))
    ca.refusal = [Reason(code="profile_retired", message="profile tls-server is retired: ask for another")]
    agent = make_agent(ca, vt, entry)
    task = await running(agent)
    with caplog.at_level(logging.ERROR, logger="certbus.agent"):
        await vt.run_until(START + timedelta(seconds=1))
    assert len(ca.requests()) == 1
    retry_at = agent.tracked[0].retry_at
    assert retry_at is not None and timedelta(0) <= retry_at - START <= timedelta(seconds=601)
    assert not (tmp_path / "key.pem.next").exists() and not (tmp_path / "key.pem.renewal.json").exists()
    assert any("profile_retired" in r.getMessage() for r in caplog.records)
    await vt.run_until(retry_at + timedelta(seconds=1))
    await stop(task)
    first, second = ca.requests()
    assert first.aggregate_id != second.aggregate_id
    assert first.csr_pem != second.csr_pem  # type: ignore[attr-defined]
    assert agent.tracked[0].failures == 2 and agent.tracked[0].failure_kind == "terminal"


async def test_after_a_crash_the_agent_resumes_with_the_pending_key_and_request_id(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    entry, _, old_serial = enrolled(ca, tmp_path, age=timedelta(hours=2, minutes=30))
    ca.issuing = False
    first = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(seconds=0.5))
    await stop(first)  # the agent dies with a request in flight
    pending_key = (tmp_path / "key.pem.next").read_bytes()
    assert stat.S_IMODE((tmp_path / "key.pem.next").stat().st_mode) == 0o600
    (request,) = ca.requests()

    ca.issuing = True
    second = await running(make_agent(ca, vt, entry, seed=2))
    await vt.run_until(vt.now() + timedelta(minutes=1))
    await stop(second)
    assert ca.requests() == [request]  # not sent again
    assert entry.key.read_bytes() == pending_key  # the key it asked for is the key it installed
    assert current_serial(entry) == ca.outcomes[request.aggregate_id].serial  # type: ignore[union-attr]
    assert [a.serial for a in ca.attestations()] == [old_serial]


class Crash(BaseException):
    """The process dies here."""


async def test_a_crash_half_way_through_installing_is_finished_on_restart(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry, old_key, old_serial = enrolled(ca, tmp_path, age=timedelta(hours=2, minutes=30))
    real_replace = os.replace

    def replace_then_die(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        if Path(dst) == entry.key:
            raise Crash  # the new key is in place, the certificate is not yet

    monkeypatch.setattr(agent_module.os, "replace", replace_then_die)
    with pytest.raises(Crash):
        await make_agent(ca, vt, entry).step()
    monkeypatch.setattr(agent_module.os, "replace", real_replace)
    assert current_serial(entry) == old_serial and (tmp_path / "key.pem.old").exists()

    await make_agent(ca, vt, entry).step()
    (request,) = ca.requests()
    new_serial = ca.outcomes[request.aggregate_id].serial  # type: ignore[union-attr]
    assert current_serial(entry) == new_serial
    assert spki_sha256(load_private_key(entry.key.read_bytes()).public_key()) == spki_sha256(
        ca.certs[new_serial].public_key()  # type: ignore[arg-type]
    )
    assert [a.spki_sha256 for a in ca.attestations()] == [spki_sha256(old_key.public_key())]
    assert files_in(tmp_path) == ["cert.pem", "chain.pem", "key.pem"]


async def test_events_never_put_a_second_request_in_flight(ca: FakeCertbus, vt: VirtualTime, tmp_path: Path) -> None:
    entry, _, serial = enrolled(ca, tmp_path)
    ca.issuing = False
    agent = make_agent(ca, vt, entry)
    task = await running(agent)
    await vt.run_until(START + timedelta(seconds=1))
    for cause in ("schedule", "schedule", "ca_compromise"):
        ca.announce(due(serial, cause))  # type: ignore[arg-type]
        await vt.run_until(vt.now() + timedelta(seconds=1))
    await stop(task)
    assert len(ca.requests()) == 1 and ca.max_in_flight == 1
    assert ca.queries >= 3  # each event led to one more look at the same request


def due(serial: str, cause: str) -> CertificateRenewalDue:
    return CertificateRenewalDue(
        aggregate_id="first",
        occurred_at=utcnow(),
        correlation_id="x",
        producer="revocation",
        serial=serial,
        issuer_id="fake-ca",
        due_at=utcnow(),
        cause=cause,  # type: ignore[arg-type]
    )


def revoked(serial: str, reason: str) -> CertificateRevoked:
    return CertificateRevoked(
        aggregate_id="first",
        occurred_at=utcnow(),
        correlation_id="x",
        producer="revocation",
        serial=serial,
        issuer_id="fake-ca",
        reason=reason,
        revoked_at=utcnow(),
        revocation_request_id="r",
        requested_by="tests",
    )


async def test_ca_compromise_renews_a_fresh_certificate_at_once(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    entry, _, serial = enrolled(ca, tmp_path)
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(seconds=1))
    ca.revoked[serial] = "cACompromise"
    ca.announce(revoked(serial, "cACompromise"))
    ca.announce(due(serial, "ca_compromise"))
    await vt.run_until(START + timedelta(seconds=2))
    await stop(task)
    (request,) = ca.requests()
    assert isinstance(request, RenewalRequested)  # a key-proof renewal: enrollment allows it after CA compromise
    assert current_serial(entry) != serial


async def test_key_compromise_re_enrolls_with_a_token_from_the_token_command(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    ca.token = create_token(ed25519.Ed25519PrivateKey.generate(), "default", [NAME], utcnow(), timedelta(minutes=5))
    (tmp_path / "token").write_text(ca.token)
    entry, _, serial = enrolled(ca, tmp_path, token_command=f"cat {tmp_path / 'token'}")
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(seconds=1))
    ca.revoked[serial] = "keyCompromise"
    ca.announce(revoked(serial, "keyCompromise"))
    await vt.run_until(START + timedelta(seconds=2))
    await stop(task)
    (request,) = ca.requests()
    assert isinstance(request, EnrollmentRequested) and request.token == ca.token.rpartition("~")[0]
    assert current_serial(entry) != serial


async def test_key_compromise_without_a_token_command_logs_an_error_and_retries_on_the_long_schedule(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry, _, serial = enrolled(ca, tmp_path)
    ca.revoked[serial] = "keyCompromise"  # while the agent was not listening: found by the status check
    agent = make_agent(ca, vt, entry)
    task = await running(agent)
    with caplog.at_level(logging.ERROR, logger="certbus.agent"):
        await vt.run_until(START + timedelta(hours=1))
    await stop(task)
    assert ca.status_queries == 1
    gaps = [(b - a).total_seconds() for a, b in zip(ca.query_times, ca.query_times[1:], strict=False)]
    terminal = Backoff(600.0, 6 * 3600.0)
    assert 1 <= len(ca.requests()) <= 6
    assert all(gap <= terminal.ceiling(n) for n, gap in enumerate(gaps, start=1))
    assert any("certificate_revoked" in r.getMessage() for r in caplog.records)
    assert agent.tracked[0].failure_kind == "terminal"
    assert current_serial(entry) == serial


async def one_hour_without_the_ca(outage: str, seed: int, tmp_path: Path) -> tuple[FakeCertbus, dict[str, int], float]:
    """Renewal is due and the CA is out of reach for an hour of virtual time: NATS down, the services
    silent, or only signing down (enrollment approves, nothing is issued). Returns the fake CA, what the
    agent tried during the hour, and how many seconds after the CA came back the agent had renewed."""
    vt = VirtualTime()
    ca = FakeCertbus(vt)
    entry, _, old_serial = enrolled(ca, tmp_path, age=timedelta(hours=2, minutes=1))  # renewal is due
    if outage == "nats down":
        ca.reachable = False
    elif outage == "services silent":
        ca.answering = False
    else:
        ca.issuing = False
    task = await running(make_agent(ca, vt, entry, seed=seed))
    await vt.run_until(START + timedelta(hours=1))
    tries = {"connects": ca.connects, "queries": ca.queries, "requests published": len(ca.requests())}
    ca.reachable = ca.answering = ca.issuing = True
    back = vt.now()
    while current_serial(entry) == old_serial and vt.now() < back + timedelta(minutes=10):
        await vt.run_until(vt.now() + timedelta(seconds=1))
    await stop(task)
    assert current_serial(entry) != old_serial
    return ca, tries, (vt.now() - back).total_seconds()


@pytest.mark.parametrize("outage", ["nats down", "services silent", "signing down"])
async def test_an_hour_without_the_ca_costs_a_few_dozen_tries_and_renewal_follows_its_return(
    tmp_path: Path, outage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """AGENT_OUTAGE_SEEDS=30 runs 30 seeded hours per outage and prints the spread (for the figures in
    docs/requesting.md); by default one."""
    runs = []
    for seed in range(11, 11 + int(os.environ.get("AGENT_OUTAGE_SEEDS", "1"))):
        (tmp_path / str(seed)).mkdir()
        ca, tries, renewed_after = await one_hour_without_the_ca(outage, seed, tmp_path / str(seed))
        runs.append((tries, renewed_after))
        assert len(ca.requests()) == 1 and ca.max_in_flight == 1  # one request, ever
        assert renewed_after <= 301  # at most one transient slot (cap 5 min)
        if outage == "nats down":
            assert tries["queries"] == 0 and tries["requests published"] == 0 and 10 <= tries["connects"] <= 45
        elif outage == "services silent":  # enrollment cannot say whether it knows the request: nothing sent
            assert tries["requests published"] == 0 and 10 <= tries["queries"] <= 45 and tries["connects"] == 1
        else:  # sent once, then only asked what became of it
            assert tries["requests published"] == 1 and 10 <= tries["queries"] <= 45 and tries["connects"] == 1
    with capsys.disabled():
        for name in ("connects", "queries", "requests published"):
            values = sorted(t[name] for t, _ in runs)
            print(f"\n[{outage}] {name} in the hour: {values[0]}-{values[-1]}, median {statistics.median(values)}")
        after = sorted(a for _, a in runs)
        spread = f"{after[0]:.0f}-{after[-1]:.0f} s, median {statistics.median(after):.0f} s"
        print(f"[{outage}] renewed after the CA came back: {spread}")


async def test_a_lost_connection_is_re_established_lazily_and_the_revocations_missed_are_looked_up(
    ca: FakeCertbus, vt: VirtualTime, tmp_path: Path
) -> None:
    entry, _, serial = enrolled(ca, tmp_path)
    task = await running(make_agent(ca, vt, entry))
    await vt.run_until(START + timedelta(seconds=1))
    ca.go_down()
    await vt.run_until(START + timedelta(minutes=10))
    ca.revoked[serial] = "cACompromise"  # revoked while the agent was cut off
    ca.reachable = True
    connects = ca.connects
    await vt.run_until(START + timedelta(minutes=16))
    await stop(task)
    assert ca.connects == connects + 1  # one reconnect when its slot came, no burst
    assert ca.status_queries == 3  # at the first connection, after the reconnect, and before destroying the old key
    assert current_serial(entry) != serial


# --- commands and configuration -----------------------------------------------------------------------


async def test_a_command_that_overruns_is_killed_with_its_children(tmp_path: Path) -> None:
    result = await run_command(f"sleep 30 & echo $! > {tmp_path / 'pid'}; wait", {}, timeout=0.5)
    assert result.exit_code is None
    child = int((tmp_path / "pid").read_text())
    await asyncio.sleep(0.1)
    state = Path(f"/proc/{child}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone (or a zombie)


def test_a_config_file_lists_certificates_with_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(
        '[agent]\nrenew_fraction = 0.25\n\n[[certificate]]\ncert = "web/cert.pem"\nkey = "web/key.pem"\n'
        'exec = "systemctl reload nginx"\n\n[[certificate]]\ncert = "/etc/api.pem"\nkey = "/etc/api.key"\n'
        'profile = "tls-client"\ntoken_command = "vault read -field=token x"\n'
    )
    settings, (web, api) = load_config(tmp_path / "agent.toml")
    assert settings.renew_fraction == 0.25
    assert web.cert == tmp_path / "web" / "cert.pem" and web.reload == "systemctl reload nginx"
    assert web.chain_path == tmp_path / "web" / "chain.pem"
    assert api.key == Path("/etc/api.key") and api.chain_path == Path("/etc/api.chain.pem")
    assert api.profile == "tls-client" and api.token_command == "vault read -field=token x"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('[[certificate]]\ncert = "c.pem"\n', "certificate.0.key"),
        ("[agent]\nrenew_fraction = 2\n[[certificate]]\ncert = 'c'\nkey = 'k'\n", "renew_fraction"),
        (
            '[[certificate]]\ncert = "a.pem"\nkey = "k.pem"\n[[certificate]]\ncert = "b.pem"\nkey = "k.pem"\n',
            "same key",
        ),
        ("[[certificate]\n", "not valid TOML"),
        ("", "certificate"),
    ],
)
def test_a_bad_config_file_is_refused_saying_what_to_change(tmp_path: Path, body: str, says: str) -> None:
    (tmp_path / "agent.toml").write_text(body)
    with pytest.raises(ValueError, match=says):
        load_config(tmp_path / "agent.toml")


def test_the_example_config_in_deploy_loads() -> None:
    settings, entries = load_config(Path(__file__).parents[2] / "deploy" / "agent.example.toml")
    assert settings.requester == "web-frontends" and settings.transient_cap_s == 300
    assert [e.reload for e in entries] == ["systemctl reload nginx", "kill -HUP $(cat /run/billing.pid)"]
    assert entries[1].chain_path == Path("/etc/billing/mtls/chain.pem")
