"""Key generation, CSR building and certificate helpers that touch no CA key (key policy: test_profiles.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from pki_builders import NOW
from shared.pki.crypto import (
    KEY_TYPES,
    build_csr,
    csr_names,
    generate_key,
    key_pem,
    load_spki,
    serial_hex,
    sign_message,
    signing_hash,
    spki_der,
    spki_sha256,
    verify_message,
)


def _self_signed(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "serial test")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("key_type", "curve"), [("ec-p256", "secp256r1"), ("ec-p384", "secp384r1")], ids=["ec-p256", "ec-p384"]
)
def test_generate_key_makes_the_named_curve(key_type: str, curve: str) -> None:
    key = generate_key(key_type)  # type: ignore[arg-type]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == curve


def test_generate_key_makes_ed25519() -> None:
    assert isinstance(generate_key("ed25519"), ed25519.Ed25519PrivateKey)


def test_generate_key_refuses_unknown_type() -> None:
    with pytest.raises(ValueError, match="ec-p256"):
        generate_key("dsa-1024")  # type: ignore[arg-type]


def test_signing_hash_is_sha256_for_p256(p256_key: ec.EllipticCurvePrivateKey) -> None:
    assert isinstance(signing_hash(p256_key), hashes.SHA256)


def test_signing_hash_is_sha384_for_p384() -> None:
    assert isinstance(signing_hash(ec.generate_private_key(ec.SECP384R1())), hashes.SHA384)


def test_signing_hash_is_none_for_ed25519() -> None:
    assert signing_hash(ed25519.Ed25519PrivateKey.generate()) is None


def test_build_csr_names_round_trip(p256_key: ec.EllipticCurvePrivateKey) -> None:
    pem = build_csr(p256_key, ["www.example.internal", "api.example.internal"], ["10.0.0.1", "2001:db8::1"])
    csr = x509.load_pem_x509_csr(pem)
    assert csr_names(csr) == (["www.example.internal", "api.example.internal"], ["10.0.0.1", "2001:db8::1"])


def test_build_csr_uses_first_name_as_common_name(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = x509.load_pem_x509_csr(build_csr(p256_key, ["www.example.internal", "api.example.internal"]))
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["www.example.internal"]


def test_build_csr_is_signed_by_its_key(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = x509.load_pem_x509_csr(build_csr(p256_key, ["www.example.internal"]))
    assert csr.is_signature_valid
    assert spki_sha256(csr.public_key()) == spki_sha256(p256_key.public_key())


def test_build_csr_with_ed25519_key() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    csr = x509.load_pem_x509_csr(build_csr(key, ["www.example.internal"]))
    assert csr.is_signature_valid


def test_csr_names_of_csr_without_san_is_empty(p256_key: ec.EllipticCurvePrivateKey) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.internal")]))
        .sign(p256_key, hashes.SHA256())
    )
    assert csr_names(csr) == ([], [])


@pytest.mark.parametrize(
    ("serial", "expected"), [(0xABC, "abc"), (0x0F, "f"), (1, "1"), (2**158 + 10, "4" + "0" * 38 + "a")]
)
def test_serial_hex_is_lower_case_without_leading_zeros(serial: int, expected: str) -> None:
    assert serial_hex(_self_signed(serial)) == expected


def test_spki_sha256_is_stable_for_a_key(p256_key: ec.EllipticCurvePrivateKey) -> None:
    fingerprint = spki_sha256(p256_key.public_key())
    assert fingerprint == spki_sha256(p256_key.public_key())
    assert len(fingerprint) == 64


def test_key_pem_with_passphrase_is_encrypted(p256_key: ec.EllipticCurvePrivateKey) -> None:
    pem = key_pem(p256_key, b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in pem
    loaded = serialization.load_pem_private_key(pem, b"correct horse")
    assert spki_sha256(loaded.public_key()) == spki_sha256(p256_key.public_key())  # type: ignore[arg-type]


def test_key_pem_without_passphrase_is_plain(p256_key: ec.EllipticCurvePrivateKey) -> None:
    assert key_pem(p256_key).startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_sign_message_verifies_with_the_public_key(key_type: str) -> None:
    key = generate_key(key_type)  # type: ignore[arg-type]
    assert verify_message(key.public_key(), sign_message(key, b"message"), b"message")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_signature_does_not_verify_another_message(key_type: str) -> None:
    key = generate_key(key_type)  # type: ignore[arg-type]
    assert not verify_message(key.public_key(), sign_message(key, b"message"), b"messagf")


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_a_signature_does_not_verify_under_another_key_of_the_same_type(key_type: str) -> None:
    key, other = generate_key(key_type), generate_key(key_type)  # type: ignore[arg-type]
    assert not verify_message(other.public_key(), sign_message(key, b"message"), b"message")


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 64, b"not a signature"], ids=["empty", "zeros", "text"])
@pytest.mark.parametrize("key_type", ["ec-p256", "ed25519", "rsa-2048"])
def test_a_malformed_signature_does_not_verify(key_type: str, garbage: bytes) -> None:
    assert not verify_message(generate_key(key_type).public_key(), garbage, b"message")  # type: ignore[arg-type]


def test_ecdsa_p384_signs_with_sha384() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    key.public_key().verify(sign_message(key, b"message"), b"message", ec.ECDSA(hashes.SHA384()))


def test_load_spki_round_trips(p256_key: ec.EllipticCurvePrivateKey) -> None:
    der = spki_der(p256_key.public_key())
    assert spki_der(load_spki(der)) == der


def test_load_spki_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        load_spki(b"not a key")
