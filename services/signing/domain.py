"""Certificate and CRL templates and signing policy: pure functions, no I/O, no key storage."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from shared.contract.events import EnrollmentApproved
from shared.contract.profiles import Profile, key_problem, key_type_of, names_problems, validity_problem
from shared.contract.reasons import Reason, reason_flag
from shared.pki import der
from shared.pki.crypto import PrivateKey, PublicKey, csr_names, signing_hash, spki_der, spki_sha256

BACKDATE = timedelta(minutes=1)


@dataclass(frozen=True)
class CaIdentity:
    """A CA as the templates need it: its id, certificate and where relying parties find it."""

    ca_id: str
    cert: x509.Certificate
    crl_shards: int | None = None  # None: one CRL for the whole CA (created before shards)

    def shard_of(self, serial: int) -> int | None:
        """The CRL shard a certificate of this CA is listed in (None: the CA's only CRL)."""
        return serial % self.crl_shards if self.crl_shards else None

    def shards(self) -> list[int | None]:
        """Every CRL this CA publishes, by shard."""
        return list(range(self.crl_shards)) if self.crl_shards else [None]


@dataclass(frozen=True)
class Urls:
    """Public URLs served by validation, embedded in what signing issues."""

    base: str

    def crl(self, ca_id: str, shard: int | None = None) -> str:
        """Where the CRL of `ca_id` (of one of its shards, if it has shards) is served."""
        if shard is None:
            return f"{self.base.rstrip('/')}/crl/{ca_id}.crl"
        return f"{self.base.rstrip('/')}/crl/{ca_id}/{shard}.crl"

    def leaf_crl(self, issuer: CaIdentity, serial: int) -> str:
        """The CRL a leaf of `issuer` with `serial` names: its own shard's."""
        return self.crl(issuer.ca_id, issuer.shard_of(serial))

    def ca_cert(self, ca_id: str) -> str:
        """Where the certificate of `ca_id` is served."""
        return f"{self.base.rstrip('/')}/ca/{ca_id}.crt"

    def ocsp(self) -> str:
        """Where OCSP is answered, for every issuing CA (the request names its issuer)."""
        return f"{self.base.rstrip('/')}/ocsp"


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
        .add_extension(ca_key_usage(), critical=True)
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
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key_public), critical=False)
        .add_extension(_aki(root.cert), critical=False)
        .add_extension(_crl_dp(urls.crl(root.ca_id)), critical=False)
        .add_extension(_aia(urls.ca_cert(root.ca_id)), critical=False)
        .sign(root_key, signing_hash(root_key))
    )


def ca_key_usage() -> x509.KeyUsage:
    """The key usages of every CA certificate signing makes (roots and issuing CAs)."""
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


def _aia(ca_url: str, ocsp_url: str | None = None) -> x509.AuthorityInformationAccess:
    """caIssuers, after the OCSP responder when there is one (the order most certificates use)."""
    issuer = x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_url))
    if ocsp_url is None:
        return x509.AuthorityInformationAccess([issuer])
    ocsp = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
    return x509.AuthorityInformationAccess([ocsp, issuer])


@dataclass(frozen=True)
class Sans:
    """The subject alternative names of one certificate, by kind, in order."""

    dns: tuple[str, ...]
    ips: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    @classmethod
    def of(cls, approved: EnrollmentApproved) -> Sans:
        """The names an approval grants."""
        return cls(tuple(approved.dns_names), tuple(approved.ip_addresses), tuple(approved.emails))

    def general_names(self) -> list[x509.GeneralName]:
        """As X.509 general names: DNS names, then IP addresses, then emails."""
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in self.dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.ips]
        names += [x509.RFC822Name(e) for e in self.emails]
        return names


def policy_problems(
    approved: EnrollmentApproved, csr: x509.CertificateSigningRequest, profile: Profile
) -> list[Reason]:
    """Signing's own checks, whatever enrollment approved: CSR signature, key, names, validity."""
    reasons: list[Reason] = []
    try:
        public_key = csr.public_key()
        dns, ips = csr_names(csr)
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension) as exc:
        return [Reason(code="csr_malformed", message=f"the approved CSR cannot be read: {exc}")]
    if (key_reason := key_problem(profile, public_key)) is not None:
        reasons.append(key_reason)
    elif not csr.is_signature_valid:
        reasons.append(Reason(code="csr_signature_invalid", message="the CSR's signature does not verify"))
    extra = (set(dns) | set(ips)) - set(approved.dns_names) - set(approved.ip_addresses)
    if extra:
        reasons.append(
            Reason(code="name_not_approved", message=f"the CSR names {sorted(extra)} that were not approved")
        )
    reasons += names_problems(profile, approved.dns_names, approved.ip_addresses, approved.emails)
    if (too_long := validity_problem(profile, approved.validity_days)) is not None:
        reasons.append(too_long)
    return reasons


