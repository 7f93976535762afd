"""Validation's delegated OCSP responder: a P-256 key of its own and a short-lived certificate for it
(id-kp-OCSPSigning, id-pkix-ocsp-nocheck), got through the normal enrollment path like any
requester's.

Validation signs a one-time token with its own provisioner key (registered by whoever deploys:
`make run` and the test harness do it from the public key validation writes next to the private
one), enrolls over NATS for profile `ocsp_profile`, keeps the key (mode 0600) and the certificate
in `ocsp_key_dir`, and adds the responder to the `ResponderSet`. It enrolls again when the
certificate has less than a third of its life left (checked every `ocsp_check_interval_s`), when a
new issuing CA appears, and on start unless a stored certificate is still fresh. Until then, OCSP
requests about the issuer get tryLater. If the responder's own certificate is revoked, it enrolls
for a new one with a new key at once. Only the CSR and the token's JWT go on the log: neither
private key ever leaves this process or appears in a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.validation import store
from services.validation.domain import renewal_due, responders_missing
from services.validation.ocsp import Responder, ResponderSet
from shared.base.clock import Clock, SystemClock
from shared.base.files import write_new
from shared.base.settings import ValidationSettings
from shared.client.api import CertbusClient, Pending
from shared.pki import provisioner_keys
from shared.pki.crypto import build_csr, key_pem, normalise_serial, serial_hex
from shared.pki.tokens import ProvisionerKey, create_token
from shared.runtime.service import Readiness, Runtime

log = logging.getLogger("certbus.validation.responder")
NAME = "validation"
TOKEN_TTL = timedelta(minutes=5)
ENROLL_TIMEOUT_S = 30.0
FIRST_RETRY_S = 0.5
_SAFE_CA_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ResponderFiles:
    """Responder keys and certificates on disk, a pair per certificate: `<ca>-<serial>.key.pem`
    (mode 0600) and `<ca>-<serial>.crt.pem`. Named by serial, so replicas may share the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _stem(self, ca_id: str, cert: x509.Certificate) -> str:
        if not _SAFE_CA_ID.match(ca_id):
            raise ValueError(f"CA id {ca_id!r} cannot name a file")
        return f"{ca_id}-{serial_hex(cert)}"

    def save(self, ca_id: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        """Keep a responder's key and certificate (the key first: a certificate alone is useless)."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = self._stem(ca_id, cert)
        write_new(self.directory / f"{stem}.key.pem", key_pem(key))
        write_new(self.directory / f"{stem}.crt.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def newest(self, ca_id: str, issuer: x509.Certificate, now: datetime) -> Responder | None:
        """The stored responder of CA `ca_id` that expires last, if one is still valid at `now`."""
        if not _SAFE_CA_ID.match(ca_id) or not self.directory.is_dir():
            return None
        best: Responder | None = None
        for cert_path in self.directory.glob(f"{ca_id}-*.crt.pem"):
            key_path = cert_path.with_name(cert_path.name.removesuffix(".crt.pem") + ".key.pem")
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                if cert.not_valid_after_utc <= now or (best is not None and cert.not_valid_after_utc <= best.not_after):
                    continue
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError("not an EC key")
                best = Responder(ca_id, issuer, cert, key)
            except (OSError, ValueError) as exc:
                log.warning("ignoring a stored OCSP responder", extra={"path": str(cert_path), "error": str(exc)})
        return best

    def prune(self, now: datetime) -> None:
        """Delete the pairs whose certificate has expired."""
        if not self.directory.is_dir():
            return
        for cert_path in self.directory.glob("*.crt.pem"):
            try:
                expired = x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc <= now
            except (OSError, ValueError):
                continue
            if expired:
                key_path = cert_path.with_name(cert_path.name.removesuffix(".crt.pem") + ".key.pem")
                for path in (key_path, cert_path):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()


class ResponderKeeper:
    """Keeps a current delegated responder for every issuing CA in `responders`."""

    def __init__(self, settings: ValidationSettings, responders: ResponderSet, wall_clock: Clock | None = None) -> None:
        self.settings = settings
        self.responders = responders
        # Enrollment judges a token by the time the log accepted the request (the NATS server's
        # clock), so tokens are dated by the system clock whatever clock the service runs on.
        self._wall_clock = wall_clock or SystemClock()
        self.files = ResponderFiles(settings.ocsp_key_dir)
        self._rt: Runtime | None = None
        self._provisioner_key: ProvisionerKey | None = None
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reported: str | None = None

    async def start(self, rt: Runtime) -> None:
        """Load or create the provisioner key and keep the responders current in the background."""
        self._rt = rt
        s = self.settings
        self._provisioner_key = provisioner_keys.load_or_create(
            s.ocsp_provisioner_key_file, s.ocsp_provisioner_public_key_file, whose="validation's OCSP"
        )
        self._task = asyncio.create_task(self._run(), name="ocsp-responder")

    async def stop(self, _: Runtime) -> None:
        """Stop renewing (an enrollment in flight is abandoned; its token expires unused or spent)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=10)

    async def readiness(self, rt: Runtime) -> Readiness:
        """Ready once every live issuing CA has a responder valid now; the CAs served are reported
        for the CLI to compare with signing's issuing CA."""
        now = rt.clock.now()
        async with rt.pool.acquire() as conn:
            issuing = await store.live_issuing_cas(conn, now)
        served = {ca_id: r.not_after for ca_id, _ in issuing if (r := self.responders.responder(ca_id)) is not None}
        missing = responders_missing(issuing, served, now, self._reported)
        current = {ca_id: not_after.isoformat() for ca_id, not_after in served.items() if not_after > now}
        return Readiness(missing=missing, facts={"ocsp_responders": current})

    def wake(self) -> None:
        """Check now (a new issuing CA appeared)."""
        self._wakeup.set()

    async def _run(self) -> None:
        retry = FIRST_RETRY_S
        interval = self.settings.ocsp_check_interval_s
        while True:
            try:
                ready = await self.ensure()
            except Exception as exc:  # noqa: BLE001 - reported; the loop must outlive outages
                ready = self._not_ready(f"{type(exc).__name__}: {exc}")
            wait, retry = (interval, FIRST_RETRY_S) if ready else (retry, min(retry * 2, interval))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()
            self._wakeup.clear()

    def _not_ready(self, reason: str) -> bool:
        """Log why there is no current responder (once per distinct reason); False."""
        if reason != self._reported:
            log.warning("no current OCSP responder certificate; will retry", extra={"reason": reason})
            self._reported = reason
        return False

    async def ensure(self) -> bool:
        """Serve every issuing CA with a stored responder if one is valid, and make sure the newest
        CA (the one signing issues from) has one with a third of its life left; whether it has."""
        rt = self._rt
        if rt is None:
            raise RuntimeError("the responder keeper has not started")
        now = rt.clock.now()
        async with rt.pool.acquire() as conn:
            rows = await store.issuing_cas(conn)
        if not rows:
            return self._not_ready("no issuing CA on the log yet")
        cas = {r["ca_id"]: x509.load_der_x509_certificate(r["cert_der"]) for r in rows}
        for ca_id, issuer in cas.items():
            self.responders.expect(ca_id, issuer)
            current = self.responders.responder(ca_id)
            if current is None or renewal_due(current.cert, now):
                stored = self.files.newest(ca_id, issuer, now)
                if stored is not None and (current is None or stored.not_after > current.not_after):
                    self._serve(stored, "stored")
        newest = self.responders.responder(rows[0]["ca_id"])
        if newest is not None and not renewal_due(newest.cert, now) and not await self._revoked(newest):
            self._reported = None
            return True
        ready = await self._enroll(cas)
        self.files.prune(now)
        return ready

    async def _revoked(self, responder: Responder) -> bool:
        """Whether the responder's own certificate was revoked (relying parties never check it, as
        it carries ocsp-nocheck, so the only remedy is to stop using it: a new key, a new one)."""
        assert self._rt is not None
        async with self._rt.pool.acquire() as conn:
            row = await store.status(conn, serial_hex(responder.cert))
        return row is not None and row["status"] == "revoked"

    def certificate_revoked(self, ca_id: str, serial: str) -> None:
        """Replace the responder at once if the revoked certificate is its own."""
        current = self.responders.responder(ca_id)
        if current is not None and serial_hex(current.cert) == normalise_serial(serial):
            self.wake()

    def _serve(self, responder: Responder, how: str) -> None:
        self.responders.add(responder)
        log.info(
            "serving an OCSP responder certificate",
            extra={
                "source": how,
                "ca": responder.ca_id,
                "serial": serial_hex(responder.cert),
                "not_after": str(responder.not_after),
            },
        )

    async def _enroll(self, cas: dict[str, x509.Certificate]) -> bool:
        s = self.settings
        assert self._provisioner_key is not None
        async with CertbusClient(s, requester=NAME) as client:
            problem = await self._policy_problem(client)
            if problem is not None:
                return self._not_ready(problem)
            key = ec.generate_private_key(ec.SECP256R1())
            csr = build_csr(key, [s.ocsp_responder_name]).decode()
            token = create_token(
                self._provisioner_key,
                s.ocsp_provisioner_id,
                [s.ocsp_responder_name],
                self._wall_clock.now(),
                TOKEN_TTL,
                profile=s.ocsp_profile,
            )
            try:
                issued = await client.enroll(
                    csr, token, profile=s.ocsp_profile, timeout=ENROLL_TIMEOUT_S, wait_visible=False
                )
            except Pending as exc:
                return self._not_ready(
                    f"profile {s.ocsp_profile!r} needs an operator's approval ({exc}): a responder profile must not"
                )
        cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
        self.files.save(issued.issuer_id, key, cert)  # before anything can fail: the next try loads it
        issuer = cas.get(issued.issuer_id)
        if issuer is None:
            return self._not_ready(f"the responder certificate's issuer {issued.issuer_id} is not on the log yet")
        self._serve(Responder(issued.issuer_id, issuer, cert, key), "enrolled")
        self._reported = None
        return True

    async def _policy_problem(self, client: CertbusClient) -> str | None:
        """Why enrolling now would be refused (asked first, so nothing lands on the log in vain)."""
        s = self.settings
        assert self._provisioner_key is not None
        provisioners = {p.provisioner_id: p for p in (await client.provisioners()).provisioners}
        mine = provisioners.get(s.ocsp_provisioner_id)
        register = (
            f"register it: certbus provisioner add {s.ocsp_provisioner_id} "
            f"--public-key {s.ocsp_provisioner_public_key_file}"
        )
        if mine is None or mine.status == "removed":
            return f"provisioner {s.ocsp_provisioner_id!r} is not registered; {register}"
        if mine.status != "active":
            return f"provisioner {s.ocsp_provisioner_id!r} is {mine.status}; {register}"
        if not provisioner_keys.same_public_key(mine.public_key_pem, self._provisioner_key):
            return (
                f"provisioner {s.ocsp_provisioner_id!r} is registered with another public key than "
                f"{s.ocsp_provisioner_key_file}'s; {register}"
            )
        profile = next((p for p in (await client.profiles()).profiles if p.name == s.ocsp_profile), None)
        if profile is None:
            return f"profile {s.ocsp_profile!r} is not applied: certbus profile apply deploy/profiles.toml"
        if profile.body.get("usage") != "ocsp":
            return f'profile {s.ocsp_profile!r} does not make OCSP responders (it needs usage = "ocsp")'
        if profile.lint_failed:
            return f"profile {s.ocsp_profile!r} failed its lint check"
        return None
