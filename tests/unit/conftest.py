"""Fixtures for the pure-module tests: keys and a CA hierarchy at a pinned time (no I/O)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki_builders import BASE_URL, NOW, ORG
from services.signing import domain as signing


@pytest.fixture(scope="session")
def rsa_1024_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@pytest.fixture(scope="session")
def rsa_2048_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture
def p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def urls() -> signing.Urls:
    return signing.Urls(BASE_URL)


@pytest.fixture(scope="session")
def root_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def root(root_key: ec.EllipticCurvePrivateKey) -> signing.CaIdentity:
    return signing.CaIdentity("root-1", signing.root_certificate(root_key, "root-1", ORG, NOW, days=3650))


@pytest.fixture(scope="session")
def issuing_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def issuing(
    issuing_key: ec.EllipticCurvePrivateKey, root: signing.CaIdentity, root_key: ec.EllipticCurvePrivateKey
) -> signing.CaIdentity:
    cert = signing.issuing_certificate(
        issuing_key.public_key(), "issuing-1", root, root_key, ORG, signing.Urls(BASE_URL), NOW, days=1825
    )
    return signing.CaIdentity("issuing-1", cert)
