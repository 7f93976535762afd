"""Signing's certificate and CRL templates and its own policy checks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from pki_builders import BASE_URL, NOW, ORG, approved_for, make_csr, patched_csr
from services.signing import domain as signing
from shared.crypto import signing_hash

NAMES = ["www.example.internal", "api.example.internal"]
MAX_VALIDITY = 397


def _ext(cert: x509.Certificate | x509.CertificateRevocationList, kind: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


def _sign(
    csr: x509.CertificateSigningRequest,
    approved_names: list[str],
    issuer: signing.CaIdentity,
    issuer_key: ec.EllipticCurvePrivateKey,
    plan: signing.LeafPlan | None = None,
) -> x509.Certificate:
    plan = plan or signing.plan_leaf(issuer, 90, NOW)
    approved = approved_for(csr, approved_names)
    return signing.leaf_builder(approved, csr, issuer, plan, signing.Urls(BASE_URL)).sign(
        issuer_key, signing_hash(issuer_key)
    )


@pytest.fixture
def leaf(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    return _sign(make_csr(p256_key, NAMES), NAMES, issuing, issuing_key)


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


def test_leaf_key_usage_allows_key_encipherment_for_rsa(
    rsa_2048_key: rsa.RSAPrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = _sign(make_csr(rsa_2048_key, NAMES), NAMES, issuing, issuing_key)
    assert _ext(cert, x509.KeyUsage).value.key_encipherment


def test_leaf_extended_key_usage_is_server_and_client_auth(leaf: x509.Certificate) -> None:
    assert list(_ext(leaf, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]


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
    cert = _sign(csr, ["www.example.internal"], issuing, issuing_key)
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
    cert = _sign(csr, ["www.example.internal"], issuing, issuing_key)
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.internal")])
    assert _ext(cert, x509.BasicConstraints).value.ca is False


def test_leaf_common_name_is_first_approved_name(leaf: x509.Certificate) -> None:
    assert [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["www.example.internal"]


def test_leaf_with_name_too_long_for_cn_has_empty_subject_and_critical_san(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    long_name = "a" * 60 + ".example.internal"
    cert = _sign(make_csr(p256_key, [long_name], cn=None), [long_name], issuing, issuing_key)
    assert len(cert.subject) == 0
    assert _ext(cert, x509.SubjectAlternativeName).critical


def test_leaf_points_to_issuer_crl_and_certificate(leaf: x509.Certificate) -> None:
    dp = _ext(leaf, x509.CRLDistributionPoints).value
    aia = _ext(leaf, x509.AuthorityInformationAccess).value
    assert [n.value for n in dp[0].full_name] == ["https://pki.example.test/crl/issuing-1.crl"]
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, "https://pki.example.test/ca/issuing-1.crt")
    ]


def test_leaf_issuer_is_the_issuing_ca(leaf: x509.Certificate, issuing: signing.CaIdentity) -> None:
    assert leaf.issuer == issuing.cert.subject


def test_leaf_takes_serial_and_validity_from_plan(
    p256_key: ec.EllipticCurvePrivateKey, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    plan = signing.LeafPlan(serial=0x1234, not_before=NOW, not_after=NOW + timedelta(days=7))
    cert = _sign(make_csr(p256_key, NAMES), NAMES, issuing, issuing_key, plan)
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
    assert signing.policy_problems(approved_for(csr, NAMES), csr, MAX_VALIDITY) == []


def test_policy_flags_weak_key(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    csr = make_csr(rsa_1024_key, NAMES)
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, MAX_VALIDITY)) == ["key_weak"]


def test_policy_flags_csr_names_not_approved(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "evil.example.internal"])
    reasons = signing.policy_problems(approved_for(csr, ["www.example.internal"]), csr, MAX_VALIDITY)
    assert _codes(reasons) == ["name_not_approved"]
    assert "evil.example.internal" in reasons[0].message


def test_policy_flags_csr_ip_not_approved(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES, ["10.0.0.1"])
    assert _codes(signing.policy_problems(approved_for(csr, NAMES), csr, MAX_VALIDITY)) == ["name_not_approved"]


def test_policy_accepts_approved_ip(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES, ["10.0.0.1"])
    approved = approved_for(csr, NAMES, ip_addresses=["10.0.0.1"])
    assert signing.policy_problems(approved, csr, MAX_VALIDITY) == []


def test_policy_flags_validity_over_max(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, validity_days=MAX_VALIDITY + 1)
    assert _codes(signing.policy_problems(approved, csr, MAX_VALIDITY)) == ["validity_too_long"]


def test_policy_accepts_validity_of_exactly_max(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, validity_days=MAX_VALIDITY)
    assert signing.policy_problems(approved, csr, MAX_VALIDITY) == []


def test_policy_flags_zero_validity(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    approved = approved_for(csr, NAMES, validity_days=0)
    assert _codes(signing.policy_problems(approved, csr, MAX_VALIDITY)) == ["validity_too_long"]


def test_policy_flags_approval_without_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, [])
    assert _codes(signing.policy_problems(approved_for(csr, []), csr, MAX_VALIDITY)) == ["names_missing"]


def test_policy_flags_tampered_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = patched_csr(make_csr(p256_key, ["www.example.internal"]), b"www.example.internal", b"wxw.example.internal")
    reasons = signing.policy_problems(approved_for(csr, ["wxw.example.internal"]), csr, MAX_VALIDITY)
    assert _codes(reasons) == ["csr_signature_invalid"]


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
