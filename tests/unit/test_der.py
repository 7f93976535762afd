"""The minimal DER reader used by signing's template check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.pki import der


def _cert(critical_san: bool = False) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "a.internal")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.internal")]), critical=critical_san)
        .sign(key, hashes.SHA256())
    )


def test_tbs_parts_match_what_cryptography_reads() -> None:
    cert = _cert()
    parts = der.tbs_parts(cert.tbs_certificate_bytes)
    assert parts.subject == cert.subject.public_bytes()
    assert parts.issuer == cert.issuer.public_bytes()
    assert parts.spki == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert parts.serial == b"\x02\x02\x30\x39"  # INTEGER 12345
    assert parts.unique_ids == b""
    assert [e.critical for e in parts.extensions] == [True, False]
    assert parts.extensions[0].value == x509.BasicConstraints(ca=False, path_length=None).public_bytes()
    assert parts.extensions[1].value == x509.SubjectAlternativeName([x509.DNSName("a.internal")]).public_bytes()


def test_criticality_is_read_from_the_boolean() -> None:
    assert der.tbs_parts(_cert(critical_san=True).tbs_certificate_bytes).extensions[1].critical


@pytest.mark.parametrize("cut", [0, 1, 5, 40, -1])
def test_truncated_or_garbage_der_is_a_value_error(cut: int) -> None:
    tbs = _cert().tbs_certificate_bytes
    with pytest.raises(ValueError):
        der.tbs_parts(tbs[:cut])


def test_a_non_sequence_is_refused() -> None:
    with pytest.raises(ValueError, match="SEQUENCE"):
        der.tbs_parts(b"\x04\x00")


def test_long_form_lengths_are_read() -> None:
    body = b"\x04\x82\x01\x00" + bytes(256)
    tag, start, end = der.tlv(body, 0)
    assert (tag, start, end) == (0x04, 4, 260)
