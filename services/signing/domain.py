"""Certificate and CRL templates and signing policy: pure functions, no I/O, no key storage."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from shared.crypto import PrivateKey, PublicKey, csr_names, key_problem, signing_hash
from shared.events import EnrollmentApproved
from shared.reasons import Reason, reason_flag

BACKDATE = timedelta(minutes=1)


@dataclass(frozen=True)
class CaIdentity:
    """A CA as the templates need it: its id, certificate and where relying parties find it."""

    ca_id: str
    cert: x509.Certificate


@dataclass(frozen=True)
class Urls:
    """Public URLs served by validation, embedded in what signing issues."""

    base: str

    def crl(self, ca_id: str) -> str:
        """Where the CRL of `ca_id` is served."""
        return f"{self.base.rstrip('/')}/crl/{ca_id}.crl"

    def ca_cert(self, ca_id: str) -> str:
        """Where the certificate of `ca_id` is served."""
        return f"{self.base.rstrip('/')}/ca/{ca_id}.crt"


def _ca_name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def root_certificate(key: PrivateKey, ca_id: str, organization: str, now: datetime, days: int) -> x509.Certificate:
    """A self-signed root CA certificate."""
    name = _ca_name(organization, f"{organization} Root CA {ca_id}")
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, signing_hash(key))
    )


def issuing_certificate(
    key_public: PublicKey,
    ca_id: str,
    root: CaIdentity,
    root_key: PrivateKey,
    organization: str,
    urls: Urls,
    now: datetime,
    days: int,
) -> x509.Certificate:
    """An issuing (intermediate) CA certificate signed by `root`."""
    not_after = min(now + timedelta(days=days), root.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_ca_name(organization, f"{organization} Issuing CA {ca_id}"))
        .issuer_name(root.cert.subject)
        .public_key(key_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key_public), critical=False)
        .add_extension(_aki(root.cert), critical=False)
        .add_extension(_crl_dp(urls.crl(root.ca_id)), critical=False)
        .add_extension(_aia(urls.ca_cert(root.ca_id)), critical=False)
        .sign(root_key, signing_hash(root_key))
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None, crl_issuer=None
            )
        ]
    )


def _aia(ca_url: str) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_url))]
    )


def policy_problems(
    approved: EnrollmentApproved, csr: x509.CertificateSigningRequest, max_validity_days: int
) -> list[Reason]:
    """Signing's own checks, whatever enrollment approved: key strength, names, validity."""
    reasons: list[Reason] = []
    if not csr.is_signature_valid:
        reasons.append(Reason(code="csr_signature_invalid", message="the CSR's signature does not verify"))
    problem = key_problem(csr.public_key())
    if problem is not None:
        reasons.append(Reason(code="key_weak", message=problem))
    dns, ips = csr_names(csr)
    extra = (set(dns) | set(ips)) - set(approved.dns_names) - set(approved.ip_addresses)
    if extra:
        reasons.append(
            Reason(code="name_not_approved", message=f"the CSR names {sorted(extra)} that were not approved")
        )
    if not approved.dns_names:
        reasons.append(Reason(code="names_missing", message="the approval names no DNS name"))
    if approved.validity_days < 1 or approved.validity_days > max_validity_days:
        reasons.append(
            Reason(
                code="validity_too_long",
                message=f"validity of {approved.validity_days} days is outside 1..{max_validity_days}",
            )
        )
    return reasons


@dataclass(frozen=True)
class LeafPlan:
    """Everything that fixes a leaf certificate's content, recorded before it is signed."""

    serial: int
    not_before: datetime
    not_after: datetime


def plan_leaf(issuer: CaIdentity, validity_days: int, now: datetime) -> LeafPlan:
    """Choose the serial (159 random bits) and validity, capped at the issuer's own expiry."""
    not_before = now - BACKDATE
    not_after = min(not_before + timedelta(days=validity_days), issuer.cert.not_valid_after_utc)
    return LeafPlan(serial=x509.random_serial_number(), not_before=not_before, not_after=not_after)


def leaf_builder(
    approved: EnrollmentApproved,
    csr: x509.CertificateSigningRequest,
    issuer: CaIdentity,
    plan: LeafPlan,
    urls: Urls,
) -> x509.CertificateBuilder:
    """The default TLS profile: names and key from the approval and CSR, nothing else copied."""
    public_key = csr.public_key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in approved.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in approved.ip_addresses]
    first = approved.dns_names[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)] if len(first) <= 64 else [])
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(plan.serial)
        .not_valid_before(plan.not_before)
        .not_valid_after(plan.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(issuer.cert), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=len(subject) == 0)
        .add_extension(_crl_dp(urls.crl(issuer.ca_id)), critical=False)
        .add_extension(_aia(urls.ca_cert(issuer.ca_id)), critical=False)
    )


@dataclass(frozen=True)
class RevokedEntry:
    """One CRL entry."""

    serial: int
    revoked_at: datetime
    reason: str


def crl(
    issuer: CaIdentity,
    key: PrivateKey,
    number: int,
    entries: list[RevokedEntry],
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """A full CRL for `issuer` (built from one list: chained additions are quadratic)."""
    revoked = []
    for entry in entries:
        builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
        if entry.reason != "unspecified":  # RFC 5280: omit the reasonCode for unspecified
            builder = builder.add_extension(x509.CRLReason(reason_flag(entry.reason)), critical=False)
        revoked.append(builder.build())
    return (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(issuer.cert), critical=False)
        .sign(key, signing_hash(key))
    )
