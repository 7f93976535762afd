"""Enrollment's review of a CSR against a verified token and a profile: every reason, one at a time."""

from __future__ import annotations

from collections.abc import Sequence

import hostile
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki_builders import TLS_SERVER, claims_for, csr_pem, make_csr, make_profile, patched_csr, shipped_profiles
from services.enrollment.domain import (
    Approval,
    Names,
    check_csr,
    csr_der,
    judge,
    load_csr,
    requested_names,
    review,
)
from shared.contract.profiles import Profile
from shared.contract.reasons import Reason
from shared.pki.crypto import spki_sha256

NAMES = ["www.example.internal", "api.example.internal"]
ONE = ["app.example.internal"]
IPS = make_profile(name="svc", usage="both", allow_ip_sans=True, ip_ranges=["10.0.0.0/8", "fd00::/8"])
EMAILS = make_profile(name="svc", usage="both", allow_emails=True)


def _codes(outcome: Approval | list[Reason]) -> list[str]:
    assert isinstance(outcome, list), f"expected reasons, got {outcome!r}"
    return [r.code for r in outcome]


def _load(pem: str) -> x509.CertificateSigningRequest:
    csr = load_csr(pem)
    assert not isinstance(csr, Reason), csr
    return csr


def _review(
    pem: str | x509.CertificateSigningRequest,
    token_names: Sequence[str],
    profile: Profile = TLS_SERVER,
    days: int | None = None,
    blocked: frozenset[str] = frozenset(),
) -> Approval | list[Reason]:
    """Review `pem` under `profile` with a token for that profile allowing `token_names`."""
    csr = _load(pem) if isinstance(pem, str) else pem
    return review(csr, claims_for(list(token_names), profile=profile.name), profile, days, blocked)


def _with_extensions(key: ec.EllipticCurvePrivateKey, *extensions: x509.ExtensionType) -> str:
    return hostile.csr_for(key, ONE, extensions=[(e, False) for e in extensions])


def _key_usage(**bits: bool) -> x509.KeyUsage:
    fields = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{f: bits.get(f, False) for f in fields})


# --- approvals ----------------------------------------------------------------------------------


def test_review_approves_a_good_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES), claims_for(NAMES), TLS_SERVER, 90)
    assert outcome == Approval(dns_names=NAMES, validity_days=90)


def test_review_uses_the_profiles_default_validity(p256_key: ec.EllipticCurvePrivateKey) -> None:
    profile = make_profile(default_validity_days=14, max_validity_days=30)
    outcome = review(make_csr(p256_key, NAMES), claims_for(NAMES), profile, None)
    assert outcome == Approval(dns_names=NAMES, validity_days=14)


def test_review_approves_exactly_the_max_validity(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = _review(make_csr(p256_key, NAMES), NAMES, days=TLS_SERVER.max_validity_days)
    assert isinstance(outcome, Approval) and outcome.validity_days == 90


def test_review_approves_a_subset_of_the_allowed_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, ["api.example.internal"]), claims_for(NAMES), TLS_SERVER, 30)
    assert outcome == Approval(dns_names=["api.example.internal"], validity_days=30)


def test_review_approves_names_under_every_suffix_of_the_profile(p256_key: ec.EllipticCurvePrivateKey) -> None:
    names = ["example.internal", "a.b.corp.internal"]
    assert isinstance(_review(make_csr(p256_key, names), names), Approval)


@pytest.mark.parametrize(
    "key",
    [
        lambda: ed25519.Ed25519PrivateKey.generate(),
        lambda: ec.generate_private_key(ec.SECP384R1()),
    ],
    ids=["ed25519", "p384"],
)
def test_review_approves_other_key_types(key: object) -> None:
    csr = make_csr(key(), NAMES)  # type: ignore[operator]
    assert isinstance(_review(csr, NAMES), Approval)