@dataclass(frozen=True)
class LeafPlan:
    """Everything that fixes a leaf certificate's content, recorded before it is signed."""

    serial: int
    not_before: datetime
    not_after: datetime


def plan_leaf(issuer: CaIdentity, validity_days: int, now: datetime) -> LeafPlan:
    """Choose the serial (159 random bits) and validity, capped at the issuer's own expiry.
    Times are whole seconds, as X.509 encodes them, so the plan equals what the certificate says."""
    not_before = now.replace(microsecond=0) - BACKDATE
    not_after = min(not_before + timedelta(days=validity_days), issuer.cert.not_valid_after_utc)
    return LeafPlan(serial=x509.random_serial_number(), not_before=not_before, not_after=not_after)


def _leaf_subject(names: Sans) -> x509.Name:
    first = names.dns[0] if names.dns else ""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first)] if 0 < len(first) <= 64 else [])


def leaf_builder(
    profile: Profile,
    names: Sans,
    public_key: PublicKey,
    issuer: CaIdentity,
    plan: LeafPlan,
    urls: Urls,
) -> x509.CertificateBuilder:
    """A leaf certificate as `profile` says: the approved names and the CSR's key, nothing else
    from the request. The subject is the first DNS name as CN when it fits (64 characters), else
    empty, and then the SAN is critical (RFC 5280 4.2.1.6). The AIA names the OCSP responder and
    the issuer's certificate; a delegated OCSP responder's own certificate instead carries
    id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1) and no OCSP URL, since nobody checks it."""
    subject = _leaf_subject(names)
    server, _ = profile.ekus()
    builder = (
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
                # RSA key transport only for TLS servers (TLS 1.2 RSA key exchange)
                key_encipherment=server and isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(profile.eku_oids()), critical=False)
    )
    if profile.ocsp_responder:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    ocsp_url = None if profile.ocsp_responder else urls.ocsp()
    return (
        builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(issuer.cert), critical=False)
        .add_extension(x509.SubjectAlternativeName(names.general_names()), critical=len(subject) == 0)
        .add_extension(_crl_dp(urls.leaf_crl(issuer, plan.serial)), critical=False)
        .add_extension(_aia(urls.ca_cert(issuer.ca_id), ocsp_url), critical=False)
    )


# The parts of a leaf that differ between two certificates of one profile and key type; each is
# checked against what was approved and planned. Everything else must equal the linted template.
_SAN_OID = ExtensionOID.SUBJECT_ALTERNATIVE_NAME.dotted_string
_SKI_OID = ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string


def _oid_der(dotted: str) -> bytes:
    """The DER content of an OBJECT IDENTIFIER."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return bytes(out)


_CDP_OID = ExtensionOID.CRL_DISTRIBUTION_POINTS.dotted_string
_SAN, _SKI, _CDP = _oid_der(_SAN_OID), _oid_der(_SKI_OID), _oid_der(_CDP_OID)


@functools.lru_cache(maxsize=256)
def _template_parts(template: x509.Certificate) -> der.TbsParts:
    """A template's fields, split once per process (templates are few and long-lived)."""
    return der.tbs_parts(template.tbs_certificate_bytes)


@functools.lru_cache(maxsize=256)
def _template_key_type(template: x509.Certificate) -> str | None:
    """The key type of a template's (placeholder) key, read once per process."""
    return key_type_of(template.public_key())


