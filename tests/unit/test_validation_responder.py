"""Validation's OCSP responder lifecycle without servers: when to renew, and its keys on disk."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pki_builders import NOW, issue_leaf, make_profile
from services.signing import domain as signing
from services.validation.domain import renewal_due
from services.validation.responder import ResponderFiles
from shared.base.settings import ValidationSettings
from shared.pki.crypto import signing_hash
from shared.pki.provisioner_keys import load_or_create as load_or_create_provisioner_key

OCSP = make_profile(name="ocsp-responder", usage="ocsp")


def _responder(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey, days: int = 2, at: timedelta = timedelta(0)
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    plan = signing.plan_leaf(issuing, days, NOW + at)
    builder = signing.leaf_builder(
        OCSP, signing.Sans(("validation.example.internal",)), key.public_key(), issuing, plan, signing.Urls("http://x")
    )
    return builder.sign(issuing_key, signing_hash(issuing_key)), key


# --- renewal ------------------------------------------------------------------------------------


def test_a_fresh_certificate_is_not_due(issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey) -> None:
    cert = issue_leaf(issuing, issuing_key, ["a.example.internal"], validity_days=3)
    assert not renewal_due(cert, NOW)


def test_renewal_falls_due_when_a_third_of_the_life_is_left(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    cert = issue_leaf(issuing, issuing_key, ["a.example.internal"], validity_days=3)
    third_left = cert.not_valid_after_utc - timedelta(days=1)
    assert not renewal_due(cert, third_left - timedelta(seconds=1))
    assert renewal_due(cert, third_left + timedelta(seconds=1))
    assert renewal_due(cert, cert.not_valid_after_utc + timedelta(days=1))


# --- keys and certificates on disk ----------------------------------------------------------------


def test_a_stored_responder_is_loaded_back(
    tmp_path: Path, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    files = ResponderFiles(tmp_path / "ocsp")
    cert, key = _responder(issuing, issuing_key)
    files.save(issuing.ca_id, key, cert)
    loaded = files.newest(issuing.ca_id, issuing.cert, NOW)
    assert loaded is not None and loaded.cert == cert
    assert (tmp_path / "ocsp").stat().st_mode & 0o777 == 0o700
    [key_file] = (tmp_path / "ocsp").glob("*.key.pem")
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_the_newest_stored_responder_wins_and_expired_ones_are_pruned(
    tmp_path: Path, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    files = ResponderFiles(tmp_path)
    old, old_key = _responder(issuing, issuing_key)
    new, new_key = _responder(issuing, issuing_key, at=timedelta(days=1))
    files.save(issuing.ca_id, new_key, new)
    files.save(issuing.ca_id, old_key, old)
    loaded = files.newest(issuing.ca_id, issuing.cert, NOW + timedelta(days=1))
    assert loaded is not None and loaded.cert == new
    files.prune(old.not_valid_after_utc)
    assert len(list(tmp_path.iterdir())) == 2
    assert files.newest(issuing.ca_id, issuing.cert, new.not_valid_after_utc) is None  # expired: not served


def test_a_stored_certificate_without_its_key_or_of_another_ca_is_ignored(
    tmp_path: Path, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    files = ResponderFiles(tmp_path)
    cert, key = _responder(issuing, issuing_key)
    files.save(issuing.ca_id, key, cert)
    assert files.newest("another-ca", issuing.cert, NOW) is None
    next(tmp_path.glob("*.key.pem")).unlink()
    assert files.newest(issuing.ca_id, issuing.cert, NOW) is None


def test_a_ca_id_that_cannot_name_a_file_is_refused(
    tmp_path: Path, issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    cert, key = _responder(issuing, issuing_key)
    with pytest.raises(ValueError, match="cannot name a file"):
        ResponderFiles(tmp_path).save("../escape", key, cert)


def test_the_provisioner_key_is_created_once_mode_0600_with_its_public_half(tmp_path: Path) -> None:
    settings = ValidationSettings(ocsp_provisioner_key_file=tmp_path / "v" / "prov.key.pem")
    public = settings.ocsp_provisioner_public_key_file
    assert public == tmp_path / "v" / "prov.pub.pem"
    key = load_or_create_provisioner_key(settings.ocsp_provisioner_key_file, public)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    assert settings.ocsp_provisioner_key_file.stat().st_mode & 0o777 == 0o600
    again = load_or_create_provisioner_key(settings.ocsp_provisioner_key_file, public)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert again.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)
    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
    assert loaded.public_bytes(*raw) == key.public_key().public_bytes(*raw)
    assert b"PRIVATE" not in public.read_bytes()