def test_review_approves_rsa_2048(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    assert isinstance(_review(make_csr(rsa_2048_key, NAMES), NAMES), Approval)


def test_review_approves_a_csr_without_common_name(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES, cn=None), claims_for(NAMES), TLS_SERVER, 90)
    assert isinstance(outcome, Approval)


def test_review_approves_a_common_name_that_is_an_ip_san() -> None:
    pem = hostile.csr_for(hostile.process_key(), ONE, ips=["10.0.0.1"], common_name="10.0.0.1")
    assert isinstance(_review(pem, [*ONE, "10.0.0.1"], IPS), Approval)


def test_review_deduplicates_names_keeping_order(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "api.example.internal", "www.example.internal"])
    outcome = review(csr, claims_for(NAMES), TLS_SERVER, 90)
    assert isinstance(outcome, Approval)
    assert outcome.dns_names == ["www.example.internal", "api.example.internal"]


def test_review_deduplicates_ips_and_emails() -> None:
    profile = make_profile(name="svc", usage="both", allow_ip_sans=True, allow_emails=True)
    pem = hostile.csr_for(
        hostile.process_key(),
        ONE,
        ips=["10.0.0.2", "10.0.0.1", "10.0.0.2"],
        emails=["b@example.internal", "a@example.internal", "b@example.internal"],
    )
    outcome = _review(pem, [*ONE, "10.0.0.1", "10.0.0.2", "a@example.internal", "b@example.internal"], profile)
    assert outcome == Approval(
        dns_names=ONE,
        validity_days=profile.default_validity_days,
        ip_addresses=("10.0.0.2", "10.0.0.1"),
        emails=("b@example.internal", "a@example.internal"),
    )


def test_review_approves_the_shipped_tls_server_profile(p256_key: ec.EllipticCurvePrivateKey) -> None:
    profile = shipped_profiles()["tls-server"]
    outcome = _review(make_csr(p256_key, ["web.prod.internal"]), ["web.prod.internal"], profile)
    assert outcome == Approval(dns_names=["web.prod.internal"], validity_days=30)


# --- load_csr: csr_malformed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pem",
    [
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n",
        hostile.garbage_bytes(),
        hostile.truncated_pem(),
        hostile.bad_version(),
        hostile.csr_for(hostile.process_key(), hostile.NAMES) + "\x00",
        hostile.csr_for(hostile.process_key(), hostile.NAMES) + " " * (256 * 1024),
    ],
    ids=["not_pem", "not_a_csr", "garbage", "truncated", "bad_version", "nul", "oversize"],
)
def test_load_csr_refuses_malformed(pem: str) -> None:
    outcome = load_csr(pem)
    assert isinstance(outcome, Reason)
    assert outcome.code == "csr_malformed"


