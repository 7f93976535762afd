"""`certbus agent`: keeps certificates fresh and their old keys destroyed, with no human in the loop.

A certificate is renewed when less than `renew_fraction` of its lifetime is left (read from the
certificate file, checked on a timer), when enrollment says its renewal is due, and when it is
revoked. A renewal is a small state machine kept on disk beside the key, so that a crash or a retry
resumes it and never sends a second request:

    <key>.next            the new key (0600), written before anything is sent
    <key>.renewal.json    the request as first built (request id, event id), then the issued
                          certificate, then how far the installation got
    <key>.old             a hard link to the old key's file (the same data, not a copy) while the
                          old key waits to sign its own destruction and be destroyed

On success: chain, cert to `<cert>.next`, rename the key, rename the cert, run the reload command,
publish the old key's signed KeyDestroyed, overwrite and unlink the old key. A failed reload is
retried on the short schedule, and the old key waits until one succeeds. Failures back off with
full jitter: short for transient ones (NATS or a service unreachable, no outcome yet), long for
refusals. One loop tends every certificate side by side, each with at most one request in flight,
and reconnects lazily, once per slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Container
from datetime import timedelta
from typing import Literal, Protocol

from cryptography import x509

from shared.base.clock import Clock, SystemClock
from shared.base.files import destroy_file, fsync_dir, write_atomic
from shared.base.settings import CommonSettings
from shared.client.agent.config import AgentSettings, CertificateEntry, check_entries
from shared.client.agent.host import CommandFailed, ReloadFailed, install, run_command
from shared.client.agent.state import Backoff, RenewalState, Tracked, renewal_point
from shared.client.sdk import (
    CertbusClient,
    CertbusError,
    LifecycleEvent,
    Pending,
    Rejected,
    Throttled,
    Unreachable,
)
from shared.contract.events import (
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    EnrollmentRequested,
    Event,
    RenewalRequested,
)
from shared.contract.queries import StatusAnswer
from shared.pki.crypto import key_pem, serial_hex
from shared.pki.holder import (
    enrollment_request,
    key_destroyed_attestation,
    load_private_key,
    new_key_like,
    renewal_csr,
    renewal_request,
)

log = logging.getLogger("certbus.agent")


class AgentClient(Protocol):
    """What the agent needs of `CertbusClient` (tests pass a fake)."""

    @property
    def connected(self) -> bool: ...

    async def submit(
        self, request: EnrollmentRequested | RenewalRequested, timeout: float = 30.0, wait_visible: bool = True
    ) -> CertificateIssued: ...

    async def status(self, serial: str) -> StatusAnswer: ...

    async def publish(self, event: Event, timeout: float = 5.0) -> int: ...

    def lifecycle(self, serials: Container[str]) -> AsyncIterator[LifecycleEvent]: ...

    async def close(self) -> None: ...


class NotConnected(Unreachable):
    """No NATS connection right now (the agent reconnects on its own schedule)."""


class Agent:
    """Looks after certificates: renews, installs, reloads, destroys old keys; retries gently."""

    def __init__(
        self,
        entries: list[CertificateEntry],
        settings: AgentSettings | None = None,
        common: CommonSettings | None = None,
        *,
        connect: Callable[[], Awaitable[AgentClient]] | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        check_entries(entries)
        self.settings = settings or AgentSettings()
        self.common = common or CommonSettings()
        self.tracked = [Tracked(entry) for entry in entries]
        self.stats: Counter[str] = Counter()  # connects, submits, status checks, attestations, renewals
        self._connect = connect or self._connect_nats
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._rng = rng or random.SystemRandom()
        self._transient = Backoff(self.settings.transient_base_s, self.settings.transient_cap_s)
        self._terminal = Backoff(self.settings.terminal_base_s, self.settings.terminal_cap_s)
        self._client: AgentClient | None = None
        self._listener: asyncio.Task[None] | None = None
        self._connect_failures = 0
        self._connect_at = self._clock.now()
        self._serials: set[str] = set()
        self._wake = asyncio.Event()

    async def _connect_nats(self) -> AgentClient:
        client = CertbusClient(self.common, requester=self.settings.requester)
        await client.connect()
        return client

    async def run(self) -> None:
        """Look after the certificates until cancelled."""
        try:
            while True:
                await self.step()
                await self._idle(self.next_wake_in())
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None

    async def step(self) -> None:
        """One pass: keep the connection, then move every certificate along as far as it can go now,
        side by side (one waiting for an outcome does not hold up the others; each has at most one
        request in flight)."""
        await self._keep_connected()
        await asyncio.gather(*(self._tend(tracked) for tracked in self.tracked))

    def next_wake_in(self) -> float:
        """Seconds until the next thing to do (events wake the agent earlier)."""
        now = self._clock.now()
        times = [now + timedelta(seconds=self.settings.check_interval_s)]
        if self._client is None:
            times.append(self._connect_at)
        for t in self.tracked:
            if t.waiting_for_connection:
                continue
            if t.retry_at is not None:
                times.append(t.retry_at)
            elif t.not_before is not None and t.not_after is not None:
                point = renewal_point(t.not_before, t.not_after, self.settings.renew_fraction)
                times.extend(p for p in (point, t.not_after) if p > now)
        return max((min(times) - now).total_seconds(), 0.0)

    def wake(self) -> None:
        """Look again now."""
        self._wake.set()

    async def _idle(self, seconds: float) -> None:
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self._sleep(seconds))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, waker):
                    task.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)
        self._wake.clear()

    # --- the connection and the events on it -------------------------------------------------------

    async def _keep_connected(self) -> None:
        now = self._clock.now()
        listening = self._listener is not None and not self._listener.done()
        if self._client is not None and not (self._client.connected and listening):
            log.warning("lost the NATS connection: reconnecting after a jittered delay")
            await self.close()
            self._connect_failures = 1
            self._connect_at = now + timedelta(seconds=self._transient.delay(1, self._rng))
        if self._client is not None or now < self._connect_at:
            return
        self.stats["connects"] += 1
        try:
            self._client = await self._connect()
        except (Unreachable, OSError) as exc:
            self._connect_failures += 1
            delay = self._transient.delay(self._connect_failures, self._rng)
            self._connect_at = now + timedelta(seconds=delay)
            log.warning("NATS unreachable", extra={"error": str(exc), "retry_in_s": round(delay, 1)})
            return
        self._connect_failures = 0
        self._listener = asyncio.create_task(self._listen(self._client), name="certbus-agent-listener")
        for t in self.tracked:
            t.check_status = True  # revocations while disconnected were missed
            if t.waiting_for_connection:
                t.waiting_for_connection = False
                t.retry_at = None
        log.info("connected to NATS", extra={"certificates": len(self.tracked)})

    async def _listen(self, client: AgentClient) -> None:
        try:
            async for event in client.lifecycle(self._serials):
                self._on_event(event)
        except Exception as exc:  # noqa: BLE001 - a broken subscription means reconnecting, not dying
            log.warning("lifecycle subscription ended", extra={"error": repr(exc)})
        finally:
            self.wake()

    def _on_event(self, event: LifecycleEvent) -> None:
        for t in self.tracked:
            if t.serial != event.serial:
                continue
            if isinstance(event, CertificateRevoked):
                t.revoked_reason = event.reason
            elif isinstance(event, CertificateRenewalDue):
                t.due_cause = event.cause
                if event.cause != "schedule":
                    compromised = {"ca_compromise": "cACompromise", "key_compromise": "keyCompromise"}[event.cause]
                    t.revoked_reason = t.revoked_reason or compromised
            t.retry_at = None  # news about the certificate: act at once, whatever the backoff said
            log.info(
                "lifecycle event", extra={"cert": str(t.entry.cert), "serial": t.serial, "event": event.event_type}
            )
            self.wake()

    def _require_client(self) -> AgentClient:
        if self._client is None or not self._client.connected:
            raise NotConnected("not connected to NATS")
        return self._client

    # --- one certificate -----------------------------------------------------------------------------

    def _read_cert(self, t: Tracked) -> None:
        cert = x509.load_pem_x509_certificate(t.entry.cert.read_bytes())
        serial = serial_hex(cert)
        if serial != t.serial:
            if t.serial:
                self._serials.discard(t.serial)
            t.serial, t.revoked_reason, t.due_cause, t.use_token = serial, None, None, False
            self._serials.add(serial)
        t.not_before, t.not_after = cert.not_valid_before_utc, cert.not_valid_after_utc

    def _load_state(self, t: Tracked) -> RenewalState | None:
        path = t.entry.beside_key(".renewal.json")
        if not path.exists():
            return None
        state = RenewalState.model_validate_json(path.read_bytes())
        if state.issued is None and state.renews_serial != t.serial:
            log.warning("discarding a renewal of a certificate that was replaced", extra={"cert": str(t.entry.cert)})
            self._discard(t.entry)
            return None
        return state

    def _save(self, entry: CertificateEntry, state: RenewalState) -> None:
        write_atomic(entry.beside_key(".renewal.json"), state.model_dump_json().encode(), 0o600)

    def _discard(self, entry: CertificateEntry) -> None:
        destroy_file(entry.beside_key(".next"), missing_ok=True)
        entry.beside_key(".renewal.json").unlink(missing_ok=True)
        fsync_dir(entry.key.parent)

    async def _tend(self, t: Tracked) -> None:
        now = self._clock.now()
        extra = {"cert": str(t.entry.cert)}
        try:
            self._read_cert(t)
            state = self._load_state(t)
        except (OSError, ValueError) as exc:
            self._failed(t, "terminal", f"cannot read the certificate or its renewal state: {exc}")
            return
        if t.retry_at is not None and now < t.retry_at:
            return
        await self._check_status(t)
        why = t.renewal_reason(now, self.settings.renew_fraction)
        if state is None and why is None:
            return
        extra |= {"serial": t.serial}
        try:
            await self._advance(t, state, why or "resuming")
        except NotConnected:
            t.waiting_for_connection = True
        except Pending as exc:
            self._failed(t, "transient", f"waiting for an operator's approval of request {exc.request_id}")
        except (Unreachable, Throttled) as exc:  # Throttled: the server holds enough of ours already
            self._failed(t, "transient", str(exc))
        except ReloadFailed as exc:
            # Local and cheap: retried on the short schedule, the old key kept until it succeeds.
            self._failed(t, "transient", str(exc), logging.ERROR)
        except Rejected as exc:
            self._discard(t.entry)
            codes = ", ".join(r.code for r in exc.reasons)
            if {r.code for r in exc.reasons} == {"rate_limited"}:
                self._failed(t, "transient", f"rate limited, a new request later: {exc}")  # not a verdict
            elif t.entry.token_command and not t.use_token:
                log.warning("renewal refused: re-enrolling with a token", extra={**extra, "codes": codes})
                t.use_token, t.retry_at, t.failures = True, None, 0
                self.wake()
            else:
                self._failed(t, "terminal", f"refused: {exc}")
        except (CommandFailed, CertbusError, OSError, ValueError) as exc:  # ValueError: TokenError too
            self._failed(t, "terminal", str(exc))

    async def _check_status(self, t: Tracked) -> None:
        if not t.check_status or self._client is None or not self._client.connected:
            return
        t.check_status = False
        self.stats["status checks"] += 1
        try:
            answer = await self._client.status(t.serial)
        except CertbusError as exc:
            log.info("status check failed", extra={"cert": str(t.entry.cert), "error": str(exc)})
            return
        if answer.status in ("revoked", "destroyed") and t.revoked_reason is None:
            t.revoked_reason = answer.reason or answer.status

    def _failed(self, t: Tracked, kind: Literal["transient", "terminal"], why: str, level: int | None = None) -> None:
        t.failures = t.failures + 1 if t.failure_kind == kind else 1
        t.failure_kind = kind
        backoff = self._transient if kind == "transient" else self._terminal
        delay = backoff.delay(t.failures, self._rng)
        t.retry_at = self._clock.now() + timedelta(seconds=delay)
        if level is None:
            level = logging.WARNING if kind == "transient" else logging.ERROR
        log.log(
            level,
            f"renewal failed ({kind}): {why}",
            extra={"cert": str(t.entry.cert), "serial": t.serial, "failures": t.failures, "retry_in_s": round(delay)},
        )

    async def _advance(self, t: Tracked, state: RenewalState | None, why: str) -> None:
        entry = t.entry
        if state is None:
            state = await self._prepare(t, why)
        request_id = state.request.aggregate_id
        extra = {"cert": str(entry.cert), "request_id": request_id}
        issued = state.issued
        if issued is None:
            client = self._require_client()
            self.stats["submits"] += 1
            issued = await client.submit(state.request, self.settings.request_timeout_s)
            state = state.model_copy(update={"issued": issued})
            self._save(entry, state)
            log.info("new certificate issued", extra={**extra, "serial": issued.serial})
        if not state.installed:
            install(entry, issued)
            state = state.model_copy(update={"installed": True})
            self._save(entry, state)
        if not state.reloaded:
            await self._reload(entry, issued)
            state = state.model_copy(update={"reloaded": True})
            self._save(entry, state)
        await self._destroy_old_key(entry, state)
        entry.beside_key(".renewal.json").unlink(missing_ok=True)
        fsync_dir(entry.key.parent)
        self._read_cert(t)
        t.failures, t.retry_at, t.renewals = 0, None, t.renewals + 1
        self.stats["renewals"] += 1
        log.info("renewed", extra={**extra, "serial": t.serial, "not_after": t.not_after})

    async def _prepare(self, t: Tracked, why: str) -> RenewalState:
        """A new key (written first, 0600) and the request for it, saved before anything is sent."""
        entry = t.entry
        cert_pem = entry.cert.read_text()
        current_key = load_private_key(entry.key.read_bytes(), str(entry.key))
        next_key = entry.beside_key(".next")
        if next_key.exists():  # a crash after writing the key, before saving the request
            new_key = load_private_key(next_key.read_bytes(), str(next_key))
        else:
            new_key = new_key_like(current_key)
            write_atomic(next_key, key_pem(new_key), 0o600)
        csr_pem = renewal_csr(cert_pem, new_key)
        request: RenewalRequested | EnrollmentRequested
        if t.method() == "enrollment":
            assert entry.token_command is not None
            token = await self._token(entry.token_command)
            profile = entry.profile or "tls-server"
            request = enrollment_request(csr_pem, token, self.settings.requester, profile, entry.validity_days)
        else:
            request = renewal_request(
                cert_pem, current_key, csr_pem, self.settings.requester, entry.profile, entry.validity_days
            )
        state = RenewalState(renews_serial=t.serial, request=request)
        self._save(entry, state)
        log.info(
            "renewal started",
            extra={
                "cert": str(entry.cert),
                "serial": t.serial,
                "why": why,
                "how": t.method(),
                "request_id": request.aggregate_id,
            },
        )
        return state

    async def _token(self, command: str) -> str:
        result = await run_command(command, {}, self.settings.command_timeout_s)
        token = result.stdout.strip()
        if result.exit_code != 0 or not token:
            ended = "timed out" if result.exit_code is None else f"exit code {result.exit_code}"
            raise CommandFailed(f"token_command printed no token ({ended}): check it prints one token and exits 0")
        return token

    async def _reload(self, entry: CertificateEntry, issued: CertificateIssued) -> None:
        if not entry.reload:
            return
        env = {
            "CERTBUS_CERT": str(entry.cert),
            "CERTBUS_KEY": str(entry.key),
            "CERTBUS_CHAIN": str(entry.chain_path),
            "CERTBUS_SERIAL": issued.serial,
        }
        result = await run_command(entry.reload, env, self.settings.command_timeout_s)
        if result.exit_code != 0:
            ended = "timed out" if result.exit_code is None else f"exit code {result.exit_code}"
            raise ReloadFailed(
                f"the reload command failed ({ended}): serial {issued.serial} is in place but not in use; "
                "the old key is kept until a reload succeeds"
            )
        log.info("reload command ran", extra={"cert": str(entry.cert), "serial": issued.serial})

    async def _until_superseded(self, state: RenewalState) -> None:
        """A renewed certificate's key is destroyed once Certbus shows the old certificate superseded
        by the new one (so the log reads renewed, superseded, key destroyed); until then the old key
        waits in `<key>.old` and the step is retried like any transient failure."""
        if not isinstance(state.request, RenewalRequested) or state.issued is None:
            return  # a re-enrollment with a token supersedes nothing
        self.stats["status checks"] += 1
        answer = await self._require_client().status(state.renews_serial)
        if answer.superseded_by != state.issued.serial and answer.status in ("good", "expired"):
            raise Unreachable(f"{state.renews_serial} is not shown superseded by {state.issued.serial} yet")

    async def _destroy_old_key(self, entry: CertificateEntry, state: RenewalState) -> None:
        """The old key signs its own destruction (published), then its file is overwritten and unlinked."""
        old_key_file = entry.beside_key(".old")
        if not old_key_file.exists():
            return
        if state.attestation is None:
            await self._until_superseded(state)
            old_key = load_private_key(old_key_file.read_bytes(), str(old_key_file))
            attestation = key_destroyed_attestation(
                state.renews_serial,
                old_key,
                self.settings.requester,
                self._clock.now(),
                correlation_id=state.request.aggregate_id,
            )
            state = state.model_copy(update={"attestation": attestation})
            self._save(entry, state)
        assert state.attestation is not None
        client = self._require_client()
        self.stats["attestations"] += 1
        await client.publish(state.attestation)
        destroy_file(old_key_file)
        log.info("old key destroyed", extra={"cert": str(entry.cert), "serial": state.renews_serial})
