"""Signing's certificate and CRL templates, its own policy checks, and the check against the linted template."""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import timedelta
from typing import Any

import hostile
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID, NameOID

from pki_builders import (
    BASE_URL,
    NOW,
    ORG,
    TLS_SERVER,
    approved_for,
    make_csr,
    make_profile,
    patched_csr,
    shipped_profiles,
)
from services.signing import domain as signing
from shared.contract.profiles import Profile, ProfileKeyType
from shared.pki.crypto import PrivateKey, PublicKey, signing_hash
from shared.pki.lint import errors, lint_certificate

NAMES = ["www.example.internal", "api.example.internal"]
MAX_VALIDITY = TLS_SERVER.max_validity_days


def _ext(cert: x509.Certificate | x509.CertificateRevocationList, kind: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


def _sign(
    public_key: PublicKey,
    names: list[str] | signing.Sans,
    issuer: signing.CaIdentity,
    issuer_key: PrivateKey,
    plan: signing.LeafPlan | None = None,
    profile: Profile = TLS_SERVER,
) -> x509.Certificate:
    plan = plan or signing.plan_leaf(issuer, 90, NOW)
    sans = names if isinstance(names, signing.Sans) else signing.Sans(tuple(names))
    builder = signing.leaf_builder(profile, sans, public_key, issuer, plan, signing.Urls(BASE_URL))
    return builder.sign(issuer_key, signing_hash(issuer_key))


@pytest.fixture
def leaf(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    return _sign(p256_key.public_key(), NAMES, issuing, issuing_key)


# --- root and issuing CA --------------------------------------------------------------------


def test_root_is_self_signed(root: signing.CaIdentity) -> None:
    root.cert.verify_directly_issued_by(root.cert)
    assert root.cert.subject == root.cert.issuer


def test_root_is_a_ca_with_path_length_one(root: signing.CaIdentity) -> None:
    ext = _ext(root.cert, x509.BasicConstraints)
    assert ext.critical
    assert ext.value == x509.BasicConstraints(ca=True, path_length=1)


def test_root_key_usage_is_cert_and_crl_signing(root: signing.CaIdentity) -> None:
    ext = _ext(root.cert, x509.KeyUsage)
    assert ext.critical
    assert ext.value.key_cert_sign and ext.value.crl_sign
    assert not ext.value.key_encipherment


def test_root_names_organization_and_ca_id(root: signing.CaIdentity) -> None:
    assert root.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == ORG
    assert root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{ORG} Root CA root-1"


def test_root_validity_is_backdated_one_minute(root: signing.CaIdentity) -> None:
    assert root.cert.not_valid_before_utc == NOW - timedelta(minutes=1)
    assert root.cert.not_valid_after_utc == NOW + timedelta(days=3650)


def test_root_has_subject_key_identifier_of_its_key(
    root: signing.CaIdentity, root_key: ec.EllipticCurvePrivateKey
) -> None:
    assert _ext(root.cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        root_key.public_key()
    )


def test_issuing_ca_is_signed_by_root(root: signing.CaIdentity, issuing: signing.CaIdentity) -> None:
    issuing.cert.verify_directly_issued_by(root.cert)


def test_issuing_ca_has_path_length_zero(issuing: signing.CaIdentity) -> None:
    ext = _ext(issuing.cert, x509.BasicConstraints)
    assert ext.critical
    assert ext.value == x509.BasicConstraints(ca=True, path_length=0)


def test_issuing_ca_authority_key_id_is_root_subject_key_id(
    root: signing.CaIdentity, issuing: signing.CaIdentity
) -> None:
    root_ski = _ext(root.cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(issuing.cert, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski


def test_issuing_ca_points_to_root_crl_and_certificate(issuing: signing.CaIdentity) -> None:
    dp = _ext(issuing.cert, x509.CRLDistributionPoints).value
    aia = _ext(issuing.cert, x509.AuthorityInformationAccess).value
    assert [n.value for n in dp[0].full_name] == ["https://pki.example.test/crl/root-1.crl"]
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, "https://pki.example.test/ca/root-1.crt")
    ]


def test_issuing_ca_expiry_is_capped_at_root_expiry(
    root: signing.CaIdentity, root_key: ec.EllipticCurvePrivateKey, urls: signing.Urls
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = signing.issuing_certificate(key.public_key(), "issuing-2", root, root_key, ORG, urls, NOW, days=99999)
    assert cert.not_valid_after_utc == root.cert.not_valid_after_utc


def test_urls_strip_trailing_slash() -> None:
    assert signing.Urls("https://pki.example.test///").crl("ca-1") == "https://pki.example.test/crl/ca-1.crl"


# --- leaf -----------------------------------------------------------------------------------


def test_leaf_chain_verifies(leaf: x509.Certificate, issuing: signing.CaIdentity, root: signing.CaIdentity) -> None:
    leaf.verify_directly_issued_by(issuing.cert)
    issuing.cert.verify_directly_issued_by(root.cert)


def test_leaf_is_not_a_ca(leaf: x509.Certificate) -> None:
    ext = _ext(leaf, x509.BasicConstraints)
    assert ext.critical
    assert ext.value == x509.BasicConstraints(ca=False, path_length=None)


def test_leaf_key_usage_is_critical_digital_signature_only_for_ec(leaf: x509.Certificate) -> None:
    ext = _ext(leaf, x509.KeyUsage)
    assert ext.critical
    assert ext.value.digital_signature
    assert not ext.value.key_encipherment
    assert not ext.value.key_cert_sign and not ext.value.crl_sign


@pytest.mark.parametrize(("usage", "expected"), [("server", True), ("both", True), ("client", False)])
def test_leaf_key_usage_allows_key_encipherment_for_rsa_servers_only(
    rsa_2048_key: rsa.RSAPrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    usage: str,
    expected: bool,
) -> None:
    profile = make_profile(name="p", usage=usage)  # type: ignore[arg-type]
    cert = _sign(rsa_2048_key.public_key(), NAMES, issuing, issuing_key, profile=profile)
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment is expected


@pytest.mark.parametrize("usage", ["server", "client", "both"])
def test_leaf_key_usage_never_allows_key_encipherment_for_ec_or_ed25519(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey, usage: str
) -> None:
    profile = make_profile(name="p", usage=usage)  # type: ignore[arg-type]
    for key in (ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()):
        assert not _ext(
            _sign(key.public_key(), NAMES, issuing, issuing_key, profile=profile), x509.KeyUsage
        ).value.key_encipherment


@pytest.mark.parametrize(
    ("usage", "ekus"),
    [
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("both", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_leaf_extended_key_usage_follows_the_profile(
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    usage: str,
    ekus: list[x509.ObjectIdentifier],
) -> None:
    profile = make_profile(name="p", usage=usage)  # type: ignore[arg-type]
    ext = _ext(_sign(p256_key.public_key(), NAMES, issuing, issuing_key, profile=profile), x509.ExtendedKeyUsage)
    assert not ext.critical
    assert list(ext.value) == ekus


def test_leaf_subject_key_id_is_of_the_csr_key(leaf: x509.Certificate, p256_key: ec.EllipticCurvePrivateKey) -> None:
    assert _ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        p256_key.public_key()
    )


def test_leaf_authority_key_id_is_issuer_subject_key_id(leaf: x509.Certificate, issuing: signing.CaIdentity) -> None:
    issuer_ski = _ext(issuing.cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == issuer_ski


def test_leaf_san_is_the_approved_names(leaf: x509.Certificate) -> None:
    ext = _ext(leaf, x509.SubjectAlternativeName)
    assert not ext.critical
    assert ext.value.get_values_for_type(x509.DNSName) == NAMES


def test_leaf_san_leaves_out_unapproved_csr_names(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "evil.example.internal"], ["10.0.0.1"])
    approved = approved_for(csr, ["www.example.internal"])
    cert = _sign(csr.public_key(), signing.Sans.of(approved), issuing, issuing_key)  # type: ignore[arg-type]
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.internal"]
    assert san.get_values_for_type(x509.IPAddress) == []


def test_leaf_copies_nothing_else_from_the_csr_subject(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, "evil.example.internal"),
        ]
    )
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.internal")]), critical=False)
        .sign(p256_key, signing_hash(p256_key))
    )
    approved = approved_for(csr, ["www.example.internal"])
    cert = _sign(csr.public_key(), signing.Sans.of(approved), issuing, issuing_key)  # type: ignore[arg-type]
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.internal")])
    assert _ext(cert, x509.BasicConstraints).value.ca is False


def test_leaf_common_name_is_first_approved_name(leaf: x509.Certificate) -> None:
    assert [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["www.example.internal"]


def test_leaf_with_name_too_long_for_cn_has_empty_subject_and_critical_san(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    long_name = "a" * 60 + ".example.internal"
    cert = _sign(p256_key.public_key(), [long_name], issuing, issuing_key)
    assert len(cert.subject) == 0
    assert _ext(cert, x509.SubjectAlternativeName).critical


def test_leaf_points_to_issuer_crl_ocsp_and_certificate(leaf: x509.Certificate) -> None:
    dp = _ext(leaf, x509.CRLDistributionPoints).value
    aia = _ext(leaf, x509.AuthorityInformationAccess).value
    assert [n.value for n in dp[0].full_name] == ["https://pki.example.test/crl/issuing-1.crl"]
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.OCSP, "https://pki.example.test/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, "https://pki.example.test/ca/issuing-1.crt"),
    ]


def test_an_ocsp_responder_leaf_signs_ocsp_only_and_is_not_checked(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    profile = make_profile(name="ocsp-responder", usage="ocsp")
    cert = _sign(p256_key.public_key(), NAMES, issuing, issuing_key, profile=profile)
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    assert not _ext(cert, x509.OCSPNoCheck).critical
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    assert not _ext(cert, x509.KeyUsage).value.key_encipherment
    aia = _ext(cert, x509.AuthorityInformationAccess).value
    assert [d.access_method for d in aia] == [AuthorityInformationAccessOID.CA_ISSUERS]  # nobody checks it


def test_only_an_ocsp_responder_leaf_carries_ocsp_nocheck(leaf: x509.Certificate) -> None:
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.OCSPNoCheck)


def test_the_issuing_ca_names_no_ocsp_responder(issuing: signing.CaIdentity) -> None:
    aia = _ext(issuing.cert, x509.AuthorityInformationAccess).value
    assert [d.access_method for d in aia] == [AuthorityInformationAccessOID.CA_ISSUERS]


def test_leaf_issuer_is_the_issuing_ca(leaf: x509.Certificate, issuing: signing.CaIdentity) -> None:
    assert leaf.issuer == issuing.cert.subject


def test_leaf_takes_serial_and_validity_from_plan(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    plan = signing.LeafPlan(serial=0x1234, not_before=NOW, not_after=NOW + timedelta(days=7))
    cert = _sign(p256_key.public_key(), NAMES, issuing, issuing_key, plan)
    assert cert.serial_number == 0x1234
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (NOW, NOW + timedelta(days=7))


def test_plan_leaf_backdates_one_minute_and_lasts_validity_days(issuing: signing.CaIdentity) -> None:
    plan = signing.plan_leaf(issuing, 90, NOW)
    assert plan.not_before == NOW - timedelta(minutes=1)
    assert plan.not_after == NOW - timedelta(minutes=1) + timedelta(days=90)


def test_plan_leaf_caps_expiry_at_issuer_expiry(issuing: signing.CaIdentity) -> None:
    plan = signing.plan_leaf(issuing, 90, issuing.cert.not_valid_after_utc - timedelta(days=10))
    assert plan.not_after == issuing.cert.not_valid_after_utc


def test_plan_leaf_serials_are_positive_and_under_160_bits(issuing: signing.CaIdentity) -> None:
    serials = [signing.plan_leaf(issuing, 90, NOW).serial for _ in range(20)]
    assert all(0 < s < 2**159 for s in serials)


def test_plan_leaf_serials_are_distinct(issuing: signing.CaIdentity) -> None:
    serials = {signing.plan_leaf(issuing, 90, NOW).serial for _ in range(20)}
    assert len(serials) == 20


def test_plan_leaf_serials_have_over_64_bits_of_entropy(issuing: signing.CaIdentity) -> None:
    # 159 random bits: the chance that 20 samples all fit in 64 bits is 2**-1900.
    assert max(signing.plan_leaf(issuing, 90, NOW).serial for _ in range(20)).bit_length() > 64


# --- policy ---------------------------------------------------------------------------------


def _codes(reasons: list) -> list[str]:  # type: ignore[type-arg]
    return [r.code for r in reasons]


def test_policy_accepts_approved_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    assert signing.policy_problems(approved_for(csr, NAMES), csr, TLS_SERVER) == []


def test_policy_flags_weak_key(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    csr = make_csr(rsa_1024_key, NAMES)
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, TLS_SERVER)) == ["key_weak"]


def test_policy_flags_rsa_under_the_profiles_minimum(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    csr = make_csr(rsa_2048_key, NAMES)
    profile = make_profile(min_rsa_bits=3072)
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, profile)) == ["key_weak"]


def test_policy_flags_key_type_not_in_profile() -> None:
    csr = make_csr(ed25519.Ed25519PrivateKey.generate(), NAMES)
    profile = make_profile(key_types=["ec-p256"])
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, profile)) == ["key_type_not_allowed"]


