"""RFC 5280 linting through pkilint: a well-formed hierarchy passes, known violations are errors, garbage is fatal."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from pki_builders import NOW, ORG
from shared.pki.lint import DECODE_FAILED, LintFinding, errors, lint_certificate

CA_NAME = x509.Name(
    [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG), x509.NameAttribute(NameOID.COMMON_NAME, "Lint Test CA")]
)
LEAF_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])
CRL_URL = "http://pki.example.test/crl/lint-test-ca.crl"
CA_ISSUERS_URL = "http://pki.example.test/ca/lint-test-ca.crt"


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    """A KeyUsage with only the given bits set."""
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


@pytest.fixture(scope="module")
def ca_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _ca_certificate(ca_key: ec.EllipticCurvePrivateKey, basic_constraints_critical: bool = True) -> x509.Certificate:
    """A self-signed P-384 CA certificate."""
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(CA_NAME)
        .issuer_name(CA_NAME)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=basic_constraints_critical)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    subject: x509.Name = LEAF_NAME,
    dns_names: tuple[str, ...] | None = ("www.example.test",),
    san_critical: bool = False,
    key_usage: x509.KeyUsage | None = None,
    with_aki: bool = True,
) -> x509.Certificate:
    """A P-256 leaf issued by the test CA; the keywords break one rule at a time."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage or _key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(CRL_URL)], None, None, None)]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(CA_ISSUERS_URL)
                    )
                ]
            ),
            critical=False,
        )
    )
    if with_aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    if dns_names is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=san_critical
        )
    return builder.sign(ca_key, hashes.SHA384())


def _der(cert: x509.Certificate) -> bytes:
    """The DER encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.DER)


def _error_codes(cert: x509.Certificate) -> set[str]:
    """The codes of the ERROR and FATAL findings for a certificate."""
    return {f.code for f in errors(lint_certificate(_der(cert)))}


def test_well_formed_leaf_has_no_errors(ca_key: ec.EllipticCurvePrivateKey) -> None:
    assert errors(lint_certificate(_der(_leaf(ca_key)))) == []


def test_well_formed_ca_certificate_has_no_errors(ca_key: ec.EllipticCurvePrivateKey) -> None:
    assert errors(lint_certificate(_der(_ca_certificate(ca_key)))) == []


def test_findings_below_error_are_reported_with_code_and_path(ca_key: ec.EllipticCurvePrivateKey) -> None:
    [info] = [f for f in lint_certificate(_der(_leaf(ca_key))) if f.severity == "INFO"]
    assert info.code == "pkix.subject_key_identifier_method_1_identified"
    assert info.path.endswith(".extnValue.subjectKeyIdentifier")


def test_empty_subject_with_non_critical_san_is_an_error(ca_key: ec.EllipticCurvePrivateKey) -> None:
    cert = _leaf(ca_key, subject=x509.Name([]), san_critical=False)
    assert "pkix.san_extension_not_critical_empty_subject" in _error_codes(cert)


def test_empty_subject_with_critical_san_is_not_an_error(ca_key: ec.EllipticCurvePrivateKey) -> None:
    assert _error_codes(_leaf(ca_key, subject=x509.Name([]), san_critical=True)) == set()


def test_leaf_without_authority_key_identifier_is_an_error(ca_key: ec.EllipticCurvePrivateKey) -> None:
    assert "pkix.authority_key_identifier_extension_absent" in _error_codes(_leaf(ca_key, with_aki=False))


def test_key_cert_sign_on_end_entity_is_an_error(ca_key: ec.EllipticCurvePrivateKey) -> None:
    cert = _leaf(ca_key, key_usage=_key_usage(digital_signature=True, key_cert_sign=True))
    assert "pkix.ee_certificate_keycertsign_keyusage_set" in _error_codes(cert)


def test_ca_with_non_critical_basic_constraints_is_an_error(ca_key: ec.EllipticCurvePrivateKey) -> None:
    cert = _ca_certificate(ca_key, basic_constraints_critical=False)
    assert "pkix.basic_constraints_extension_not_critical" in _error_codes(cert)


def test_empty_san_dns_name_is_an_error(ca_key: ec.EllipticCurvePrivateKey) -> None:
    [finding] = errors(lint_certificate(_der(_leaf(ca_key, dns_names=("",)))))
    assert finding.code == "pkix.invalid_domain_name_syntax"
    assert finding.path.endswith(".extnValue.subjectAltName.0.dNSName")


def test_garbage_is_a_single_decode_failed_fatal() -> None:
    [finding] = lint_certificate(b"not a certificate")
    assert (finding.severity, finding.code) == ("FATAL", DECODE_FAILED)
    assert "not DER" in finding.message


def test_truncated_der_is_a_single_decode_failed_fatal(ca_key: ec.EllipticCurvePrivateKey) -> None:
    [finding] = lint_certificate(_der(_leaf(ca_key))[:100])
    assert (finding.severity, finding.code) == ("FATAL", DECODE_FAILED)
    assert finding.message


def test_errors_keeps_only_error_and_fatal() -> None:
    severities = ("INFO", "FATAL", "NOTICE", "ERROR", "WARNING")
    findings = [LintFinding(severity, f"code.{severity}", "", "certificate") for severity in severities]
    assert [f.severity for f in errors(findings)] == ["FATAL", "ERROR"]


def test_shared_validator_gives_the_same_findings_across_threads(ca_key: ec.EllipticCurvePrivateKey) -> None:
    good, bad = _der(_leaf(ca_key)), _der(_leaf(ca_key, with_aki=False))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lint_certificate, [good, bad] * 16))
    assert all(r == results[0] for r in results[0::2])
    assert all(r == results[1] for r in results[1::2])
    assert errors(results[0]) == [] and errors(results[1]) != []
