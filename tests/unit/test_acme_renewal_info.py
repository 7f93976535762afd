"""ACME Renewal Information (RFC 9773): certificate ids and suggested windows; revocation's refusals
as ACME problems."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.acme.lifecycle import CertId, Renewal, cert_id, parse_cert_id, revocation_refusal, window
from services.acme.problems import AcmeProblem
from shared.contract.queries import StatusAnswer

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())


def _cert(serial: int, days: int = 90) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ISSUER_KEY.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(aki, critical=False)
        .sign(ISSUER_KEY, hashes.SHA256())
    )


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF00, 0x87654321, (1 << 158) + 5])
def test_a_certificate_id_names_its_certificate_and_no_other(serial: int) -> None:
    cert = _cert(serial)
    parsed = parse_cert_id(cert_id(cert))
    assert parsed == CertId(parsed.authority_key_id, f"{serial:x}") and parsed.names(cert)
    assert not parsed.names(_cert(serial + 1))


def test_the_serial_part_is_the_der_integer_value_with_its_leading_zero() -> None:
    # RFC 9773 §4.1's example: serial 0x87654321 is encoded with a leading zero octet.
    assert cert_id(_cert(0x87654321)).endswith(".AIdlQyE")


@pytest.mark.parametrize(
    "text", ["", "no-dot", "a.b.c", "YQ==.AQ", "YQ.", ".AQ", "YQ.gA", "!!.AQ", 42, None, "YQ." + "A" * 300]
)
def test_what_is_not_a_certificate_id_is_malformed(text: object) -> None:
    with pytest.raises(AcmeProblem) as info:
        parse_cert_id(text)
    assert info.value.kind == "malformed"


def _renewal(status: str = "good", remaining: float = 1 / 3) -> Renewal:
    return Renewal(StatusAnswer(serial="1", status=status), remaining)


def test_the_window_opens_when_the_profile_has_it_renewed_and_closes_halfway_to_expiry() -> None:
    cert = _cert(1, days=90)
    assert window(cert, _renewal(), NOW) == (NOW + timedelta(days=60), NOW + timedelta(days=75))
    assert window(cert, _renewal(remaining=0.5), NOW) == (NOW + timedelta(days=45), NOW + timedelta(days=67.5))
    assert window(cert, None, NOW) == window(cert, _renewal(), NOW)  # the bus not asked: the default schedule


@pytest.mark.parametrize("status", ["revoked", "destroyed"])
def test_a_revoked_certificates_window_is_in_the_past(status: str) -> None:
    start, end = window(_cert(1), _renewal(status), NOW)
    assert start < end < NOW


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        ("already_revoked", "alreadyRevoked", 400),
        ("certificate_destroyed", "alreadyRevoked", 400),
        ("reason_invalid", "badRevocationReason", 400),
        ("serial_unknown", "malformed", 404),
        ("not_authorised", "unauthorized", 403),
    ],
)
def test_revocations_refusals_are_acme_problems(code: str, kind: str, status: int) -> None:
    problem = revocation_refusal(code, f"{code}: why")
    assert (problem.kind, problem.status) == (kind, status) and code in problem.detail
