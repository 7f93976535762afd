"""What a finalized order becomes: an enrollment request on the bus.

The ACME service is a requester like any other program (its own NATS identity, its own ingress
subjects) and a provisioner: for the names it validated it signs a one-time token with its
provisioner key, its subject naming the ACME account and order (`acme:{account}:{order}`), so the
log records which account asked for what, under which provisioner. Enrollment then judges the
request by its profile and the provisioner's scope, exactly as it judges every other request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.acme.problems import AcmeProblem
from shared.base.clock import Clock, SystemClock
from shared.base.settings import CommonSettings
from shared.client.api import CertbusClient, Pending, Rejected
from shared.contract.events import CertificateIssued, EnrollmentRequested
from shared.pki.holder import enrollment_request
from shared.pki.tokens import ProvisionerKey, create_token

TOKEN_TTL = timedelta(minutes=10)


class StillPending(Exception):
    """The request waits for an operator's approval: the order stays processing."""


@dataclass(frozen=True)
class Issued:
    serial: str
    cert_chain: str  # the leaf then its issuers, PEM


class Finalizer(Protocol):
    def prepare(
        self,
        csr: x509.CertificateSigningRequest,
        names: list[str],
        subject: str,
        *,
        provisioner_id: str | None = None,
        profile: str | None = None,
        replaces: str | None = None,
    ) -> EnrollmentRequested:
        """The request an order becomes (built once, kept, published as often as needed), under the
        provisioner and profile its account's external account binding named (None: the defaults);
        `replaces`: the serial of the account's certificate it replaces."""
        ...

    async def submit(self, request: EnrollmentRequested) -> Issued:
        """Publish the request, or follow it if enrollment knows it already (so submitting the same
        event again after a crash never sends it twice), and wait for its certificate; AcmeProblem
        if it is refused, StillPending if it waits for an operator, Unreachable if the bus is."""
        ...


@dataclass
class BusFinalizer:
    settings: CommonSettings  # connects as the ACME service's requester identity
    requester: str
    provisioner_id: str
    provisioner_key: ProvisionerKey
    profile: str
    timeout_s: float = 30.0
    clock: Clock = field(default_factory=SystemClock)

    def prepare(
        self,
        csr: x509.CertificateSigningRequest,
        names: list[str],
        subject: str,
        *,
        provisioner_id: str | None = None,
        profile: str | None = None,
        replaces: str | None = None,
    ) -> EnrollmentRequested:
        # One key signs every token; the operator registers each EAB provisioner with its public half,
        # so the token's kid names whose scope enrollment judges the order by.
        profile = profile or self.profile
        token = create_token(
            self.provisioner_key,
            provisioner_id or self.provisioner_id,
            names,
            self.clock.now(),
            TOKEN_TTL,
            profile=profile,
            subject=subject,
        )
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        return enrollment_request(csr_pem, token, self.requester, profile, replaces=replaces)

    async def submit(self, request: EnrollmentRequested) -> Issued:
        try:
            async with CertbusClient(self.settings, requester=self.requester) as client:
                issued = await client.submit(request, timeout=self.timeout_s, wait_visible=False)
        except Rejected as e:
            raise refusal([r.code for r in e.reasons], "; ".join(f"{r.code}: {r.message}" for r in e.reasons)) from None
        except Pending as e:
            raise StillPending(str(e)) from None
        return _issued(issued)


_CSR_CODES = ("csr_", "key_", "cn_not_in_sans", "extension_not_allowed")
_NAME_CODES = ("name_", "names_", "wildcard_", "ip_", "email_", "too_many_names", "provisioner_scope")


def refusal(codes: list[str], detail: str) -> AcmeProblem:
    """The ACME problem an enrollment rejection is: the CSR's fault, the names', a rate limit, or
    the deployment's (a provisioner or profile the operator must fix)."""
    first = codes[0] if codes else ""
    if first.startswith(_CSR_CODES):
        return AcmeProblem("badCSR", detail[:1000], 400)
    if first.startswith(_NAME_CODES):
        return AcmeProblem("rejectedIdentifier", detail[:1000], 400)
    if first == "rate_limited":
        return AcmeProblem("rateLimited", detail[:1000], 429)
    return AcmeProblem("unauthorized", f"refused by Certbus's enrollment: {detail[:1000]}", 403)


def _issued(event: CertificateIssued) -> Issued:
    chain = event.cert_pem.rstrip("\n") + "\n" + event.chain_pem.lstrip("\n")
    return Issued(event.serial, chain)