def test_policy_flags_unsupported_curve() -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256K1()), NAMES)
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, TLS_SERVER)) == ["key_unsupported"]


def test_policy_flags_csr_names_not_approved(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "evil.example.internal"])
    reasons = signing.policy_problems(approved_for(csr, ["www.example.internal"]), csr, TLS_SERVER)
    assert _codes(reasons) == ["name_not_approved"]
    assert "evil.example.internal" in reasons[0].message


def test_policy_flags_csr_ip_not_approved(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES, ["10.0.0.1"])
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, TLS_SERVER)) == ["name_not_approved"]


def test_policy_accepts_approved_ip_the_profile_allows(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES, ["10.0.0.1"])
    approved = approved_for(csr, NAMES, ip_addresses=["10.0.0.1"])
    profile = make_profile(allow_ip_sans=True, ip_ranges=["10.0.0.0/8"])
    assert signing.policy_problems(approved, csr, profile) == []


def test_policy_flags_approved_ip_the_profile_does_not_allow(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES, ["10.0.0.1"])
    approved = approved_for(csr, NAMES, ip_addresses=["10.0.0.1"])
    assert _codes(signing.policy_problems(approved, csr, TLS_SERVER)) == ["ip_not_allowed"]


def test_policy_flags_approved_email_the_profile_does_not_allow(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, emails=["ops@example.internal"])
    assert _codes(signing.policy_problems(approved, csr, TLS_SERVER)) == ["email_not_allowed"]