def template_deviations(
    cert: x509.Certificate,
    template: x509.Certificate,
    profile: Profile,
    names: Sans,
    public_key: PublicKey,
    plan: LeafPlan,
    *,
    crl_url: str,
) -> list[Reason]:
    """How `cert` departs from its linted template or from what was approved (empty: release it).

    Only the serial, names, public key, validity and CRL distribution point may differ from the
    template, and each must be exactly what was planned and approved, inside the profile; the CRL
    distribution point must name `crl_url` (`Urls.leaf_crl`: the serial's own shard) and nothing
    else. Every other field and extension must be byte for byte the template's. Compares raw DER
    (about 40 us), not parsed objects.
    """
    found: list[str] = []
    try:
        got, want = der.tbs_parts(cert.tbs_certificate_bytes), _template_parts(template)
    except ValueError as exc:
        return [Reason(code="template_deviation", message=f"the certificate's DER cannot be read: {exc}")]
    if got.version != want.version or got.signature != want.signature or got.unique_ids != want.unique_ids:
        found.append("version or signature algorithm differs from the template")
    if got.issuer != want.issuer:
        found.append("issuer differs from the template")
    if cert.serial_number != plan.serial:
        found.append("serial is not the one recorded before signing")
    if cert.not_valid_before_utc != plan.not_before or cert.not_valid_after_utc != plan.not_after:
        found.append("validity is not the one recorded before signing")
    if plan.not_after - plan.not_before > timedelta(days=profile.max_validity_days) + BACKDATE:
        found.append(f"validity exceeds the profile's {profile.max_validity_days} days")
    if got.spki != public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        found.append("public key is not the requested one")
    if key_type_of(public_key) != _template_key_type(template):
        found.append("key type differs from the template's")
    subject = _leaf_subject(names)
    if got.subject != subject.public_bytes():
        found.append("subject is not the first approved DNS name")
    found += _extension_deviations(
        got, want, names=names, public_key=public_key, empty_subject=len(subject) == 0, crl_url=crl_url
    )
    if names_problems(profile, list(names.dns), list(names.ips), list(names.emails)):
        found.append("names are outside the profile")
    return [Reason(code="template_deviation", message=f"certificate {cert.serial_number:x}: {f}") for f in found]


def _extension_deviations(
    got: der.TbsParts, want: der.TbsParts, *, names: Sans, public_key: PublicKey, empty_subject: bool, crl_url: str
) -> list[str]:
    if [e.oid for e in got.extensions] != [e.oid for e in want.extensions]:
        extra = sorted(_oid_text(o) for o in {e.oid for e in got.extensions} ^ {e.oid for e in want.extensions})
        return [f"extensions differ from the template's ({', '.join(extra) or 'order'})"]
    found = []
    for ext, ref in zip(got.extensions, want.extensions, strict=True):
        if ext.oid == _SAN:
            if ext.value != x509.SubjectAlternativeName(names.general_names()).public_bytes():
                found.append("subjectAltName is not exactly the approved names")
            if ext.critical != empty_subject:
                found.append("subjectAltName criticality does not match the subject")
        elif ext.oid == _SKI:
            if ext.value != x509.SubjectKeyIdentifier.from_public_key(public_key).public_bytes():
                found.append("subjectKeyIdentifier does not match the public key")
        elif ext.oid == _CDP:
            if ext.value != _crl_dp(crl_url).public_bytes() or ext.critical != ref.critical:
                found.append(f"cRLDistributionPoints does not name this certificate's CRL {crl_url}")
        elif ext != ref:
            found.append(f"extension {_oid_text(ext.oid)} differs from the template's")
    return found


def _oid_text(oid_der: bytes) -> str:
    arcs = [oid_der[0] // 40, oid_der[0] % 40]
    value = 0
    for byte in oid_der[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


@dataclass(frozen=True)
class RevokedEntry:
    """One CRL entry."""

    serial: int
    revoked_at: datetime
    reason: str
    invalidity_date: datetime | None = None


def ceremony_revoked(entry: RevokedEntry) -> str:
    """A revocation as the ceremony's `crl --revoked` takes it: `SERIAL:REASON@TIME` (hexadecimal
    serial, an RFC 5280 reason name, the UTC time of the revocation)."""
    return f"{entry.serial:x}:{entry.reason}@{entry.revoked_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def parse_ceremony_revoked(text: str, now: datetime) -> RevokedEntry:
    """`SERIAL[:REASON[@TIME]]` (as `ceremony_revoked` writes it) as a CRL entry: reason
    unspecified and time `now` where they are left out. ValueError, saying what is wrong, otherwise."""
    serial_text, _, rest = text.strip().partition(":")
    reason, _, at_text = rest.partition("@")
    try:
        serial = int(serial_text.removeprefix("0x"), 16)
    except ValueError:
        raise ValueError(f"{text!r}: the serial is hexadecimal (SERIAL[:REASON[@TIME]])") from None
    if not 0 < serial < 2**160:
        raise ValueError(f"{text!r}: a serial is positive and at most 20 octets")
    reason = reason or "unspecified"
    reason_flag(reason)  # ValueError naming the reasons accepted
    try:
        at = datetime.fromisoformat(at_text) if at_text else now
    except ValueError:
        raise ValueError(f"{text!r}: the time is ISO 8601 in UTC, such as 2026-12-06T20:03:56Z") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r}: the time names its zone (Z for UTC)")
    return RevokedEntry(serial, at.astimezone(UTC), reason)


def crl(
    issuer: CaIdentity,
    key: PrivateKey,
    number: int,
    entries: list[RevokedEntry],
    this_update: datetime,
    next_update: datetime,
    *,
    shard_url: str | None = None,
) -> x509.CertificateRevocationList:
    """A full CRL for `issuer` (built from one list: chained additions are quadratic). A shard's CRL
    (`shard_url`) carries a critical issuingDistributionPoint naming that shard's URL (RFC 5280
    5.2.5), so that a relying party never takes one shard's CRL for another's."""
    revoked = []
    for entry in entries:
        builder = x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
        if entry.reason != "unspecified":  # RFC 5280: omit the reasonCode for unspecified
            builder = builder.add_extension(x509.CRLReason(reason_flag(entry.reason)), critical=False)
        if entry.invalidity_date is not None:
            builder = builder.add_extension(x509.InvalidityDate(entry.invalidity_date), critical=False)
        revoked.append(builder.build())
    crl_builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(issuer.cert), critical=False)
    )
    if shard_url is not None:
        crl_builder = crl_builder.add_extension(shard_idp(shard_url), critical=True)
    return crl_builder.sign(key, signing_hash(key))


