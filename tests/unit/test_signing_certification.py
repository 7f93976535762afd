"""What signing checks before adopting an issuing CA certificate the offline root ceremony made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec

from services.signing import domain

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