def test_load_csr_reads_pem(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    loaded = load_csr(csr_pem(csr))
    assert not isinstance(loaded, Reason)
    assert loaded == csr


def test_csr_der_is_the_der_encoding(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, NAMES)
    assert csr_der(csr) == csr.public_bytes(serialization.Encoding.DER)


def test_review_refuses_an_unreadable_subject() -> None:
    assert _codes(_review(hostile.undecodable_common_name(ONE), ONE)) == ["csr_malformed"]


@pytest.mark.parametrize(
    "pem",
    [
        hostile.multi_valued_extension_request(ONE),
        hostile.duplicate_san(ONE, ["evil.example.internal"]),
        hostile.non_utf8_name([b"b\xfccher.example.internal"]),
    ],
    ids=["multi_valued", "duplicate_san", "non_utf8"],
)
def test_review_refuses_unreadable_extensions(pem: str) -> None:
    codes = _codes(_review(pem, [*ONE, "evil.example.internal"]))
    assert "csr_malformed" in codes
    assert set(codes) <= {"csr_malformed", "name_invalid"}


def test_review_reports_unreadable_extensions_once_as_csr_malformed() -> None:
    assert _codes(_review(hostile.multi_valued_extension_request(ONE), ONE)) == ["csr_malformed"]


# --- signature and key ----------------------------------------------------------------------------


def test_review_refuses_tampered_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    # Rename "www" to "wxw" in both CN and SAN after signing: every check but the signature passes.
    csr = patched_csr(make_csr(p256_key, ["www.example.internal"]), b"www.example.internal", b"wxw.example.internal")
    outcome = review(csr, claims_for(["wxw.example.internal"]), TLS_SERVER, 90)
    assert _codes(outcome) == ["csr_signature_invalid"]


@pytest.mark.parametrize(
    "pem", [hostile.bad_signature(ONE), hostile.unknown_signature_algorithm(ONE)], ids=["bit_flip", "unknown_alg"]
)
def test_review_refuses_a_signature_that_does_not_verify(pem: str) -> None:
    assert _codes(_review(pem, ONE)) == ["csr_signature_invalid"]


@pytest.mark.parametrize(
    ("pem", "why"),
    [
        (hostile.unsupported_curve(ONE, "secp256k1"), "secp256k1"),
        (hostile.unsupported_curve(ONE, "secp521r1"), "secp521r1"),
        (hostile.csr_for(ed448.Ed448PrivateKey.generate(), ONE), "Ed448"),
        (hostile.unknown_key_algorithm(ONE), "Unknown key type"),
        (hostile.unknown_curve(ONE), "not supported"),
        (hostile.point_not_on_curve(ONE), "Invalid key"),
    ],
    ids=["secp256k1", "secp521r1", "ed448", "unknown_key_algorithm", "unknown_curve", "point_not_on_curve"],
)
def test_review_refuses_unsupported_key(pem: str, why: str) -> None:
    outcome = _review(pem, ONE)
    assert _codes(outcome) == ["key_unsupported"]
    assert why in outcome[0].message  # type: ignore[index]


def test_review_refuses_weak_key() -> None:
    assert _codes(_review(hostile.rsa_1024(ONE), ONE)) == ["key_weak"]


def test_review_refuses_rsa_under_the_profiles_minimum(rsa_2048_key: rsa.RSAPrivateKey) -> None:
    profile = make_profile(min_rsa_bits=3072)
    outcome = _review(make_csr(rsa_2048_key, ONE), ONE, profile)
    assert _codes(outcome) == ["key_weak"]
    assert "3072" in outcome[0].message  # type: ignore[index]


def test_review_refuses_rsa_exponent_3() -> None:
    key = rsa.generate_private_key(3, 2048)
    outcome = _review(make_csr(key, ONE), ONE)
    assert _codes(outcome) == ["key_weak"]
    assert "65537" in outcome[0].message  # type: ignore[index]


def test_review_refuses_key_type_not_in_profile() -> None:
    profile = make_profile(key_types=["ec-p256", "ec-p384"])
    outcome = _review(make_csr(ed25519.Ed25519PrivateKey.generate(), ONE), ONE, profile)
    assert _codes(outcome) == ["key_type_not_allowed"]
    assert "ed25519" in outcome[0].message  # type: ignore[index]


def test_review_refuses_p256_under_shipped_high_assurance(p256_key: ec.EllipticCurvePrivateKey) -> None:
    profile = shipped_profiles()["high-assurance"]
    assert _codes(_review(make_csr(p256_key, ["db.prod.internal"]), ["db.prod.internal"], profile)) == [
        "key_type_not_allowed"
    ]


def test_review_refuses_blocked_key(p256_key: ec.EllipticCurvePrivateKey) -> None:
    blocked = frozenset({"00" * 32, spki_sha256(p256_key.public_key())})
    outcome = _review(make_csr(p256_key, ONE), ONE, blocked=blocked)
    assert _codes(outcome) == ["key_blocked"]
    assert "generate a new key" in outcome[0].message  # type: ignore[index]


def test_review_approves_a_key_that_is_not_blocked(p256_key: ec.EllipticCurvePrivateKey) -> None:
    other = spki_sha256(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert isinstance(_review(make_csr(p256_key, ONE), ONE, blocked=frozenset({other})), Approval)


# --- names ----------------------------------------------------------------------------------------


def test_review_refuses_csr_without_san(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, [], san=False), claims_for(NAMES), TLS_SERVER, 90)
    assert _codes(outcome) == ["names_missing"]


def test_review_refuses_csr_with_empty_san() -> None:
    assert _codes(_review(hostile.empty_san(), ONE)) == ["names_missing"]


def test_review_refuses_ip_only_san() -> None:
    pem = hostile.csr_for(hostile.process_key(), [], ips=["10.0.0.1"], common_name=None)
    assert _codes(_review(pem, ["10.0.0.1"], IPS)) == ["names_missing"]


def test_review_refuses_more_than_max_names() -> None:
    names = [f"host-{i:04d}.example.internal" for i in range(TLS_SERVER.max_sans + 1)]
    outcome = _review(hostile.many_sans(TLS_SERVER.max_sans + 1, "example.internal"), names)
    assert _codes(outcome) == ["too_many_names"]


def test_review_refuses_too_many_names_without_judging_each() -> None:
    # 1000 names outside the token and the profile: one reason, not a thousand.
    outcome = _review(hostile.many_sans(1000, "example.com"), ONE)
    assert _codes(outcome) == ["too_many_names"]


def test_review_counts_ips_and_emails_against_max_sans() -> None:
    profile = make_profile(name="svc", usage="both", allow_ip_sans=True, allow_emails=True, max_sans=2)
    pem = hostile.csr_for(hostile.process_key(), ONE, ips=["10.0.0.1"], emails=["ops@example.internal"])
    assert _codes(_review(pem, [*ONE, "10.0.0.1", "ops@example.internal"], profile)) == ["too_many_names"]


def test_review_approves_exactly_max_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    names = [f"h{i}.example.internal" for i in range(TLS_SERVER.max_sans)]
    assert isinstance(review(make_csr(p256_key, names), claims_for(names), TLS_SERVER, 90), Approval)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("good.example.internal\x00.evil.test", "NUL"),
        ("bücher.example.internal", "A-labels"),
        ("app.example.internal.", "ends with a dot"),
        ("app\t.example.internal", "control character"),
        ("bell\x07.example.internal", "control character"),
        ("a b.example.internal", "space"),
        ("WWW.example.internal", "lower case"),
        ("a" * 64 + ".example.internal", "at most 63"),
        ("a" * 300 + ".example.internal", "at most 253"),
        (".".join(["a" * 63] * 4 + ["example", "internal"]), "at most 253"),
        ("-www.example.internal", "invalid label '-www'"),
        ("www-.example.internal", "invalid label 'www-'"),
        ("www..example.internal", "invalid label ''"),
        ("under_score.example.internal", "invalid label 'under_score'"),
        ("www.*.example.internal", "invalid label '*'"),
        ("xn--zz.example.internal", "A-label"),
        ("ab--cd.example.internal", "positions 3-4"),
    ],
    ids=[
        "nul",
        "u_label",
        "trailing_dot",
        "tab",
        "bel",
        "space",
        "upper_case",
        "label_64",
        "label_300",
        "name_too_long",
        "leading_hyphen",
        "trailing_hyphen",
        "empty_label",
        "underscore",
        "inner_wildcard",
        "bad_a_label",
        "reserved_hyphens",
    ],
)
def test_review_refuses_invalid_name(name: str, why: str) -> None:
    outcome = _review(hostile.raw_san_csr(hostile.process_key(), [name], common_name=None), [name])
    assert _codes(outcome) == ["name_invalid"]
    assert why in outcome[0].message  # type: ignore[index]