def shard_idp(url: str) -> x509.IssuingDistributionPoint:
    """The issuingDistributionPoint of a shard's CRL: its URL, user certificates only (a sharded
    CA's leaves; CA certificates are on their issuer's unsharded CRL)."""
    return x509.IssuingDistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        only_contains_user_certs=True,
        only_contains_ca_certs=False,
        only_some_reasons=None,
        indirect_crl=False,
        only_contains_attribute_certs=False,
    )


@dataclass(frozen=True)
class CaRecord:
    """A CA as signing's table records it (no key): what retirement is judged by."""

    ca_id: str
    role: str
    status: str
    parent_id: str | None
    key_offline: bool = False  # an offline root: its key is the ceremony's


def current_issuing(cas: list[CaRecord]) -> str | None:
    """The CA that signs new leaves: the newest active issuing CA (`cas` newest first)."""
    return next((c.ca_id for c in cas if c.role == "issuing" and c.status == "active"), None)


def retirement_problems(ca_id: str, cas: list[CaRecord]) -> list[Reason]:
    """Why CA `ca_id` cannot be retired now (empty: it can). `cas` is every CA, newest first."""
    by_id = {c.ca_id: c for c in cas}
    target = by_id.get(ca_id)
    if target is None:
        known = ", ".join(f"{c.ca_id} ({c.role}, {c.status})" for c in cas) or "none"
        return [Reason(code="ca_unknown", message=f"signing knows no CA {ca_id!r}; its CAs are: {known}")]
    if target.status == "retired":
        return [Reason(code="ca_already_retired", message=f"CA {ca_id} is already retired; its key is destroyed")]
    if target.status != "active":
        return [
            Reason(
                code="ca_not_active",
                message=f"CA {ca_id} is {target.status}: it signs nothing already, and no final CRL can be "
                "trusted from its key",
            )
        ]
    if target.key_offline:
        return [
            Reason(
                code="ca_key_offline",
                message=f"root {ca_id}'s key is offline, in the ceremony's token: signing cannot sign its final CRL "
                "nor destroy its key; retire it in the ceremony (its last CRL with `certbus-ceremony crl`)",
            )
        ]
    if target.role == "root":
        live = [c.ca_id for c in cas if c.parent_id == ca_id and c.status == "active"]
        if live:
            return [
                Reason(
                    code="ca_has_live_issuing_cas",
                    message=f"root {ca_id} still has active issuing CAs ({', '.join(live)}): retire them first",
                )
            ]
    elif current_issuing(cas) == ca_id:
        parent = by_id.get(target.parent_id or "")
        if parent is None or parent.status != "active":
            return [
                Reason(
                    code="ca_no_replacement",
                    message=f"CA {ca_id} is the current issuing CA and its root {target.parent_id} is not active, "
                    "so no replacement can be created under it: nothing could be issued afterwards",
                )
            ]
    return []


def final_crl_next_update(ca_cert: x509.Certificate, now: datetime, fallback: timedelta) -> datetime:
    """nextUpdate of a CA's final CRL: its certificate's notAfter (no CRL will ever supersede it, and
    nothing it signed is valid later), or `now + fallback` if that is already past."""
    not_after = ca_cert.not_valid_after_utc
    return not_after if not_after > now else now + fallback


