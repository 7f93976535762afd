"""Revocation and renewal for ACME clients: revokeCert (RFC 8555 §7.6) as a `RevocationRequested`
on the bus, and ACME Renewal Information (RFC 9773): certificate ids and suggested windows.

Revocation stays revocation's decision. ACME checks who asks (the account that ordered the
certificate, or a JWS made with the certificate's key) and publishes the request as its own
requester identity: revocation accepts a request without a proof only from the requester that
obtained the certificate (ACME, for the certificates it ordered), and checks a JWS made with the
certificate's key itself, so the proof is on the log for anyone to check again.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from services.acme.problems import AcmeProblem, malformed
from shared.base.settings import CommonSettings
from shared.client.api import CertbusClient, Rejected
from shared.contract.queries import StatusAnswer

# Renewal falls due when this much of a certificate's life is left, as enrollment's schedule has it
# for a profile that does not say otherwise (`renew_when_remaining`).
RENEW_WHEN_REMAINING = 1 / 3
# A revoked certificate's window, in the past: RFC 9773 §4.2 asks that clients renew at once.
RENEW_NOW = timedelta(hours=1)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    if "=" in text:
        raise ValueError("padded")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _serial_bytes(serial: int) -> bytes:
    """A positive serial's DER INTEGER value bytes (two's complement: a leading zero when the high bit is set)."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(authority key identifier) "." base64url(serial's DER value)."""
    return f"{b64url(_authority_key_id(cert) or b'')}.{b64url(_serial_bytes(cert.serial_number))}"


@dataclass(frozen=True)
class CertId:
    authority_key_id: bytes
    serial: str  # lower-case hex, as Certbus writes serials

    def names(self, cert: x509.Certificate) -> bool:
        """Whether `cert` is the certificate this id names."""
        return cert.serial_number == int(self.serial, 16) and _authority_key_id(cert) == self.authority_key_id


def parse_cert_id(text: object) -> CertId:
    """A certificate id as ARI clients send it (in `replaces` or the renewalInfo URL); malformed if not one."""
    if not isinstance(text, str) or len(text) > 256 or text.count(".") != 1:
        raise malformed("a certificate id is base64url(authority key identifier).base64url(serial)")
    aki_text, serial_text = text.split(".")
    try:
        aki, serial = unb64url(aki_text), unb64url(serial_text)
    except (ValueError, binascii.Error):
        raise malformed("a certificate id's parts must be unpadded base64url") from None
    if not aki or not serial or serial[0] & 0x80:
        raise malformed("a certificate id names an authority key identifier and a positive serial")
    return CertId(aki, f"{int.from_bytes(serial, 'big'):x}")


@dataclass(frozen=True)
class Renewal:
    """What the bus says of a certificate's renewal: its status, and how much of its life is left
    when its profile has it renewed (`renew_when_remaining`)."""

    status: StatusAnswer
    remaining: float = RENEW_WHEN_REMAINING


def window(cert: x509.Certificate, renewal: Renewal | None, now: datetime) -> tuple[datetime, datetime]:
    """The suggested renewal window (RFC 9773 §4.2): from when the renewal schedule has it fall due
    (its profile's `renew_when_remaining` of its life left, a third unless the bus could not be
    asked) to halfway from then to expiry; in the past if it is revoked (a CA compromise revokes
    every certificate of the CA), so clients renew at once."""
    if renewal is not None and renewal.status.status in ("revoked", "destroyed"):
        return now - 2 * RENEW_NOW, now - RENEW_NOW
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    left = (not_after - not_before) * (renewal.remaining if renewal is not None else RENEW_WHEN_REMAINING)
    return not_after - left, not_after - left / 2


# -- revocation on the bus -------------------------------------------------------------------------


class Revoker(Protocol):
    async def revoke(self, serial: str, reason: str, proof_jws: str | None) -> None:
        """Ask revocation to revoke `serial` and wait until validation shows it revoked; AcmeProblem
        if refused, Unreachable if the bus is."""
        ...

    async def renewal(self, serial: str, profile: str | None) -> Renewal:
        """What validation knows of `serial`, and when `profile` has certificates renewed;
        Unreachable if the bus is."""
        ...


@dataclass
class BusRevoker:
    settings: CommonSettings  # connects as the ACME service's requester identity
    requester: str
    timeout_s: float = 15.0

    async def revoke(self, serial: str, reason: str, proof_jws: str | None) -> None:
        try:
            async with CertbusClient(self.settings, requester=self.requester) as client:
                await client.revoke(serial, reason, timeout=self.timeout_s, proof_jws=proof_jws)
        except Rejected as e:
            raise revocation_refusal(e.reasons[0].code if e.reasons else "", str(e)) from None

    async def renewal(self, serial: str, profile: str | None) -> Renewal:
        async with CertbusClient(self.settings, requester=self.requester) as client:
            status = await client.status(serial)
            profiles = (await client.profiles()).profiles if profile is not None else []
        body = next((p.body for p in profiles if p.name == profile), {})
        remaining = body.get("renew_when_remaining", RENEW_WHEN_REMAINING)
        return Renewal(
            status, remaining if isinstance(remaining, float | int) and 0 < remaining < 1 else RENEW_WHEN_REMAINING
        )


def revocation_refusal(code: str, detail: str) -> AcmeProblem:
    """The ACME problem revocation's refusal is."""
    if code in ("already_revoked", "certificate_destroyed"):
        return AcmeProblem("alreadyRevoked", detail[:1000])
    if code in ("reason_invalid", "invalidity_date_invalid"):
        return AcmeProblem("badRevocationReason", detail[:1000])
    if code == "serial_unknown":
        return AcmeProblem("malformed", detail[:1000], 404)
    return AcmeProblem("unauthorized", f"refused by Certbus's revocation: {detail[:1000]}", 403)
