"""Enrollment decisions: pure functions of a CSR, a verified token and the profile; no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.crypto import csr_names, key_problem
from shared.events import Reason
from shared.tokens import TokenClaims

DEFAULT_PROFILE = "default-tls"
MAX_SANS = 100
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Approval:
    """What enrollment approves: exactly these names, for this long."""

    dns_names: list[str]
    validity_days: int


def dns_name_problem(name: str) -> str | None:
    """Why `name` is not an acceptable DNS name, or None."""
    if not name:
        return "an empty DNS name"
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in name):
        return f"DNS name {name!r} has a space, control or non-ASCII character (use IDNA A-labels)"
    if name.endswith("."):
        return f"DNS name {name!r} ends with a dot: give it without the trailing dot"
    if len(name) > 253:
        return f"DNS name {name[:40]!r}... is longer than 253 characters"
    if name != name.lower():
        return f"DNS name {name!r} must be lower case"
    if name.startswith("*."):
        return f"DNS name {name!r} is a wildcard, which profile {DEFAULT_PROFILE!r} does not allow"
    labels = name.split(".")
    for label in labels:
        if not _LABEL.match(label):
            return f"DNS name {name!r} has an invalid label {label!r}"
    return None


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest | Reason:
    """The parsed CSR, or why it cannot be parsed."""
    try:
        return x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        return Reason(code="csr_malformed", message=f"the CSR is not a valid PEM PKCS#10 request: {exc}")


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    """The CSR's DER bytes (what a token proof signs over)."""
    return csr.public_bytes(serialization.Encoding.DER)


def review(
    csr: x509.CertificateSigningRequest,
    claims: TokenClaims,
    profile: str,
    validity_days: int,
) -> Approval | list[Reason]:
    """Approve the CSR for the names it asks, or say every reason it cannot be approved."""
    reasons: list[Reason] = []
    if profile != DEFAULT_PROFILE:
        reasons.append(Reason(code="profile_unknown", message=f"unknown profile {profile!r}: use {DEFAULT_PROFILE!r}"))
    if not csr.is_signature_valid:
        reasons.append(
            Reason(
                code="csr_signature_invalid",
                message="the CSR's signature does not verify: it was not signed by its own key",
            )
        )
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        reasons.append(Reason(code="key_unsupported", message=f"the CSR's public key cannot be read: {exc}"))
    else:
        problem = key_problem(public_key)
        if problem is not None:
            reasons.append(Reason(code="key_weak", message=problem))
    try:
        dns, ips = csr_names(csr)
    except (ValueError, x509.DuplicateExtension) as exc:
        return [*reasons, Reason(code="csr_malformed", message=f"the CSR's extensions cannot be read: {exc}")]
    if not dns:
        reasons.append(Reason(code="names_missing", message="the CSR asks for no DNS name in its subjectAltName"))
    if len(dns) + len(ips) > MAX_SANS:
        reasons.append(
            Reason(code="too_many_names", message=f"the CSR asks for {len(dns) + len(ips)} names; at most {MAX_SANS}")
        )
    if ips:
        reasons.append(
            Reason(
                code="ip_not_allowed",
                message=f"IP addresses {', '.join(ips)} are not allowed by profile {DEFAULT_PROFILE!r}",
            )
        )
    allowed = set(claims.dns_names)
    for name in dns:
        problem = dns_name_problem(name)
        if problem is not None:
            reasons.append(Reason(code="name_invalid", message=problem))
        elif name not in allowed:
            reasons.append(
                Reason(
                    code="name_not_allowed",
                    message=f"name {name!r} is not allowed by the token: it allows {', '.join(sorted(allowed))}",
                )
            )
    for cn in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        if cn.value not in dns:
            reasons.append(
                Reason(code="cn_not_in_sans", message=f"the CSR's common name {cn.value!r} is not one of its DNS names")
            )
    if claims.profile != profile:
        reasons.append(
            Reason(code="profile_not_allowed", message=f"the token is for profile {claims.profile!r}, not {profile!r}")
        )
    if reasons:
        return reasons
    return Approval(dns_names=list(dict.fromkeys(dns)), validity_days=validity_days)