def test_policy_flags_approved_name_outside_the_profile(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.com"])
    approved = approved_for(csr, ["www.example.com"])
    assert _codes(signing.policy_problems(approved, csr, TLS_SERVER)) == ["name_not_in_profile"]


def test_policy_flags_approved_wildcard_the_profile_does_not_allow(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["*.example.internal"])
    approved = approved_for(csr, ["*.example.internal"])
    assert _codes(signing.policy_problems(approved, csr, TLS_SERVER)) == ["wildcard_not_allowed"]


def test_policy_flags_too_many_approved_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    names = [f"h{i}.example.internal" for i in range(4)]
    csr = make_csr(p256_key, names)
    assert _codes(signing.policy_problems(approved_for(csr, names), csr, make_profile(max_sans=3))) == [
        "too_many_names"
    ]


def test_policy_flags_validity_over_max(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, validity_days=MAX_VALIDITY + 1)
    assert _codes(signing.policy_problems(approved, csr, TLS_SERVER)) == ["validity_too_long"]


def test_policy_accepts_validity_of_exactly_max(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, validity_days=MAX_VALIDITY)
    assert signing.policy_problems(approved, csr, TLS_SERVER) == []


def test_policy_flags_zero_validity(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, validity_days=0)
    assert _codes(signing.policy_problems(approved, csr, TLS_SERVER)) == ["validity_invalid"]


def test_policy_flags_approval_without_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, [])
    assert _codes(signing.policy_problems(approved_for(csr, []), csr, TLS_SERVER)) == ["names_missing"]


