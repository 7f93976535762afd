"""What a certificate's holder builds and signs on its own side: enrollment and renewal requests
(with the holder's proofs), CSRs for a renewal, key-destroyed attestations, and its own keys. No
I/O; `CertbusClient` sends what these build."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from shared.contract.events import (
    EnrollmentRequested,
    KeyDestroyed,
    RenewalRequested,
    key_destroyed_message,
    renewal_message,
    utcnow,
)
from shared.pki.crypto import PrivateKey, build_csr, normalise_serial, serial_hex, sign_message, spki_der, spki_sha256
from shared.pki.tokens import prove, split_token


def enrollment_request(
    csr_pem: str,
    token: str,
    requester: str,
    profile: str = "tls-server",
    validity_days: int | None = None,
    replaces: str | None = None,
) -> EnrollmentRequested:
    """The event asking for a certificate: the token's JWT and its holder's proof, never its secret
    (`replaces`: the serial of a certificate of the same requester this one replaces)."""
    jwt_part, holder = split_token(token)
    request_id = str(uuid.uuid4())
    try:
        csr_der = x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm):
        csr_der = csr_pem.encode()  # enrollment will reject it with a reason
    return EnrollmentRequested.first(
        request_id,
        producer="requester",
        at=utcnow(),
        csr_pem=csr_pem,
        profile=profile,
        token=jwt_part,
        token_proof=prove(holder, request_id, csr_der),
        requester=requester,
        validity_days=validity_days,
        replaces=replaces,
    )


def renewal_request(
    cert_pem: str,
    current_key: PrivateKey,
    csr_pem: str,
    requester: str,
    profile: str | None = None,
    validity_days: int | None = None,
    request_id: str | None = None,
) -> RenewalRequested:
    """The event asking to renew `cert_pem`: the CSR for the NEW key, signed over by the CURRENT key.

    `request_id` (default: a new one) becomes the new certificate's id; reuse it to retry the same
    renewal (enrollment decides a request id once)."""
    request_id = request_id or str(uuid.uuid4())
    serial = serial_hex(x509.load_pem_x509_certificate(cert_pem.encode()))
    try:
        csr_der = x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm):
        csr_der = csr_pem.encode()  # enrollment will reject it with a reason
    proof = sign_message(current_key, renewal_message(request_id, serial, csr_der))
    return RenewalRequested.first(
        request_id,
        producer="requester",
        at=utcnow(),
        csr_pem=csr_pem,
        renews_serial=serial,
        proof=base64.b64encode(proof).decode(),
        requester=requester,
        profile=profile,
        validity_days=validity_days,
    )


def new_key_like(key: PrivateKey) -> PrivateKey:
    """A new private key of the same type as `key` (same curve, same RSA size)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ed25519.Ed25519PrivateKey.generate()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ec.generate_private_key(key.curve)
    if isinstance(key, rsa.RSAPrivateKey):
        return rsa.generate_private_key(65537, key.key_size)
    raise TypeError(f"cannot renew a {type(key).__name__}: use an EC, Ed25519 or RSA key")


def load_private_key(pem: bytes, source: str = "key") -> PrivateKey:
    """A holder's private key from unencrypted PEM; ValueError says what is wrong (never the key)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"{source}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{source}: a {type(key).__name__} cannot be renewed: use an EC, Ed25519 or RSA key")
    return key


def renewal_csr(cert_pem: str, new_key: PrivateKey) -> str:
    """A PEM CSR for `new_key` asking for the names (DNS, IP, email) of the certificate `cert_pem`."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError(f"certificate {serial_hex(cert)} names nothing (no subjectAltName) to renew") from None
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    emails = san.get_values_for_type(x509.RFC822Name)
    return build_csr(new_key, dns, ips, emails).decode()


def key_destroyed_attestation(
    serial: str, key: PrivateKey, destroyed_by: str, destroyed_at: datetime | None = None, correlation_id: str = ""
) -> KeyDestroyed:
    """The event attesting that `key` (of certificate `serial`) is being destroyed, signed by the key itself.

    Build it while the key still exists; publish it (again, the same event, if a retry is needed),
    then destroy the key. It carries the key's SPKI hash and signature, never the key."""
    destroyed_at = destroyed_at or utcnow()
    serial = normalise_serial(serial)
    spki = spki_sha256(key.public_key())
    proof = sign_message(key, key_destroyed_message(serial, spki, destroyed_at))
    public_key = base64.b64encode(spki_der(key.public_key())).decode()
    return KeyDestroyed.first(
        spki,
        producer="requester",
        at=destroyed_at,
        correlation_id=correlation_id or spki,
        serial=serial,
        spki_sha256=spki,
        destroyed_at=destroyed_at,
        destroyed_by=destroyed_by,
        proof=base64.b64encode(proof).decode(),
        public_key=public_key,
    )