def test_review_approves_a_label(p256_key: ec.EllipticCurvePrivateKey) -> None:
    name = "xn--bcher-kva.example.internal"
    assert isinstance(_review(make_csr(p256_key, [name]), [name]), Approval)


@pytest.mark.parametrize("name", ["www.example.com", "internal", "evilexample.internal", "example.internal.evil"])
def test_review_refuses_name_not_in_profile(name: str) -> None:
    outcome = _review(hostile.csr_for(hostile.process_key(), [name]), [name])
    assert _codes(outcome) == ["name_not_in_profile"]
    assert name in outcome[0].message  # type: ignore[index]


def test_review_refuses_wildcard() -> None:
    outcome = _review(hostile.wildcard(["*.example.internal"]), ["*.example.internal"])
    assert _codes(outcome) == ["wildcard_not_allowed"]


def test_review_approves_wildcard_when_the_profile_allows_it() -> None:
    profile = make_profile(allow_wildcards=True)
    outcome = _review(hostile.wildcard(["*.example.internal"]), ["*.example.internal"], profile)
    assert isinstance(outcome, Approval) and outcome.dns_names == ["*.example.internal"]


def test_review_refuses_wildcard_outside_the_profile_even_when_allowed() -> None:
    profile = make_profile(allow_wildcards=True)
    assert _codes(_review(hostile.wildcard(["*.example.com"]), ["*.example.com"], profile)) == ["name_not_in_profile"]