def test_policy_flags_tampered_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = patched_csr(make_csr(p256_key, ["www.example.internal"]), b"www.example.internal", b"wxw.example.internal")
    reasons = signing.policy_problems(approved_for(csr, ["wxw.example.internal"]), csr, TLS_SERVER)
    assert _codes(reasons) == ["csr_signature_invalid"]


@pytest.mark.parametrize("factory", [hostile.unknown_key_algorithm, hostile.duplicate_san], ids=lambda f: f.__name__)
def test_policy_refuses_an_unreadable_csr_without_raising(factory: Any) -> None:
    csr = x509.load_pem_x509_csr(factory(["app.example.internal"]).encode())
    assert signing.policy_problems(approved_for(csr, ["app.example.internal"]), csr, TLS_SERVER) != []


def test_sans_of_an_approval_keeps_kinds_and_order(p256_key: ec.EllipticCurvePrivateKey) -> None:
    approved = approved_for(
        make_csr(p256_key, NAMES), NAMES, ip_addresses=["10.0.0.2", "::1"], emails=["ops@example.internal"]
    )
    sans = signing.Sans.of(approved)
    assert sans == signing.Sans(tuple(NAMES), ("10.0.0.2", "::1"), ("ops@example.internal",))
    assert [type(n) for n in sans.general_names()] == [
        x509.DNSName,
        x509.DNSName,
        x509.IPAddress,
        x509.IPAddress,
        x509.RFC822Name,
    ]


def test_leaf_carries_ips_and_emails(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    sans = signing.Sans(tuple(NAMES), ("10.0.0.1",), ("ops@example.internal",))
    san = _ext(_sign(p256_key.public_key(), sans, issuing, issuing_key), x509.SubjectAlternativeName).value
    assert list(san) == sans.general_names()


# --- template deviations ----------------------------------------------------------------------

OTHER_NAMES = signing.Sans(("db.corp.internal", "www.example.internal"))


@functools.cache
def _key(key_type: ProfileKeyType, rsa_bits: int = 2048) -> PrivateKey:
    """One private key per type (and RSA size) per process."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa":
        return rsa.generate_private_key(65537, rsa_bits)
    return ed25519.Ed25519PrivateKey.generate()


def _template(
    profile: Profile, key_type: ProfileKeyType, issuer: signing.CaIdentity, issuer_key: PrivateKey
) -> x509.Certificate:
    """A template as signing's TemplateBook makes it: the profile's template name, a placeholder key."""
    template_key = _key(key_type, profile.min_rsa_bits).public_key()
    plan = signing.plan_leaf(issuer, profile.default_validity_days, NOW)
    return _sign(template_key, [profile.template_name()], issuer, issuer_key, plan, profile)  # type: ignore[arg-type]


@pytest.fixture
def template(issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return _template(TLS_SERVER, "ec-p256", issuing, issuing_key)


@pytest.fixture
def plan(issuing: signing.CaIdentity) -> signing.LeafPlan:
    return signing.plan_leaf(issuing, 60, NOW + timedelta(days=3))


def _rebuilt(
    cert: x509.Certificate,
    signer: PrivateKey,
    *,
    drop: tuple[x509.ObjectIdentifier, ...] = (),
    replace_ext: dict[x509.ObjectIdentifier, tuple[x509.ExtensionType, bool]] | None = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    sign_hash: Any = "same",
    **fields: Any,
) -> x509.Certificate:
    """`cert` built again with some fields or extensions changed, signed by `signer`."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(fields.get("subject", cert.subject))
        .issuer_name(fields.get("issuer", cert.issuer))
        .public_key(fields.get("public_key", cert.public_key()))
        .serial_number(fields.get("serial", cert.serial_number))
        .not_valid_before(fields.get("not_before", cert.not_valid_before_utc))
        .not_valid_after(fields.get("not_after", cert.not_valid_after_utc))
    )
    for ext in cert.extensions:
        if ext.oid in drop:
            continue
        value, critical = (replace_ext or {}).get(ext.oid, (ext.value, ext.critical))
        builder = builder.add_extension(value, critical=critical)
    for value, critical in extra:
        builder = builder.add_extension(value, critical=critical)
    return builder.sign(signer, signing_hash(signer) if sign_hash == "same" else sign_hash)


def _deviations(
    cert: x509.Certificate,
    template: x509.Certificate,
    public_key: PublicKey,
    plan: signing.LeafPlan,
    names: signing.Sans = OTHER_NAMES,
    profile: Profile = TLS_SERVER,
    crl_url: str = signing.Urls(BASE_URL).crl("issuing-1"),
) -> list[str]:
    reasons = signing.template_deviations(cert, template, profile, names, public_key, plan, crl_url=crl_url)
    assert all(r.code == "template_deviation" for r in reasons)
    assert all(r.message.startswith(f"certificate {cert.serial_number:x}: ") for r in reasons)
    return [r.message.split(": ", 1)[1] for r in reasons]


