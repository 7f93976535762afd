"""Enrollment's review of a CSR against a verified token: every reason, one at a time."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pki_builders import claims_for, csr_pem, make_csr, patched_csr, resigned_csr
from services.enrollment.domain import (
    DEFAULT_PROFILE,
    MAX_SANS,
    Approval,
    csr_der,
    dns_name_problem,
    load_csr,
    review,
)
from shared.reasons import Reason

NAMES = ["www.example.internal", "api.example.internal"]


def _codes(outcome: Approval | list[Reason]) -> list[str]:
    assert isinstance(outcome, list), f"expected reasons, got {outcome!r}"
    return [r.code for r in outcome]


def test_review_approves_a_good_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES), claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert outcome == Approval(dns_names=NAMES, validity_days=90)


def test_review_approves_a_subset_of_the_allowed_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, ["api.example.internal"]), claims_for(NAMES), DEFAULT_PROFILE, 30)
    assert outcome == Approval(dns_names=["api.example.internal"], validity_days=30)


def test_review_approves_an_ed25519_csr() -> None:
    csr = make_csr(ed25519.Ed25519PrivateKey.generate(), NAMES)
    assert isinstance(review(csr, claims_for(NAMES), DEFAULT_PROFILE, 90), Approval)


def test_review_approves_a_csr_without_common_name(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES, cn=None), claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert isinstance(outcome, Approval)


def test_review_deduplicates_names_keeping_order(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "api.example.internal", "www.example.internal"])
    outcome = review(csr, claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert isinstance(outcome, Approval)
    assert outcome.dns_names == ["www.example.internal", "api.example.internal"]


def test_review_refuses_unknown_profile(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES), claims_for(NAMES, profile="custom"), "custom", 90)
    assert _codes(outcome) == ["profile_unknown"]


def test_review_refuses_profile_other_than_the_tokens(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES), claims_for(NAMES, profile="other"), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["profile_not_allowed"]


def test_review_refuses_weak_key(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    outcome = review(make_csr(rsa_1024_key, NAMES), claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["key_weak"]


def test_review_refuses_csr_without_san(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, [], san=False), claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["names_missing"]


def test_review_refuses_csr_with_empty_san(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, []), claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["names_missing"]


def test_review_refuses_ip_addresses(p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, NAMES, ["10.0.0.1"]), claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["ip_not_allowed"]
    assert "10.0.0.1" in outcome[0].message  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("WWW.example.internal", "must be lower case", id="upper_case"),
        pytest.param("www.example.internal.", "ends with a dot", id="trailing_dot"),
        pytest.param("*.example.internal", "is a wildcard", id="wildcard"),
        pytest.param("www\x01.example.internal", "control", id="control_char"),
        pytest.param("a b.example.internal", "space", id="space"),
        pytest.param("a" * 64 + ".example.internal", "invalid label", id="label_too_long"),
        pytest.param("-www.example.internal", "invalid label '-www'", id="leading_hyphen"),
        pytest.param("www-.example.internal", "invalid label 'www-'", id="trailing_hyphen"),
        pytest.param("www..example.internal", "invalid label ''", id="empty_label"),
        pytest.param("under_score.example.internal", "invalid label 'under_score'", id="underscore"),
        pytest.param("www.*.example.internal", "invalid label '*'", id="inner_wildcard"),
        pytest.param(".".join(["a" * 63] * 4), "longer than 253", id="name_too_long"),
    ],
)
def test_review_refuses_invalid_name(name: str, why: str, p256_key: ec.EllipticCurvePrivateKey) -> None:
    outcome = review(make_csr(p256_key, [name], cn=None), claims_for([name]), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["name_invalid"]
    assert why in outcome[0].message  # type: ignore[index]


def test_review_refuses_non_ascii_u_label() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    # No builder writes a U-label, so sign one into the CSR by hand ("bxx" -> "bü", same length in UTF-8).
    csr = resigned_csr(make_csr(key, ["bxx.example.internal"]), key, b"bxx", "bü".encode())
    assert csr.is_signature_valid
    outcome = review(csr, claims_for(["bü.example.internal"]), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["name_invalid"]
    assert "A-label" in outcome[0].message  # type: ignore[index]


def test_dns_name_problem_refuses_u_label() -> None:
    assert dns_name_problem("bücher.example") is not None


def test_dns_name_problem_accepts_a_label() -> None:
    assert dns_name_problem("xn--bcher-kva.example") is None


def test_dns_name_problem_refuses_empty_name() -> None:
    assert dns_name_problem("") == "an empty DNS name"


def test_dns_name_problem_accepts_63_character_label() -> None:
    assert dns_name_problem("a" * 63 + ".example.internal") is None


def test_review_refuses_name_not_allowed_by_token(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal", "evil.example.internal"])
    outcome = review(csr, claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["name_not_allowed"]
    assert "'evil.example.internal'" in outcome[0].message  # type: ignore[index]


def test_review_refuses_common_name_not_in_sans(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = make_csr(p256_key, ["www.example.internal"], cn="other.example.internal")
    outcome = review(csr, claims_for(NAMES), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["cn_not_in_sans"]


def test_review_refuses_more_than_max_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    names = [f"h{i}.example.internal" for i in range(MAX_SANS + 1)]
    outcome = review(make_csr(p256_key, names), claims_for(names), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["too_many_names"]


def test_review_approves_exactly_max_names(p256_key: ec.EllipticCurvePrivateKey) -> None:
    names = [f"h{i}.example.internal" for i in range(MAX_SANS)]
    assert isinstance(review(make_csr(p256_key, names), claims_for(names), DEFAULT_PROFILE, 90), Approval)


def test_review_refuses_tampered_csr(p256_key: ec.EllipticCurvePrivateKey) -> None:
    # Rename "www" to "wxw" in both CN and SAN after signing: every check but the signature passes.
    csr = patched_csr(make_csr(p256_key, ["www.example.internal"]), b"www.example.internal", b"wxw.example.internal")
    outcome = review(csr, claims_for(["wxw.example.internal"]), DEFAULT_PROFILE, 90)
    assert _codes(outcome) == ["csr_signature_invalid"]


def test_review_reports_every_reason(rsa_1024_key: rsa.RSAPrivateKey) -> None:
    csr = make_csr(rsa_1024_key, ["www.example.internal", "evil.example.internal"], ["10.0.0.1"])
    outcome = review(csr, claims_for(NAMES), "custom", 90)
    assert sorted(_codes(outcome)) == sorted(
        ["profile_unknown", "key_weak", "ip_not_allowed", "name_not_allowed", "profile_not_allowed"]
    )


def test_load_csr_refuses_garbage() -> None:
    outcome = load_csr("-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgY3Ny\n-----END CERTIFICATE REQUEST-----\n")
    assert isinstance(outcome, Reason)
    assert outcome.code == "csr_malformed"


def test_load_csr_refuses_text_that_is_not_pem() -> None:
    outcome = load_csr("hello")
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