def test_review_refuses_ip_addresses(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = _review(make_csr(p256_key, NAMES, ["10.0.0.1"]), [*NAMES, "10.0.0.1"])
    assert _codes(outcome) == ["ip_not_allowed"]
    assert "10.0.0.1" in outcome[0].message  # type: ignore[index]


@pytest.mark.parametrize("ip", ["10.0.0.1", "10.200.3.4", "fd00::1"])
def test_review_approves_ip_inside_the_profiles_ranges(ip: str) -> None:
    outcome = _review(hostile.ip_san(ONE, [ip]), [*ONE, ip], IPS)
    assert isinstance(outcome, Approval)
    assert outcome.ip_addresses == (ip,)


@pytest.mark.parametrize("ip", ["192.168.1.1", "8.8.8.8", "2001:db8::1", "::1"])
def test_review_refuses_ip_outside_the_profiles_ranges(ip: str) -> None:
    outcome = _review(hostile.ip_san(ONE, [ip]), [*ONE, ip], IPS)
    assert _codes(outcome) == ["ip_not_allowed"]
    assert "10.0.0.0/8" in outcome[0].message  # type: ignore[index]


def test_review_refuses_emails() -> None:
    email = "ops@example.internal"
    assert _codes(_review(hostile.email_san(ONE, [email]), [*ONE, email])) == ["email_not_allowed"]


def test_review_approves_email_when_the_profile_allows_it() -> None:
    email = "ops@example.internal"
    outcome = _review(hostile.email_san(ONE, [email]), [*ONE, email], EMAILS)
    assert isinstance(outcome, Approval) and outcome.emails == (email,)


def test_review_refuses_email_outside_the_profile() -> None:
    email = "ops@example.com"
    assert _codes(_review(hostile.email_san(ONE, [email]), [*ONE, email], EMAILS)) == ["name_not_in_profile"]


@pytest.mark.parametrize(
    "entry",
    [
        x509.UniformResourceIdentifier("spiffe://example.internal/ns/prod/sa/web"),
        x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
        x509.DirectoryName(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "app.example.internal")])),
        x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x03a@b"),
    ],
    ids=["uri", "registered_id", "directory_name", "other_name"],
)
def test_review_refuses_name_types_it_does_not_certify(
    p256_key: ec.EllipticCurvePrivateKey, entry: x509.GeneralName
) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(ONE[0]), entry]), critical=False)
        .sign(p256_key, hashes.SHA256())
    )
    outcome = _review(csr, ONE)
    assert _codes(outcome) == ["name_type_not_allowed"]
    assert type(entry).__name__ in outcome[0].message  # type: ignore[index]


def test_review_refuses_common_name_not_in_sans() -> None:
    outcome = _review(hostile.cn_not_in_sans(ONE, "other.example.internal"), [*ONE, "other.example.internal"])
    assert _codes(outcome) == ["cn_not_in_sans"]
    assert "other.example.internal" in outcome[0].message  # type: ignore[index]