@pytest.fixture
def good(
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> x509.Certificate:
    """A leaf like the template but for other names, another key, serial and validity."""
    return _sign(p256_key.public_key(), OTHER_NAMES, issuing, issuing_key, plan)


def test_a_leaf_of_the_same_profile_issuer_and_key_type_does_not_deviate(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    assert good.serial_number != template.serial_number
    assert good.not_valid_after_utc != template.not_valid_after_utc
    assert good.subject != template.subject
    assert _deviations(good, template, p256_key.public_key(), plan) == []


def test_a_leaf_with_ips_and_emails_does_not_deviate(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    profile = make_profile(allow_ip_sans=True, allow_emails=True)
    names = signing.Sans(("www.example.internal",), ("10.0.0.1",), ("ops@example.internal",))
    template = _template(profile, "ec-p256", issuing, issuing_key)
    cert = _sign(p256_key.public_key(), names, issuing, issuing_key, plan, profile)
    assert _deviations(cert, template, p256_key.public_key(), plan, names, profile) == []


def test_an_extra_extension_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    cert = _rebuilt(good, issuing_key, extra=((x509.OCSPNoCheck(), False),))
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "extensions differ from the template's (1.3.6.1.5.5.7.48.1.5)"
    ]


def test_a_missing_extension_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    cert = _rebuilt(good, issuing_key, drop=(ExtensionOID.CRL_DISTRIBUTION_POINTS,))
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "extensions differ from the template's (2.5.29.31)"
    ]


def test_extensions_in_another_order_deviate(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    aia = _ext(good, x509.AuthorityInformationAccess)
    cert = _rebuilt(good, issuing_key, drop=(ExtensionOID.AUTHORITY_INFORMATION_ACCESS,))
    cert = _rebuilt(cert, issuing_key, drop=(ExtensionOID.BASIC_CONSTRAINTS,), extra=((aia.value, False),))
    cert = _rebuilt(cert, issuing_key, extra=((x509.BasicConstraints(ca=False, path_length=None), True),))
    assert _deviations(cert, template, p256_key.public_key(), plan) == ["extensions differ from the template's (order)"]


def test_a_changed_eku_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    both = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    cert = _rebuilt(good, issuing_key, replace_ext={ExtensionOID.EXTENDED_KEY_USAGE: (both, False)})
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "extension 2.5.29.37 differs from the template's"
    ]


def test_a_leaf_of_another_usage_deviates(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    client = make_profile(name="tls-client", usage="client")
    cert = _sign(p256_key.public_key(), OTHER_NAMES, issuing, issuing_key, plan, client)
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "extension 2.5.29.37 differs from the template's"
    ]


@pytest.mark.parametrize(
    ("oid", "value", "critical"),
    [
        (ExtensionOID.EXTENDED_KEY_USAGE, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), True),
        (ExtensionOID.BASIC_CONSTRAINTS, x509.BasicConstraints(ca=False, path_length=None), False),
    ],
    ids=["eku_critical", "basic_constraints_not_critical"],
)
def test_changed_criticality_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
    oid: x509.ObjectIdentifier,
    value: x509.ExtensionType,
    critical: bool,
) -> None:
    cert = _rebuilt(good, issuing_key, replace_ext={oid: (value, critical)})
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        f"extension {oid.dotted_string} differs from the template's"
    ]


def test_a_ca_basic_constraints_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    ca = x509.BasicConstraints(ca=True, path_length=None)
    cert = _rebuilt(good, issuing_key, replace_ext={ExtensionOID.BASIC_CONSTRAINTS: (ca, True)})
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "extension 2.5.29.19 differs from the template's"
    ]


def test_a_san_with_a_name_not_approved_deviates(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    smuggled = replace(OTHER_NAMES, dns=(*OTHER_NAMES.dns, "evil.example.internal"))
    cert = _sign(p256_key.public_key(), smuggled, issuing, issuing_key, plan)
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "subjectAltName is not exactly the approved names"
    ]


