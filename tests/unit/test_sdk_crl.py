"""Which CRL a certificate names, as the SDK and `certbus crl --cert` read it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki_builders import issue_leaf
from services.signing import domain as signing
from shared.client.sdk import crl_location, crl_of_certificate


def test_a_shard_url_names_its_issuer_and_shard() -> None:
    assert crl_location("https://pki.example.test/crl/ab12cd/17.crl") == ("ab12cd", 17)


def test_an_unsharded_url_names_its_issuer_and_no_shard() -> None:
    assert crl_location("https://pki.example.test/base/crl/ab12cd.crl") == ("ab12cd", None)


def test_a_url_that_is_no_certbus_crl_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Certbus CRL URL"):
        crl_location("https://pki.example.test/ca/ab12cd.crt")


def test_a_certificate_names_its_shards_crl(
    issuing: signing.CaIdentity, issuing_key: ec.EllipticCurvePrivateKey
) -> None:
    sharded = signing.CaIdentity(issuing.ca_id, issuing.cert, crl_shards=128)
    cert = issue_leaf(sharded, issuing_key, ["www.example.internal"])
    expected = (issuing.ca_id, cert.serial_number % 128)
    assert crl_of_certificate(cert.public_bytes(serialization.Encoding.PEM).decode()) == expected
    assert crl_of_certificate(cert.public_bytes(serialization.Encoding.DER)) == expected


def test_a_certificate_without_a_distribution_point_is_refused(root: signing.CaIdentity) -> None:
    with pytest.raises(ValueError, match="names no CRL distribution point"):
        crl_of_certificate(root.cert.public_bytes(serialization.Encoding.DER))