def certification_problems(
    issuing: x509.Certificate, root: x509.Certificate, own_key: PublicKey, now: datetime
) -> list[str]:
    """Why an issuing CA certificate made by the offline root ceremony cannot be adopted for the key
    `own_key` that signing generated (empty: it can): it must be signed by `root`, certify exactly
    that key, be a CA with pathlen 0 and a CA's key usages, and be valid now."""
    problems = []
    if issuing.issuer != root.subject:
        problems.append(f"its issuer {issuing.issuer.rfc4514_string()} is not the root {root.subject.rfc4514_string()}")
    if not _verifies(issuing, root):
        problems.append("its signature does not verify with the root's key")
    if spki_der(issuing.public_key()) != spki_der(own_key):  # type: ignore[arg-type]
        problems.append("it certifies another key than this issuing CA's")
    try:
        constraints = issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca or constraints.path_length != 0:
        problems.append("it is not an issuing CA's certificate (basicConstraints ca=True, pathlen 0)")
    try:
        usage = issuing.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage != ca_key_usage():
        problems.append("its key usages are not an issuing CA's (keyCertSign, cRLSign, digitalSignature)")
    if not issuing.not_valid_before_utc <= now < issuing.not_valid_after_utc:
        begins, ends = issuing.not_valid_before_utc, issuing.not_valid_after_utc
        problems.append(f"it is not valid now (from {begins:%Y-%m-%d} to {ends:%Y-%m-%d})")
    return problems


def issuing_csr(key: PrivateKey, ca_id: str, organization: str) -> x509.CertificateSigningRequest:
    """The CSR of a new issuing CA under an offline root, for the ceremony to certify: its name and
    the constraints and key usages of signing's issuing profile (the ceremony's `csr_problems`
    accepts exactly these; the certificate's extensions come from that profile, not from the CSR)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_ca_name(organization, f"{organization} Issuing CA {ca_id}"))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .sign(key, signing_hash(key))
    )


def _verifies(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def root_adoption_problems(root: x509.Certificate, spki_sha256_hex: str, now: datetime) -> list[str]:
    """Why a root certificate from the offline ceremony cannot be adopted (empty: it can): it must
    be self-signed, a CA that may sign certificates and CRLs, for the key the command names, and
    valid now."""
    problems = []
    if root.issuer != root.subject or not _verifies(root, root):
        problems.append("it is not self-signed (its signature does not verify with its own key)")
    try:
        constraints = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    pathlen = None if constraints is None else constraints.path_length
    if constraints is None or not constraints.ca or (pathlen is not None and pathlen < 1):
        problems.append("it is not a root CA's certificate (basicConstraints ca=True, pathlen 1 or more)")
    try:
        usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or not usage.key_cert_sign or not usage.crl_sign:
        problems.append("its key usages do not include keyCertSign and cRLSign")
    if spki_sha256(root.public_key()) != spki_sha256_hex:  # type: ignore[arg-type]
        problems.append("its key is not the one the command names (spki_sha256)")
    if not root.not_valid_before_utc <= now < root.not_valid_after_utc:
        begins, ends = root.not_valid_before_utc, root.not_valid_after_utc
        problems.append(f"it is not valid now (from {begins:%Y-%m-%d} to {ends:%Y-%m-%d})")
    return problems


def root_crl_problems(
    crl: x509.CertificateRevocationList,
    root: x509.Certificate,
    number: int,
    last_number: int,
    now: datetime,
    revoked: Collection[int] = (),
) -> list[str]:
    """Why a CRL the offline ceremony signed cannot be served as root `root`'s (empty: it can): the
    root must have signed it, its number must be the one the command says and above the last one
    served, it must not be out of date already, and it must list every serial in `revoked` (the
    issuing CA certificates the root revoked, as signing recorded them: a CRL that left one out
    would make a compromised CA good again)."""
    problems = []
    if crl.issuer != root.subject:
        problems.append(f"its issuer {crl.issuer.rfc4514_string()} is not the root {root.subject.rfc4514_string()}")
    try:
        signed = crl.is_signature_valid(root.public_key())  # type: ignore[arg-type]
    except (TypeError, UnsupportedAlgorithm):
        signed = False
    if not signed:
        problems.append("its signature does not verify with the root's key")
    try:
        crl_number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        crl_number = None
    if crl_number != number:
        problems.append(f"its CRL number {crl_number} is not the command's {number}")
    elif number <= last_number:
        problems.append(f"its CRL number {number} is not above the last one served ({last_number})")
    next_update = crl.next_update_utc
    if next_update is None or next_update <= now:
        problems.append("it is out of date already (nextUpdate is past)")
    listed = {entry.serial_number for entry in crl}
    if missing := sorted(set(revoked) - listed):
        left_out = ", ".join(f"{serial:x}" for serial in missing)
        problems.append(
            f"it leaves out issuing CA certificates the root revoked ({left_out}): `certbus ca root` lists them"
        )
    return problems