def test_a_san_missing_an_approved_ip_deviates(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    profile = make_profile(allow_ip_sans=True)
    cert = _sign(p256_key.public_key(), OTHER_NAMES, issuing, issuing_key, plan, profile)
    approved = replace(OTHER_NAMES, ips=("10.0.0.1",))
    assert _deviations(cert, template, p256_key.public_key(), plan, approved, profile) == [
        "subjectAltName is not exactly the approved names"
    ]


def test_an_empty_subject_where_the_cn_fits_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    # The subject is exactly what leaf_builder makes of the names (here a CN), never just "empty".
    cert = _rebuilt(good, issuing_key, subject=x509.Name([]))
    assert _deviations(cert, template, p256_key.public_key(), plan) == ["subject is not the first approved DNS name"]


def test_a_wrong_public_key_deviates(
    good: x509.Certificate, template: x509.Certificate, plan: signing.LeafPlan
) -> None:
    requested = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert _deviations(good, template, requested, plan) == [
        "public key is not the requested one",
        "subjectKeyIdentifier does not match the public key",
    ]


def test_a_key_of_another_type_than_the_template_deviates(
    template: x509.Certificate,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    key = _key("ec-p384").public_key()
    cert = _sign(key, OTHER_NAMES, issuing, issuing_key, plan)  # type: ignore[arg-type]
    assert _deviations(cert, template, key, plan) == ["key type differs from the template's"]  # type: ignore[arg-type]


def test_a_wrong_serial_deviates(
    good: x509.Certificate, template: x509.Certificate, p256_key: ec.EllipticCurvePrivateKey, plan: signing.LeafPlan
) -> None:
    other = replace(plan, serial=plan.serial + 1)
    assert _deviations(good, template, p256_key.public_key(), other) == [
        "serial is not the one recorded before signing"
    ]


@pytest.mark.parametrize(
    "change",
    [{"not_after": timedelta(seconds=1)}, {"not_before": timedelta(seconds=-1)}, {"not_after": timedelta(days=-1)}],
    ids=["later_end", "earlier_start", "earlier_end"],
)
def test_validity_other_than_planned_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
    change: dict[str, timedelta],
) -> None:
    ((field, delta),) = change.items()
    other = replace(plan, **{field: getattr(plan, field) + delta})
    assert _deviations(good, template, p256_key.public_key(), other) == [
        "validity is not the one recorded before signing"
    ]


def test_validity_over_the_profiles_max_deviates(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
) -> None:
    plan = signing.plan_leaf(issuing, TLS_SERVER.max_validity_days + 1, NOW)
    cert = _sign(p256_key.public_key(), OTHER_NAMES, issuing, issuing_key, plan)
    assert _deviations(cert, template, p256_key.public_key(), plan) == ["validity exceeds the profile's 90 days"]


def test_validity_of_exactly_the_profiles_max_does_not_deviate(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
) -> None:
    plan = signing.plan_leaf(issuing, TLS_SERVER.max_validity_days, NOW)
    cert = _sign(p256_key.public_key(), OTHER_NAMES, issuing, issuing_key, plan)
    assert _deviations(cert, template, p256_key.public_key(), plan) == []


def test_another_issuer_deviates(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    root: signing.CaIdentity,
    root_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    cert = _sign(p256_key.public_key(), OTHER_NAMES, root, root_key, plan)
    found = _deviations(cert, template, p256_key.public_key(), plan)
    assert found[0] == "issuer differs from the template"
    assert "extension 2.5.29.35 differs from the template's" in found  # the authority key id


def test_an_issuer_name_alone_changed_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Someone Else")])
    cert = _rebuilt(good, issuing_key, issuer=issuer)
    assert _deviations(cert, template, p256_key.public_key(), plan) == ["issuer differs from the template"]


@pytest.mark.parametrize(
    "subject",
    [
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.internal")]),  # the second name
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
                x509.NameAttribute(NameOID.COMMON_NAME, "db.corp.internal"),
            ]
        ),
    ],
    ids=["second_name", "extra_attribute"],
)
def test_a_subject_that_is_not_the_first_name_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
    subject: x509.Name,
) -> None:
    cert = _rebuilt(good, issuing_key, subject=subject)
    assert _deviations(cert, template, p256_key.public_key(), plan) == ["subject is not the first approved DNS name"]