def test_review_refuses_common_name_differing_in_case() -> None:
    outcome = _review(hostile.cn_not_in_sans(ONE, "APP.example.internal"), ONE)
    assert _codes(outcome) == ["cn_not_in_sans"]


def test_requested_names_reads_each_kind() -> None:
    pem = hostile.csr_for(hostile.process_key(), ONE, ips=["10.0.0.1", "::1"], emails=["ops@example.internal"])
    assert requested_names(_load(pem)) == Names(dns=ONE, ips=["10.0.0.1", "::1"], emails=["ops@example.internal"])


def test_requested_names_of_csr_without_san_is_empty(p256_key: ec.EllipticCurvePrivateKey) -> None:
    assert requested_names(make_csr(p256_key, [], san=False)) == Names([], [], [])


# --- requested extensions -------------------------------------------------------------------------


def test_review_refuses_a_ca_basic_constraints_request() -> None:
    outcome = _review(hostile.ca_extension_requested(ONE), ONE)
    assert _codes(outcome) == ["extension_not_allowed"]
    assert "2.5.29.19" in outcome[0].message  # type: ignore[index]


@pytest.mark.parametrize("critical", [False, True])
def test_review_refuses_an_unknown_extension_request(critical: bool) -> None:
    outcome = _review(hostile.unknown_extension_requested(ONE, critical=critical), ONE)
    assert _codes(outcome) == ["extension_not_allowed"]
    assert hostile.PRIVATE_OID in outcome[0].message  # type: ignore[index]


@pytest.mark.parametrize(
    ("usage", "ekus"),
    [
        ("server", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("client", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("both", [ExtendedKeyUsageOID.CODE_SIGNING]),
        ("both", [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),
        ("both", [ExtendedKeyUsageOID.OCSP_SIGNING]),
        ("ocsp", [ExtendedKeyUsageOID.SERVER_AUTH]),
    ],
    ids=[
        "client_on_server",
        "both_on_server",
        "server_on_client",
        "code_signing",
        "any_eku",
        "ocsp_on_tls",
        "tls_on_ocsp",
    ],
)
def test_review_refuses_an_eku_the_profile_does_not_give(usage: str, ekus: list[x509.ObjectIdentifier]) -> None:
    profile = make_profile(name="p", usage=usage)  # type: ignore[arg-type]
    outcome = _review(_with_extensions(hostile.process_key(), x509.ExtendedKeyUsage(ekus)), ONE, profile)
    assert _codes(outcome) == ["extension_not_allowed"]
    assert "extended key usages" in outcome[0].message  # type: ignore[index]


@pytest.mark.parametrize("bit", ["key_cert_sign", "crl_sign"])
def test_review_refuses_a_ca_key_usage_request(bit: str) -> None:
    usage = _key_usage(digital_signature=True, **{bit: True})
    assert _codes(_review(_with_extensions(hostile.process_key(), usage), ONE)) == ["extension_not_allowed"]


@pytest.mark.parametrize(
    ("usage", "extensions"),
    [
        ("server", [_key_usage(digital_signature=True), x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])]),
        ("client", [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])]),
        (
            "both",
            [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])],
        ),
        ("server", [_key_usage(digital_signature=True, key_encipherment=True)]),
        ("server", [x509.BasicConstraints(ca=False, path_length=None)]),
        ("server", [x509.SubjectKeyIdentifier(b"\x01" * 20)]),
        ("ocsp", [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), x509.OCSPNoCheck()]),
    ],
    ids=["ku_and_server_eku", "client_eku", "both_ekus", "key_encipherment", "not_ca", "ski", "ocsp_signing"],
)
def test_review_accepts_harmless_extension_requests(usage: str, extensions: list[x509.ExtensionType]) -> None:
    profile = make_profile(name="p", usage=usage)  # type: ignore[arg-type]
    assert isinstance(_review(_with_extensions(hostile.process_key(), *extensions), ONE, profile), Approval)


# --- validity, token ------------------------------------------------------------------------------


