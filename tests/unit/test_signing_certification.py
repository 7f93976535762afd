"""What signing checks before adopting an issuing CA certificate the offline root ceremony made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.signing import ceremony, domain
from shared.pki.crypto import spki_sha256

NOW = datetime(2026, 1, 1, tzinfo=UTC)
URLS = domain.Urls("http://pki.example.test")


def _root(ca_id: str = "root1") -> tuple[ec.EllipticCurvePrivateKey, domain.CaIdentity]:
    key = ec.generate_private_key(ec.SECP384R1())
    return key, domain.CaIdentity(ca_id, domain.root_certificate(key, ca_id, "Certbus Test", NOW, 3650))


def test_an_issuing_ca_certificate_from_the_root_for_signing_s_own_key_is_adopted() -> None:
    root_key, root = _root()
    own = ec.generate_private_key(ec.SECP384R1()).public_key()
    cert = domain.issuing_certificate(own, "issuing1", root, root_key, "Certbus Test", URLS, NOW, 365)
    assert domain.certification_problems(cert, root.cert, own, NOW) == []


def test_another_key_another_root_a_root_certificate_or_an_expired_one_is_refused() -> None:
    root_key, root = _root()
    own = ec.generate_private_key(ec.SECP384R1()).public_key()
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    for_other = domain.issuing_certificate(other, "issuing1", root, root_key, "Certbus Test", URLS, NOW, 365)
    assert domain.certification_problems(for_other, root.cert, own, NOW) == [
        "it certifies another key than this issuing CA's"
    ]

    # Same subject, another key: the name matches, the signature does not.
    impostor_key, impostor = _root()
    forged = domain.issuing_certificate(own, "issuing1", impostor, impostor_key, "Certbus Test", URLS, NOW, 365)
    assert domain.certification_problems(forged, root.cert, own, NOW) == [
        "its signature does not verify with the root's key"
    ]
    _, elsewhere = _root("root2")
    assert "its issuer" in domain.certification_problems(forged, elsewhere.cert, own, NOW)[0]

    # The root's own certificate, offered for the root's key: signed by it, but pathlen 1.
    problems = domain.certification_problems(root.cert, root.cert, root_key.public_key(), NOW)
    assert problems == ["it is not an issuing CA's certificate (basicConstraints ca=True, pathlen 0)"]

    cert = domain.issuing_certificate(own, "issuing1", root, root_key, "Certbus Test", URLS, NOW, 30)
    assert domain.certification_problems(cert, root.cert, own, NOW + timedelta(days=31)) == [
        "it is not valid now (from 2025-12-31 to 2026-01-31)"
    ]


def test_the_csr_signing_makes_for_an_offline_root_is_one_the_ceremony_certifies() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    csr = domain.issuing_csr(key, "issuing1", "Certbus Test")
    assert ceremony.csr_problems(csr) == []
    assert "Issuing CA issuing1" in csr.subject.rfc4514_string()


def test_a_root_from_the_ceremony_is_adopted_only_self_signed_a_ca_for_the_named_key_and_valid_now() -> None:
    root_key, root = _root()
    spki = spki_sha256(root_key.public_key())
    assert domain.root_adoption_problems(root.cert, spki, NOW) == []
    assert domain.root_adoption_problems(root.cert, "0" * 64, NOW) == [
        "its key is not the one the command names (spki_sha256)"
    ]
    assert domain.root_adoption_problems(root.cert, spki, NOW + timedelta(days=3651)) == [
        "it is not valid now (from 2025-12-31 to 2035-12-30)"
    ]
    # An issuing CA's certificate is no root: not self-signed, and pathlen 0.
    own = ec.generate_private_key(ec.SECP384R1()).public_key()
    issuing = domain.issuing_certificate(own, "issuing1", root, root_key, "Certbus Test", URLS, NOW, 365)
    assert domain.root_adoption_problems(issuing, spki_sha256(own), NOW) == [
        "it is not self-signed (its signature does not verify with its own key)",
        "it is not a root CA's certificate (basicConstraints ca=True, pathlen 1 or more)",
    ]


def test_a_root_crl_from_the_ceremony_is_served_only_signed_by_the_root_numbered_above_and_current() -> None:
    root_key, root = _root()
    entries = [domain.RevokedEntry(0x1234, NOW, "cACompromise")]
    crl = domain.crl(root, root_key, 3, entries, NOW, NOW + timedelta(days=30))
    assert domain.root_crl_problems(crl, root.cert, 3, 2, NOW) == []
    assert domain.root_crl_problems(crl, root.cert, 4, 2, NOW) == ["its CRL number 3 is not the command's 4"]
    assert domain.root_crl_problems(crl, root.cert, 3, 3, NOW) == [
        "its CRL number 3 is not above the last one served (3)"
    ]
    assert domain.root_crl_problems(crl, root.cert, 3, 2, NOW + timedelta(days=31)) == [
        "it is out of date already (nextUpdate is past)"
    ]
    # Signed by another key under the same name: the name matches, the signature does not.
    impostor_key, _ = _root()
    forged = domain.crl(root, impostor_key, 3, entries, NOW, NOW + timedelta(days=30))
    forged_problems = domain.root_crl_problems(forged, root.cert, 3, 2, NOW)
    assert forged_problems == ["its signature does not verify with the root's key"]


def test_a_revocation_signing_lists_for_the_ceremony_is_read_back_whole() -> None:
    at = datetime(2026, 12, 6, 20, 3, 56, tzinfo=UTC)
    entry = domain.RevokedEntry(0x1A2B, at, "cACompromise")
    assert domain.ceremony_revoked(entry) == "1a2b:cACompromise@2026-12-06T20:03:56Z"
    assert domain.parse_ceremony_revoked("1a2b:cACompromise@2026-12-06T20:03:56Z", NOW) == entry
    assert domain.parse_ceremony_revoked("0x1a2b", NOW) == domain.RevokedEntry(0x1A2B, NOW, "unspecified")
    for bad, said in (
        ("xyz", "the serial is hexadecimal"),
        ("0", "a serial is positive"),
        ("1a2b:certificateHold", "unknown revocation reason 'certificateHold'"),
        ("1a2b:superseded@yesterday", "the time is ISO 8601"),
        ("1a2b:superseded@2026-12-06T20:03:56", "the time names its zone"),
    ):
        with pytest.raises(ValueError, match=said):
            domain.parse_ceremony_revoked(bad, NOW)


def test_a_root_crl_that_leaves_out_a_revoked_issuing_ca_is_not_served() -> None:
    root_key, root = _root()
    entries = [domain.RevokedEntry(0x1234, NOW, "cACompromise")]
    crl = domain.crl(root, root_key, 3, entries, NOW, NOW + timedelta(days=30))
    assert domain.root_crl_problems(crl, root.cert, 3, 2, NOW, [0x1234]) == []
    assert domain.root_crl_problems(crl, root.cert, 3, 2, NOW, [0x1234, 0xBEEF, 0xABC]) == [
        "it leaves out issuing CA certificates the root revoked (abc, beef): `certbus ca root` lists them"
    ]