def test_another_signature_algorithm_deviates(
    good: x509.Certificate,
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    cert = _rebuilt(good, issuing_key, sign_hash=hashes.SHA384())
    assert _deviations(cert, template, p256_key.public_key(), plan) == [
        "version or signature algorithm differs from the template"
    ]


def test_names_outside_the_profile_deviate(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    names = signing.Sans(("www.example.com",))
    cert = _sign(p256_key.public_key(), names, issuing, issuing_key, plan)
    assert _deviations(cert, template, p256_key.public_key(), plan, names) == ["names are outside the profile"]


def test_a_leaf_whose_first_name_is_too_long_for_the_cn_does_not_deviate(
    template: x509.Certificate,
    p256_key: ec.EllipticCurvePrivateKey,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    names = signing.Sans(("a" * 60 + ".example.internal",))
    cert = _sign(p256_key.public_key(), names, issuing, issuing_key, plan)
    assert len(cert.subject) == 0
    assert _deviations(cert, template, p256_key.public_key(), plan, names) == []


# --- every shipped profile and key type: template check and pkilint ----------------------------

SHIPPED_CASES = [
    pytest.param(name, key_type, id=f"{name}-{key_type}")
    for name, profile in shipped_profiles().items()
    for key_type in profile.key_types
]


def _realistic_names(profile: Profile) -> signing.Sans:
    ips = ("10.1.2.3", "fd00::1") if profile.allow_ip_sans else ()
    suffix = profile.dns_suffixes[0]
    return signing.Sans((f"web.prod.{suffix}", f"web-1.eu.prod.{suffix}")[: profile.max_sans], ips)


@pytest.mark.parametrize(("profile_name", "key_type"), SHIPPED_CASES)
def test_shipped_profile_leaf_matches_its_template(
    profile_name: str,
    key_type: ProfileKeyType,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan,
) -> None:
    profile = shipped_profiles()[profile_name]
    template = _template(profile, key_type, issuing, issuing_key)
    key = _key(key_type, profile.min_rsa_bits + 1024 if key_type == "rsa" else 2048).public_key()
    names = _realistic_names(profile)
    plan = signing.plan_leaf(issuing, profile.max_validity_days, NOW + timedelta(days=1))
    cert = _sign(key, names, issuing, issuing_key, plan, profile)  # type: ignore[arg-type]
    assert _deviations(cert, template, key, plan, names, profile) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(("profile_name", "key_type"), SHIPPED_CASES)
def test_shipped_profile_leaf_passes_pkilint(
    profile_name: str,
    key_type: ProfileKeyType,
    issuing: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
) -> None:
    profile = shipped_profiles()[profile_name]
    plan = signing.plan_leaf(issuing, profile.max_validity_days, NOW)
    for names in (signing.Sans((profile.template_name(),)), _realistic_names(profile)):
        cert = _sign(_key(key_type, profile.min_rsa_bits).public_key(), names, issuing, issuing_key, plan, profile)  # type: ignore[arg-type]
        findings = lint_certificate(cert.public_bytes(serialization.Encoding.DER))
        assert errors(findings) == [], findings


def test_leaf_with_empty_subject_and_critical_san_passes_pkilint(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = _sign(p256_key.public_key(), ["a" * 60 + ".example.internal"], issuing, issuing_key)
    assert len(cert.subject) == 0
    assert errors(lint_certificate(cert.public_bytes(serialization.Encoding.DER))) == []


def test_leaf_with_email_san_passes_pkilint(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    profile = make_profile(usage="both", allow_emails=True)
    names = signing.Sans(("www.example.internal",), (), ("ops@example.internal",))
    cert = _sign(p256_key.public_key(), names, issuing, issuing_key, profile=profile)
    assert errors(lint_certificate(cert.public_bytes(serialization.Encoding.DER))) == []


# --- CRL ------------------------------------------------------------------------------------

ENTRIES = [
    signing.RevokedEntry(serial=0xA1, revoked_at=NOW - timedelta(days=2), reason="keyCompromise"),
    signing.RevokedEntry(serial=0xB2, revoked_at=NOW - timedelta(days=1), reason="unspecified"),
    signing.RevokedEntry(serial=0xC3, revoked_at=NOW - timedelta(hours=1), reason="superseded"),
]


@pytest.fixture(scope="module")
def revocation_list(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> x509.CertificateRevocationList:
    return signing.crl(issuing, issuing_key, 42, ENTRIES, NOW, NOW + timedelta(days=7))


def test_a_crl_entry_carries_the_invalidity_date_when_one_was_given(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    since = NOW - timedelta(days=3)
    entries = [*ENTRIES, signing.RevokedEntry(0xD4, NOW, "keyCompromise", invalidity_date=since)]
    crl = signing.crl(issuing, issuing_key, 43, entries, NOW, NOW + timedelta(days=7))
    entry = crl.get_revoked_certificate_by_serial_number(0xD4)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc == since
    other = crl.get_revoked_certificate_by_serial_number(0xA1)
    assert other is not None
    with pytest.raises(x509.ExtensionNotFound):
        other.extensions.get_extension_for_class(x509.InvalidityDate)


def test_crl_verifies_with_issuer_key(
    revocation_list: x509.CertificateRevocationList, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    assert revocation_list.is_signature_valid(issuing_key.public_key())


def test_crl_does_not_verify_with_another_key(
    revocation_list: x509.CertificateRevocationList, root_key: ec.EllipticCurvePrivateKey
) -> None:
    assert not revocation_list.is_signature_valid(root_key.public_key())


def test_crl_lists_every_entry(revocation_list: x509.CertificateRevocationList) -> None:
    assert [(r.serial_number, r.revocation_date_utc) for r in revocation_list] == [
        (e.serial, e.revoked_at) for e in ENTRIES
    ]


def test_crl_entry_carries_its_reason(revocation_list: x509.CertificateRevocationList) -> None:
    entry = revocation_list.get_revoked_certificate_by_serial_number(0xA1)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise


def test_crl_entry_for_unspecified_has_no_reason(revocation_list: x509.CertificateRevocationList) -> None:
    entry = revocation_list.get_revoked_certificate_by_serial_number(0xB2)
    assert entry is not None
    with pytest.raises(x509.ExtensionNotFound):
        entry.extensions.get_extension_for_class(x509.CRLReason)


def test_crl_has_its_number(revocation_list: x509.CertificateRevocationList) -> None:
    assert _ext(revocation_list, x509.CRLNumber).value.crl_number == 42


def test_crl_authority_key_id_is_issuer_subject_key_id(
    revocation_list: x509.CertificateRevocationList, issuing: signing.CaIdentity
) -> None:
    issuer_ski = _ext(issuing.cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(revocation_list, x509.AuthorityKeyIdentifier).value.key_identifier == issuer_ski


def test_crl_names_issuer_and_update_times(
    revocation_list: x509.CertificateRevocationList, issuing: signing.CaIdentity
) -> None:
    assert revocation_list.issuer == issuing.cert.subject
    assert revocation_list.last_update_utc == NOW
    assert revocation_list.next_update_utc == NOW + timedelta(days=7)


def test_empty_crl_verifies(issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey) -> None:
    empty = signing.crl(issuing, issuing_key, 1, [], NOW, NOW + timedelta(days=7))
    assert len(empty) == 0
    assert empty.is_signature_valid(issuing_key.public_key())


def test_crl_refuses_unknown_reason(issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey) -> None:
    entry = signing.RevokedEntry(serial=1, revoked_at=NOW, reason="certificateHold")
    with pytest.raises(ValueError, match="certificateHold"):
        signing.crl(issuing, issuing_key, 1, [entry], NOW, NOW + timedelta(days=7))


# --- CRL shards -----------------------------------------------------------------------------

SHARDS = 16


@pytest.fixture(scope="module")
def sharded(issuing: signing.CaIdentity) -> signing.CaIdentity:
    """The issuing CA as one created with CRL shards."""
    return replace(issuing, crl_shards=SHARDS)


def _cdp_urls(cert: x509.Certificate) -> list[str]:
    points = _ext(cert, x509.CRLDistributionPoints).value
    return [name.value for point in points for name in point.full_name or []]


def test_a_leaf_is_in_the_shard_of_its_serial_mod_the_shard_count(sharded: signing.CaIdentity) -> None:
    assert sharded.shard_of(SHARDS * 1000 + 5) == 5
    assert sharded.shards() == list(range(SHARDS))


def test_an_unsharded_ca_has_one_crl(issuing: signing.CaIdentity) -> None:
    assert issuing.shard_of(12345) is None
    assert issuing.shards() == [None]


def test_a_shard_url_names_the_ca_and_the_shard(urls: signing.Urls) -> None:
    assert signing.Urls("https://pki.example.test/").crl("ca-1", 7) == "https://pki.example.test/crl/ca-1/7.crl"
    assert urls.crl("ca-1").endswith("/crl/ca-1.crl")


def test_a_leaf_of_a_sharded_ca_points_to_its_own_shard(
    p256_key: ec.EllipticCurvePrivateKey, sharded: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = _sign(p256_key.public_key(), OTHER_NAMES, sharded, issuing_key)
    assert _cdp_urls(cert) == [signing.Urls(BASE_URL).crl("issuing-1", cert.serial_number % SHARDS)]


def test_a_leaf_of_an_unsharded_ca_points_to_its_only_crl(leaf: x509.Certificate) -> None:
    assert _cdp_urls(leaf) == [signing.Urls(BASE_URL).crl("issuing-1")]


@pytest.fixture
def sharded_template(sharded: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return _template(TLS_SERVER, "ec-p256", sharded, issuing_key)


@pytest.fixture
def sharded_plan(plan: signing.LeafPlan, sharded_template: x509.Certificate) -> signing.LeafPlan:
    """A plan whose serial is in another shard than the sharded CA's template's (a random serial is in the
    same shard one time in SHARDS)."""
    serial = plan.serial - plan.serial % SHARDS + (sharded_template.serial_number + 1) % SHARDS
    return replace(plan, serial=serial)


def test_the_template_check_takes_a_leaf_with_its_own_shard_url(
    p256_key: ec.EllipticCurvePrivateKey,
    sharded: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    sharded_plan: signing.LeafPlan,
    sharded_template: x509.Certificate,
) -> None:
    template = sharded_template
    cert = _sign(p256_key.public_key(), OTHER_NAMES, sharded, issuing_key, sharded_plan)
    assert _cdp_urls(cert) != _cdp_urls(template)
    own = signing.Urls(BASE_URL).leaf_crl(sharded, sharded_plan.serial)
    assert _deviations(cert, template, p256_key.public_key(), sharded_plan, crl_url=own) == []


@pytest.mark.parametrize("wrong", ["another shard", "the unsharded CRL"])
def test_the_template_check_refuses_a_leaf_naming_another_crl(
    wrong: str,
    p256_key: ec.EllipticCurvePrivateKey,
    sharded: signing.CaIdentity,
    issuing_key: ec.EllipticCurvePrivateKey,
    sharded_plan: signing.LeafPlan,
    sharded_template: x509.Certificate,
) -> None:
    template = sharded_template
    shard = sharded.shard_of(sharded_plan.serial)
    assert shard is not None
    url = (
        signing.Urls(BASE_URL).crl("issuing-1", (shard + 1) % SHARDS)
        if wrong == "another shard"
        else signing.Urls(BASE_URL).crl("issuing-1")
    )
    cdp = x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)])
    good = _sign(p256_key.public_key(), OTHER_NAMES, sharded, issuing_key, sharded_plan)
    bad = _rebuilt(good, issuing_key, replace_ext={ExtensionOID.CRL_DISTRIBUTION_POINTS: (cdp, False)})
    own = signing.Urls(BASE_URL).leaf_crl(sharded, sharded_plan.serial)
    assert _deviations(bad, template, p256_key.public_key(), sharded_plan, crl_url=own) == [
        f"cRLDistributionPoints does not name this certificate's CRL {own}"
    ]


def test_a_shard_crl_carries_a_critical_issuing_distribution_point_naming_its_url(
    sharded: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    url = signing.Urls(BASE_URL).crl("issuing-1", 3)
    crl = signing.crl(sharded, issuing_key, 1, ENTRIES, NOW, NOW + timedelta(days=7), shard_url=url)
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value.full_name == [x509.UniformResourceIdentifier(url)]
    assert idp.value.only_contains_user_certs
    assert crl.is_signature_valid(issuing_key.public_key())


def test_an_unsharded_crl_has_no_issuing_distribution_point(revocation_list: x509.CertificateRevocationList) -> None:
    with pytest.raises(x509.ExtensionNotFound):
        revocation_list.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