def test_review_refuses_validity_over_the_profiles_max(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = _review(make_csr(p256_key, NAMES), NAMES, days=TLS_SERVER.max_validity_days + 1)
    assert _codes(outcome) == ["validity_too_long"]
    assert "1..90" in outcome[0].message  # type: ignore[index]


@pytest.mark.parametrize("days", [0, -1])
def test_review_refuses_validity_under_one_day(p256_key: ec.EllipticCurvePrivateKey, days: int) -> None:
    assert _codes(_review(make_csr(p256_key, NAMES), NAMES, days=days)) == ["validity_invalid"]


def test_review_refuses_profile_other_than_the_tokens(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES), claims_for(NAMES, profile="tls-client"), TLS_SERVER, 30)
    assert _codes(outcome) == ["profile_not_allowed"]
    assert "tls-client" in outcome[0].message  # type: ignore[index]


def test_review_refuses_name_not_allowed_by_token(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "evil.example.internal"])
    outcome = review(csr, claims_for(NAMES), TLS_SERVER, 90)
    assert _codes(outcome) == ["name_not_allowed"]
    assert "'evil.example.internal'" in outcome[0].message  # type: ignore[index]


def test_review_refuses_ip_and_email_not_allowed_by_token() -> None:
    profile = make_profile(name="svc", usage="both", allow_ip_sans=True, allow_emails=True)
    pem = hostile.csr_for(hostile.process_key(), ONE, ips=["10.0.0.1"], emails=["ops@example.internal"])
    outcome = _review(pem, ONE, profile)
    assert _codes(outcome) == ["name_not_allowed", "name_not_allowed"]
    assert "'10.0.0.1'" in outcome[0].message and "'ops@example.internal'" in outcome[1].message  # type: ignore[index]


def test_review_reports_a_duplicated_name_not_allowed_once(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["evil.example.internal", "evil.example.internal"])
    assert _codes(_review(csr, ONE)) == ["name_not_allowed"]


def test_review_reports_every_reason(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    csr = make_csr(rsa_1024_key, ["www.example.internal", "evil.example.internal"], ["10.0.0.1"])
    outcome = review(csr, claims_for(NAMES, profile="other"), TLS_SERVER, 91)
    assert sorted(_codes(outcome)) == sorted(
        [
            "key_weak",
            "validity_too_long",
            "ip_not_allowed",
            "profile_not_allowed",
            "name_not_allowed",
            "name_not_allowed",
        ]
    )


# --- judge and check_csr --------------------------------------------------------------------------


def test_judge_ignores_the_token(p256_key: ec.EllipticCurvePrivateKey) -> None:
    # No token at all: names any token would have had to allow are judged by the profile alone.
    outcome = judge(make_csr(p256_key, ["anything.corp.internal"]), TLS_SERVER, None)
    assert outcome == Approval(dns_names=["anything.corp.internal"], validity_days=TLS_SERVER.default_validity_days)


def test_judge_still_applies_the_profile(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    outcome = judge(make_csr(rsa_1024_key, ["www.example.com"]), TLS_SERVER, 91)
    assert sorted(_codes(outcome)) == ["key_weak", "name_not_in_profile", "validity_too_long"]


def test_judge_still_refuses_blocked_keys(p256_key: ec.EllipticCurvePrivateKey) -> None:
    blocked = frozenset({spki_sha256(p256_key.public_key())})
    assert _codes(judge(make_csr(p256_key, ONE), TLS_SERVER, None, blocked)) == ["key_blocked"]


def test_check_csr_judges_only_the_csr_itself(p256_key: ec.EllipticCurvePrivateKey) -> None:
    # Names are not check_csr's business: a name outside the profile passes, a CA request does not.
    assert check_csr(make_csr(p256_key, ["www.example.com"]), TLS_SERVER, frozenset()) == []
    assert [r.code for r in check_csr(_load(hostile.ca_extension_requested(ONE)), TLS_SERVER, frozenset())] == [
        "extension_not_allowed"
    ]
