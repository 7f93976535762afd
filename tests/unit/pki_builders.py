"""Builders shared by the unit tests: pinned time, CSRs, token claims, approvals and leaves (no I/O)."""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from services.signing import domain as signing
from shared.contract.events import EnrollmentApproved
from shared.contract.profiles import Profile, Usage, load_profiles
from shared.pki.crypto import PrivateKey, signing_hash
from shared.pki.tokens import TokenClaims

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ORG = "Certbus Test"
BASE_URL = "https://pki.example.test/"
PROFILES_TOML = Path(__file__).resolve().parents[2] / "deploy" / "profiles.toml"
SUFFIXES = ("example.internal", "corp.internal")


def make_profile(name: str = "tls-server", usage: Usage = "server", **fields: Any) -> Profile:
    """A test profile allowing names under example.internal and corp.internal (fields override the defaults)."""
    fields.setdefault("dns_suffixes", list(SUFFIXES))
    return Profile(name=name, usage=usage, **fields)


TLS_SERVER = make_profile()


@functools.cache
def shipped_profiles() -> dict[str, Profile]:
    """The profiles of deploy/profiles.toml, by name."""
    return {p.name: p for p in load_profiles(PROFILES_TOML)}


def make_csr(
    key: PrivateKey,
    dns_names: list[str],
    ip_addresses: list[str] | None = None,
    cn: str | None = "",
    san: bool = True,
) -> x509.CertificateSigningRequest:
    """A CSR for `dns_names`; `cn` defaults to the first name, None leaves the subject empty."""
    common_name = (dns_names[0] if dns_names else None) if cn == "" else cn
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if san:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, signing_hash(key))


def csr_pem(csr: x509.CertificateSigningRequest) -> str:
    """The PEM text of a CSR."""
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def patched_csr(csr: x509.CertificateSigningRequest, old: bytes, new: bytes) -> x509.CertificateSigningRequest:
    """The CSR with every `old` replaced by `new` in its DER, signature left as it was (so it no longer verifies)."""
    assert len(old) == len(new)
    der = csr.public_bytes(serialization.Encoding.DER)
    assert old in der
    return x509.load_der_x509_csr(der.replace(old, new))


def resigned_csr(
    csr: x509.CertificateSigningRequest, key: ed25519.Ed25519PrivateKey, old: bytes, new: bytes
) -> x509.CertificateSigningRequest:
    """The Ed25519 CSR with `old` replaced by `new` in its signed part, signed again (for bytes no builder writes)."""
    assert len(old) == len(new)
    der = csr.public_bytes(serialization.Encoding.DER)
    tbs = csr.tbs_certrequest_bytes
    assert der.count(tbs) == 1 and der.endswith(csr.signature) and len(csr.signature) == 64
    new_tbs = tbs.replace(old, new)
    assert new_tbs != tbs
    return x509.load_der_x509_csr(der.replace(tbs, new_tbs)[:-64] + key.sign(new_tbs))


def claims_for(dns_names: list[str], profile: str = "tls-server") -> TokenClaims:
    """Verified token claims allowing `dns_names`."""
    return TokenClaims(
        token_id="tok-1",
        provisioner_id="prov-1",
        subject=dns_names[0] if dns_names else "",
        dns_names=tuple(dns_names),
        profile=profile,
        expires_at=NOW + timedelta(minutes=5),
        holder_key=ed25519.Ed25519PrivateKey.generate().public_key(),
    )


def approved_for(
    csr: x509.CertificateSigningRequest,
    dns_names: list[str],
    validity_days: int = 90,
    ip_addresses: list[str] | None = None,
    profile: str = "tls-server",
    emails: list[str] | None = None,
) -> EnrollmentApproved:
    """An EnrollmentApproved event for `csr`."""
    return EnrollmentApproved(
        aggregate_id="req-1",
        occurred_at=NOW,
        correlation_id="corr-1",
        producer="enrollment",
        csr_pem=csr_pem(csr),
        profile=profile,
        dns_names=dns_names,
        ip_addresses=ip_addresses or [],
        emails=emails or [],
        validity_days=validity_days,
        provisioner_id="prov-1",
        token_id="tok-1",
        requester="alice",
    )


def issue_leaf(
    issuer: signing.CaIdentity,
    issuer_key: PrivateKey,
    dns_names: list[str],
    now: datetime = NOW,
    validity_days: int = 90,
    plan: signing.LeafPlan | None = None,
    profile: Profile = TLS_SERVER,
) -> x509.Certificate:
    """A leaf for a fresh P-256 key, issued by `issuer` through the signing templates of `profile`."""
    public_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    plan = plan or signing.plan_leaf(issuer, validity_days, now)
    builder = signing.leaf_builder(
        profile, signing.Sans(tuple(dns_names)), public_key, issuer, plan, signing.Urls(BASE_URL)
    )
    return builder.sign(issuer_key, signing_hash(issuer_key))
