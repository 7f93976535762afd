"""ACME's own server certificate: enrolled through Certbus like any other, renewed when two thirds of
its lifetime have passed, and swapped into the running TLS context without a restart.

Its key and chain live in `acme_tls_dir` (the key mode 0600), so a restart or another replica
sharing the directory serves at once. The token is signed with ACME's provisioner key: the operator
registers that provisioner scoped to ACME's identity; the certificate's profile (`acme_tls_profile`,
"service" by default, which allows loopback addresses) must allow the names and addresses clients use.
"""

from __future__ import annotations

import logging
import ssl
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from shared.base.clock import Clock, SystemClock
from shared.base.files import write_atomic
from shared.base.settings import AcmeSettings
from shared.client.api import CertbusClient, Pending, Rejected, Unreachable
from shared.pki.crypto import build_csr, key_pem
from shared.pki.tokens import ProvisionerKey, create_token

log = logging.getLogger("certbus.acme.tls")
TOKEN_TTL = timedelta(minutes=5)


class ServerCertificate:
    """The TLS context ACME serves with, and the certificate in it."""

    def __init__(self, settings: AcmeSettings, provisioner_key: ProvisionerKey, clock: Clock | None = None) -> None:
        self.settings = settings
        self.provisioner_key = provisioner_key
        self.clock = clock or SystemClock()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.cert: x509.Certificate | None = None
        self.problem: str | None = "no server certificate yet"
        self._key_file = settings.acme_tls_dir / "server.key.pem"
        self._chain_file = settings.acme_tls_dir / "server.chain.pem"

    @property
    def ready(self) -> bool:
        return self.cert is not None

    def due(self, cert: x509.Certificate) -> bool:
        """Renew once two thirds of the lifetime have passed (or for other names than configured)."""
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*sans.get_values_for_type(x509.DNSName), *map(str, sans.get_values_for_type(x509.IPAddress))]
        wanted = [*self.settings.acme_tls_names, *self.settings.acme_tls_ips]
        return self.clock.now() >= cert.not_valid_before_utc + lifetime * 2 / 3 or sorted(names) != sorted(wanted)

    async def ensure(self) -> bool:
        """Serve a current certificate: the one on disk if it is not due, else a new one from Certbus.
        Whether one is served; `problem` says why not (or why the renewal failed)."""
        if self.cert is None and self._chain_file.exists() and self._key_file.exists():
            self._load()
        if self.cert is not None and not self.due(self.cert):
            return True
        try:
            await self._enroll()
        except (Rejected, Pending, Unreachable, OSError, TimeoutError) as e:
            self.problem = f"enrolling for ACME's server certificate failed: {e}"
            log.warning("ACME server certificate not renewed", extra={"error": self.problem[:300]})
            return self.cert is not None and self.clock.now() < self.cert.not_valid_after_utc
        return True

    def _load(self) -> None:
        chain = x509.load_pem_x509_certificates(self._chain_file.read_bytes())
        self.context.load_cert_chain(self._chain_file, self._key_file)
        self.cert = chain[0]
        self.problem = None
        log.info(
            "serving ACME over TLS",
            extra={"serial": format(self.cert.serial_number, "x"), "not_after": str(self.cert.not_valid_after_utc)},
        )

    async def _enroll(self) -> None:
        s = self.settings
        key = ec.generate_private_key(ec.SECP256R1())
        names, ips = list(s.acme_tls_names), list(s.acme_tls_ips)
        token = create_token(
            self.provisioner_key,
            s.acme_provisioner_id,
            [*names, *ips],
            self.clock.now(),
            TOKEN_TTL,
            profile=s.acme_tls_profile,
        )
        async with CertbusClient(s, requester=s.identity or "acme") as client:
            issued = await client.enroll(
                build_csr(key, names, ips).decode(),
                token,
                profile=s.acme_tls_profile,
                timeout=s.acme_enroll_timeout_s,
                wait_visible=False,
            )
        s.acme_tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self._key_file, key_pem(key), mode=0o600)
        write_atomic(self._chain_file, (issued.cert_pem.rstrip("\n") + "\n" + issued.chain_pem).encode())
        self._load()
