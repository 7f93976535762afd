"""Validation verdicts: chain, time and revocation status of a presented certificate."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pki_builders import BASE_URL, NOW, ORG, issue_leaf
from services.signing import domain as signing
from services.validation.domain import StatusRecord, public_status, validate

SOON = NOW + timedelta(days=1)


@pytest.fixture
def cas(root: signing.CaIdentity, issuing: signing.CaIdentity) -> dict[str, x509.Certificate]:
    return {root.ca_id: root.cert, issuing.ca_id: issuing.cert}


@pytest.fixture
def leaf(issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return issue_leaf(issuing, issuing_key, ["www.example.internal"])


def _good(cert: x509.Certificate) -> StatusRecord:
    return StatusRecord(serial=format(cert.serial_number, "x"), status="good")


def test_issued_certificate_is_good(leaf: x509.Certificate, cas: dict[str, x509.Certificate]) -> None:
    verdict = validate(leaf, cas, _good(leaf), SOON)
    assert verdict.status == "good"
    assert verdict.good


def test_verdict_names_the_chain_up_to_the_root(leaf: x509.Certificate, cas: dict[str, x509.Certificate]) -> None:
    assert validate(leaf, cas, _good(leaf), SOON).chain == ("issuing-1", "root-1")


def test_verdict_carries_the_serial_in_hex(leaf: x509.Certificate, cas: dict[str, x509.Certificate]) -> None:
    assert validate(leaf, cas, _good(leaf), SOON).serial == format(leaf.serial_number, "x")


def test_revoked_certificate_is_revoked_with_reason(leaf: x509.Certificate, cas: dict[str, x509.Certificate]) -> None:
    revoked_at = NOW + timedelta(hours=2)
    record = StatusRecord(format(leaf.serial_number, "x"), "revoked", revoked_at, "keyCompromise")
    verdict = validate(leaf, cas, record, SOON)
    assert (verdict.status, verdict.reason, verdict.revoked_at) == ("revoked", "keyCompromise", revoked_at)
    assert not verdict.good


def test_certificate_after_its_expiry_is_expired(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey, cas: dict[str, x509.Certificate]
) -> None:
    leaf = issue_leaf(issuing, issuing_key, ["www.example.internal"], validity_days=1)
    verdict = validate(leaf, cas, _good(leaf), NOW + timedelta(days=2))
    assert verdict.status == "expired"
    assert not verdict.good


def test_expired_verdict_wins_over_revoked(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey, cas: dict[str, x509.Certificate]
) -> None:
    leaf = issue_leaf(issuing, issuing_key, ["www.example.internal"], validity_days=1)
    record = StatusRecord(format(leaf.serial_number, "x"), "revoked", NOW, "superseded")
    assert validate(leaf, cas, record, NOW + timedelta(days=2)).status == "expired"


def test_certificate_before_its_start_is_not_yet_valid(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey, cas: dict[str, x509.Certificate]
) -> None:
    plan = signing.LeafPlan(
        serial=x509.random_serial_number(), not_before=NOW + timedelta(days=10), not_after=NOW + timedelta(days=20)
    )
    leaf = issue_leaf(issuing, issuing_key, ["www.example.internal"], plan=plan)
    verdict = validate(leaf, cas, _good(leaf), SOON)
    assert verdict.status == "not_yet_valid"
    assert "the certificate" in verdict.detail


def test_certificate_from_a_foreign_ca_is_untrusted(leaf: x509.Certificate, root: signing.CaIdentity) -> None:
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign = signing.CaIdentity("foreign", signing.root_certificate(foreign_key, "foreign", "Elsewhere", NOW, 365))
    stranger = issue_leaf(foreign, foreign_key, ["www.example.internal"])
    verdict = validate(stranger, {root.ca_id: root.cert}, _good(stranger), SOON)
    assert verdict.status == "untrusted"
    assert not verdict.good


def test_certificate_from_an_impostor_ca_with_the_same_name_is_untrusted(
    root: signing.CaIdentity, issuing: signing.CaIdentity, cas: dict[str, x509.Certificate]
) -> None:
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    impostor = signing.CaIdentity(
        "issuing-1",
        signing.issuing_certificate(
            impostor_key.public_key(), "issuing-1", root, impostor_key, ORG, signing.Urls(BASE_URL), NOW, 365
        ),
    )
    assert impostor.cert.subject == issuing.cert.subject
    stranger = issue_leaf(impostor, impostor_key, ["www.example.internal"])
    assert validate(stranger, cas, _good(stranger), SOON).status == "untrusted"


def test_certificate_without_status_record_is_unknown(leaf: x509.Certificate, cas: dict[str, x509.Certificate]) -> None:
    verdict = validate(leaf, cas, None, SOON)
    assert verdict.status == "unknown"
    assert verdict.chain == ("issuing-1", "root-1")


def test_expired_issuing_ca_makes_the_leaf_invalid(
    root: signing.CaIdentity, root_key: ec.EllipticCurvePrivateKey
) -> None:
    short_key = ec.generate_private_key(ec.SECP256R1())
    short = signing.CaIdentity(
        "short-1",
        signing.issuing_certificate(
            short_key.public_key(), "short-1", root, root_key, ORG, signing.Urls(BASE_URL), NOW, days=5
        ),
    )
    # A leaf that outlives its issuer (plan_leaf would cap it; a hand-made plan does not).
    plan = signing.LeafPlan(serial=x509.random_serial_number(), not_before=NOW, not_after=NOW + timedelta(days=30))
    leaf = issue_leaf(short, short_key, ["www.example.internal"], plan=plan)
    verdict = validate(leaf, {root.ca_id: root.cert, short.ca_id: short.cert}, _good(leaf), NOW + timedelta(days=10))
    assert verdict.status == "expired"
    assert "CA short-1" in verdict.detail
    assert not verdict.good


# --- what `status` answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expired", "destroyed", "answer"),
    [
        ("good", False, False, "good"),
        ("good", True, False, "expired"),
        ("revoked", False, False, "revoked"),
        ("revoked", True, False, "revoked"),
        ("revoked", False, True, "destroyed"),
        ("revoked", True, True, "destroyed"),
        ("good", True, True, "destroyed"),
    ],
)
def test_status_says_destroyed_then_revoked_then_expired(
    status: str, expired: bool, destroyed: bool, answer: str
) -> None:
    assert public_status(status, NOW if expired else None, NOW if destroyed else None) == answer


def test_status_says_expired_from_not_after_on_before_the_expired_event_arrives() -> None:
    later, second = NOW + timedelta(days=1), timedelta(seconds=1)
    assert public_status("good", None, None, later, later) == "good"  # notAfter is the last valid second
    assert public_status("good", None, None, later, later + second) == "expired"
    assert public_status("revoked", None, None, later, later + second) == "revoked"
    assert public_status("good", None, None, None, later) == "good"  # a row learnt from a revocation only


def test_a_destroyed_certificate_presented_for_validation_is_revoked_and_says_destroyed(
    leaf: x509.Certificate, cas: dict[str, x509.Certificate]
) -> None:
    record = StatusRecord(format(leaf.serial_number, "x"), "revoked", NOW, "cessationOfOperation", destroyed_at=NOW)
    verdict = validate(leaf, cas, record, SOON)
    assert verdict.status == "revoked"
    assert f"destroyed at {NOW.isoformat()}" in verdict.detail
