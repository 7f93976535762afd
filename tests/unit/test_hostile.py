"""tests/hostile.py makes what each factory's name says, checked independently of how it was made.

Where cryptography can read the CSR, it is read with `x509.load_pem_x509_csr`; the bytes that matter (a NUL, UTF-8
inside an IA5String, duplicate extensions) are checked in the DER through pyasn1 instead. Each test also pins what
cryptography 50 does when it reads the CSR: that decides which error code enrollment can give for it.
"""

from __future__ import annotations

import warnings

import hostile
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from pyasn1.codec.der import decoder
from pyasn1_alt_modules import rfc2986, rfc5280

SAN_OID = rfc5280.id_ce_subjectAltName
QUICK = settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ---- independent readers ----------------------------------------------------------------------------------------


def load(pem: str) -> x509.CertificateSigningRequest:
    return x509.load_pem_x509_csr(pem.encode())


def asn1(pem: str) -> rfc2986.CertificationRequest:
    """The CSR decoded by pyasn1, not by cryptography."""
    request, rest = decoder.decode(hostile.pem_to_der(pem), asn1Spec=rfc2986.CertificationRequest())
    assert rest == b""
    return request


def requested_extensions(pem: str) -> list[tuple[str, bool, bytes]]:
    """(OID, critical, extnValue DER) of every extension in the CSR's extensionRequest, in order, via pyasn1."""
    found: list[tuple[str, bool, bytes]] = []
    for attribute in asn1(pem)["certificationRequestInfo"]["attributes"]:
        if attribute["type"] != hostile.EXTENSION_REQUEST:
            continue
        for value in attribute["values"]:
            extensions, rest = decoder.decode(bytes(value), asn1Spec=rfc5280.Extensions())
            assert rest == b""
            found += [(str(e["extnID"]), bool(e["critical"]), bytes(e["extnValue"])) for e in extensions]
    return found


def san_der(pem: str) -> bytes:
    """The raw DER of the CSR's one subjectAltName value (the GeneralNames SEQUENCE)."""
    sans = [value for oid, _, value in requested_extensions(pem) if oid == str(SAN_OID)]
    assert len(sans) == 1
    return sans[0]


def well_signed(pem: str) -> bool:
    """Whether the process key's ECDSA-SHA256 signature over the CertificationRequestInfo DER verifies.

    The signed bytes are cut out of the DER by hand (the first element inside the outer SEQUENCE), so this holds
    even for CSRs cryptography refuses to load.
    """
    der = hostile.pem_to_der(pem)
    start = _header_length(der)
    info = der[start : start + _header_length(der[start:]) + _content_length(der[start:])]
    try:
        hostile.process_key().public_key().verify(asn1(pem)["signature"].asOctets(), info, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _header_length(tlv: bytes) -> int:
    """The length of the tag and length octets of the DER TLV at the start of `tlv` (one-byte tags only)."""
    return 2 if tlv[1] < 0x80 else 2 + (tlv[1] & 0x7F)


def _content_length(tlv: bytes) -> int:
    if tlv[1] < 0x80:
        return tlv[1]
    return int.from_bytes(tlv[2 : _header_length(tlv)], "big")


def dns_names(csr: x509.CertificateSigningRequest) -> list[str]:
    return csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def common_names(csr: x509.CertificateSigningRequest) -> list[str]:
    return [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


# ---- the baseline -----------------------------------------------------------------------------------------------


def test_csr_for_builds_a_normal_csr_whose_cn_defaults_to_the_first_name() -> None:
    pem = hostile.csr_for(hostile.new_key(), ["a.svc.test", "b.svc.test"])
    csr = load(pem)
    assert csr.is_signature_valid
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    assert csr.public_key().curve.name == "secp256r1"
    assert dns_names(csr) == ["a.svc.test", "b.svc.test"]
    assert common_names(csr) == ["a.svc.test"]


def test_csr_for_with_no_common_name_has_an_empty_subject_and_a_given_key() -> None:
    key = hostile.new_key()
    csr = load(hostile.csr_for(key, ["a.svc.test"], ips=["10.1.2.3"], emails=["x@svc.test"], common_name=None))
    assert len(csr.subject) == 0
    assert csr.public_key() == key.public_key()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert san.get_values_for_type(x509.RFC822Name) == ["x@svc.test"]


def test_well_signed_checks_the_signature_without_cryptographys_csr_parser() -> None:
    pem = hostile.csr_for(hostile.process_key(), list(hostile.NAMES))
    assert well_signed(pem)
    assert not well_signed(hostile.csr_for(hostile.new_key(), list(hostile.NAMES)))


# ---- not a CSR --------------------------------------------------------------------------------------------------


def test_garbage_bytes_is_junk_that_does_not_load() -> None:
    junk = hostile.garbage_bytes()
    assert isinstance(junk, str) and len(junk) == 512
    assert "-----BEGIN" not in junk
    assert len(set(junk)) > 100  # binary-ish: many distinct byte values
    assert hostile.garbage_bytes() == junk  # seeded: reproducible
    # cryptography: ValueError "Unable to load PEM file" -> csr_malformed.
    with pytest.raises(ValueError, match="Unable to load PEM"):
        load(junk)


def test_truncated_pem_is_cut_inside_its_base64_and_does_not_load() -> None:
    pem = hostile.csr_for(hostile.process_key(), list(hostile.NAMES))
    cut = hostile.truncated_pem(pem)
    assert pem.startswith(cut) and cut.startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    assert "-----END" not in cut
    assert len(cut) > len("-----BEGIN CERTIFICATE REQUEST-----\n") + 40
    # cryptography: ValueError "Unable to load PEM file" (no END line) -> csr_malformed.
    with pytest.raises(ValueError, match="Unable to load PEM"):
        load(cut)
    with pytest.raises(ValueError):
        load(hostile.truncated_pem())


# ---- signatures and keys ----------------------------------------------------------------------------------------


def test_bad_signature_loads_but_does_not_verify() -> None:
    pem = hostile.bad_signature(["x.svc.test"])
    assert not well_signed(pem)
    csr = load(pem)  # the structure is intact: it parses, names and key read fine
    assert dns_names(csr) == ["x.svc.test"]
    assert csr.public_key() == hostile.process_key().public_key()
    # cryptography: is_signature_valid is False, no exception -> csr_signature_invalid.
    assert csr.is_signature_valid is False


def test_rsa_1024_is_a_valid_csr_for_a_1024_bit_rsa_key() -> None:
    csr = load(hostile.rsa_1024(["x.svc.test"]))
    key = csr.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    # cryptography: reads fine; the key is only too weak -> key_weak.
    assert key.key_size == 1024
    assert csr.is_signature_valid
    assert dns_names(csr) == ["x.svc.test"]


@pytest.mark.parametrize("curve", ["secp256k1", "secp521r1"])
def test_unsupported_curve_is_a_valid_csr_on_that_curve(curve: hostile.Curve) -> None:
    csr = load(hostile.unsupported_curve(curve=curve))
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    # cryptography: reads fine (both curves are known to it) -> key_weak, by the profile's curve list.
    assert key.curve.name == curve
    assert csr.is_signature_valid


# ---- names ------------------------------------------------------------------------------------------------------


def test_many_sans_has_exactly_that_many_distinct_dns_names() -> None:
    csr = load(hostile.many_sans())
    names = dns_names(csr)
    # cryptography: reads all 1000 without complaint -> too_many_names.
    assert len(names) == 1000 and len(set(names)) == 1000
    assert all(n.endswith(".svc.test") for n in names)
    assert common_names(csr) == [names[0]]
    assert csr.is_signature_valid
    assert len(dns_names(load(hostile.many_sans(7, "other.test")))) == 7


def test_long_label_has_one_label_of_that_length() -> None:
    csr = load(hostile.long_label())
    (name,) = dns_names(csr)
    # cryptography: no length check at all on reading -> name_invalid (label over 63, name over 253).
    assert name == "a" * 300 + ".svc.test"
    assert len(csr.subject) == 0
    (name,) = dns_names(load(hostile.long_label(64, "x.test")))
    assert [len(label) for label in name.split(".")] == [64, 1, 4]


def test_long_label_with_a_long_cn_makes_cryptography_warn_on_reading_the_subject() -> None:
    csr = load(hostile.long_label(common_name="c" * 100))
    # cryptography: a CN over 64 characters is read, but with a UserWarning (not an exception).
    with pytest.warns(UserWarning, match="length must be >= 1 and <= 64"):
        assert common_names(csr) == ["c" * 100]


def test_nul_in_name_puts_a_real_nul_byte_inside_the_ia5string() -> None:
    pem = hostile.nul_in_name()
    value = b"good.svc.test\x00.evil.test"
    assert b"\x82" + bytes([len(value)]) + value in san_der(pem)  # [2] IMPLICIT IA5String, NUL and all
    csr = load(pem)
    assert csr.is_signature_valid
    # cryptography: csr.extensions does NOT raise; get_values_for_type returns the str with the NUL in it, and the
    # CN (a UTF8String) reads back with the NUL too. Only enrollment's own check can refuse it -> name_invalid.
    assert dns_names(csr) == ["good.svc.test\x00.evil.test"]
    assert common_names(csr) == ["good.svc.test\x00.evil.test"]


def test_u_label_writes_utf8_bytes_inside_the_ia5string_not_punycode() -> None:
    pem = hostile.u_label()
    value = "bücher.svc.test".encode()
    assert b"\xc3\xbc" in value
    assert b"\x82" + bytes([len(value)]) + value in san_der(pem)
    assert b"xn--" not in san_der(pem)
    csr = load(pem)
    # cryptography: csr.extensions does NOT raise although IA5String is ASCII-only: the bytes are decoded as UTF-8
    # and get_values_for_type returns the U-label "bücher.svc.test". Enrollment must refuse it -> name_invalid.
    assert dns_names(csr) == ["bücher.svc.test"]
    assert csr.is_signature_valid


def test_non_utf8_name_makes_reading_the_extensions_raise_value_error() -> None:
    pem = hostile.non_utf8_name()
    assert b"\x82\x0fb\xfccher.svc.test" in san_der(pem)
    csr = load(pem)
    assert csr.is_signature_valid  # loading, the signature and the key are fine...
    assert isinstance(csr.public_key(), ec.EllipticCurvePublicKey)
    # cryptography: ...but csr.extensions raises ValueError (ParseError InvalidValue at GeneralName::DNSName)
    # -> csr_malformed.
    with pytest.raises(ValueError, match="InvalidValue"):
        csr.extensions


def test_empty_san_is_a_san_extension_with_no_entries() -> None:
    pem = hostile.empty_san()
    assert san_der(pem) == b"\x30\x00"
    csr = load(pem)
    # cryptography: reads an empty SubjectAlternativeName (RFC 5280 forbids it, cryptography does not) -> names_missing.
    assert len(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value) == 0


def test_cn_not_in_sans_has_a_cn_that_is_not_a_dns_name() -> None:
    csr = load(hostile.cn_not_in_sans())
    # cryptography: reads fine -> cn_not_in_sans.
    assert common_names(csr) == ["other.svc.test"]
    assert dns_names(csr) == ["app.svc.test"]


def test_wildcard_asks_for_a_wildcard_name() -> None:
    csr = load(hostile.wildcard())
    # cryptography: reads fine -> name_invalid (the profile allows no wildcard).
    assert dns_names(csr) == ["*.svc.test"]
    assert common_names(csr) == ["*.svc.test"]


def test_ip_san_asks_for_an_ip_address_besides_the_names() -> None:
    san = load(hostile.ip_san(ips=["10.0.0.1", "::1"])).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    # cryptography: reads fine -> ip_not_allowed.
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["10.0.0.1", "::1"]
    assert san.value.get_values_for_type(x509.DNSName) == ["app.svc.test"]


def test_email_san_asks_for_an_email_besides_the_names() -> None:
    san = load(hostile.email_san()).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # cryptography: reads fine; csr_names ignores rfc822Name, so enrollment must look for it itself.
    assert san.get_values_for_type(x509.RFC822Name) == ["admin@svc.test"]
    assert san.get_values_for_type(x509.DNSName) == ["app.svc.test"]


def test_ca_extension_requested_asks_for_a_critical_ca_basic_constraints() -> None:
    pem = hostile.ca_extension_requested()
    assert [(oid, critical) for oid, critical, _ in requested_extensions(pem)] == [
        ("2.5.29.17", False),
        ("2.5.29.19", True),
    ]
    # cryptography: reads fine; nothing stops it unless enrollment looks at the requested extensions.
    basic = load(pem).extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is True and basic.value.path_length is None


@pytest.mark.parametrize("critical", [False, True])
def test_unknown_extension_requested_carries_a_private_oid(critical: bool) -> None:
    pem = hostile.unknown_extension_requested(critical=critical)
    csr = load(pem)
    # cryptography: reads it as UnrecognizedExtension, raw value kept, no exception.
    ext = csr.extensions.get_extension_for_oid(x509.ObjectIdentifier(hostile.PRIVATE_OID))
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.critical is critical
    assert ext.value.value == b"\x0c\x05hello"
    assert dns_names(csr) == ["app.svc.test"]


def test_trailing_dot_keeps_its_trailing_dot() -> None:
    pem = hostile.trailing_dot()
    assert b"\x82\x0dapp.svc.test." in san_der(pem)
    # cryptography: reads fine, the dot kept -> name_invalid.
    assert dns_names(load(pem)) == ["app.svc.test."]


def test_control_char_in_name_keeps_its_control_characters() -> None:
    pem = hostile.control_char_in_name()
    assert b"app\t.svc.test" in san_der(pem) and b"bell\x07.svc.test" in san_der(pem)
    # cryptography: reads fine, tab and BEL kept (they are ASCII, so valid IA5) -> name_invalid.
    assert dns_names(load(pem)) == ["app\t.svc.test", "bell\x07.svc.test"]


def test_raw_names_can_be_any_bytes_and_any_names_are_the_callers() -> None:
    pem = hostile.nul_in_name([b"a\x00b.x.test", "c.x.test"], common_name=None)
    assert well_signed(pem)
    assert san_der(pem) == b"\x30\x16\x82\x0aa\x00b.x.test\x82\x08c.x.test"
    assert len(load(pem).subject) == 0


# ---- structural damage, re-signed -------------------------------------------------------------------------------


def test_bad_version_raises_invalid_version_which_is_not_a_value_error() -> None:
    pem = hostile.bad_version()
    assert int(asn1(pem)["certificationRequestInfo"]["version"]) == 1
    assert well_signed(pem)
    # cryptography: load_pem_x509_csr raises x509.InvalidVersion, which is NOT a ValueError: a loader that
    # only catches ValueError lets it escape. Should be csr_malformed.
    assert not issubclass(x509.InvalidVersion, ValueError)
    with pytest.raises(x509.InvalidVersion):
        load(pem)


def test_unknown_signature_algorithm_loads_and_does_not_verify() -> None:
    pem = hostile.unknown_signature_algorithm()
    assert str(asn1(pem)["signatureAlgorithm"]["algorithm"]) == hostile.PRIVATE_OID
    assert well_signed(pem)  # the bytes are a correct ECDSA-SHA256 signature, under the wrong name
    csr = load(pem)
    # cryptography: is_signature_valid is False (no exception); signature_hash_algorithm raises
    # UnsupportedAlgorithm -> csr_signature_invalid.
    assert csr.is_signature_valid is False
    with pytest.raises(UnsupportedAlgorithm):
        csr.signature_hash_algorithm


def test_unknown_key_algorithm_makes_the_key_and_the_signature_check_raise_unsupported_algorithm() -> None:
    pem = hostile.unknown_key_algorithm()
    spki = asn1(pem)["certificationRequestInfo"]["subjectPKInfo"]
    assert str(spki["algorithm"]["algorithm"]) == hostile.PRIVATE_OID
    assert well_signed(pem)
    csr = load(pem)
    # cryptography: public_key() AND is_signature_valid raise UnsupportedAlgorithm ("Unknown key type"), which is
    # neither ValueError nor TypeError -> key_unsupported (and the signature cannot be judged).
    assert not issubclass(UnsupportedAlgorithm, ValueError | TypeError)
    with pytest.raises(UnsupportedAlgorithm, match="Unknown key type"):
        csr.public_key()
    with pytest.raises(UnsupportedAlgorithm):
        csr.is_signature_valid
    assert dns_names(csr) == ["app.svc.test"]


def test_unknown_curve_makes_the_key_and_the_signature_check_raise_unsupported_algorithm() -> None:
    pem = hostile.unknown_curve()
    assert well_signed(pem)
    csr = load(pem)
    # cryptography: public_key() and is_signature_valid raise UnsupportedAlgorithm ("Curve ... is not supported").
    with pytest.raises(UnsupportedAlgorithm, match="is not supported"):
        csr.public_key()
    with pytest.raises(UnsupportedAlgorithm):
        csr.is_signature_valid


def test_point_not_on_curve_makes_the_key_and_the_signature_check_raise_value_error() -> None:
    pem = hostile.point_not_on_curve()
    point = asn1(pem)["certificationRequestInfo"]["subjectPKInfo"]["subjectPublicKey"].asOctets()
    assert point != hostile.process_key().public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    csr = load(pem)
    # cryptography: public_key() and is_signature_valid raise ValueError("Invalid key") -> key_unsupported; but a
    # signature check that is not guarded crashes.
    with pytest.raises(ValueError, match="Invalid key"):
        csr.public_key()
    with pytest.raises(ValueError, match="Invalid key"):
        csr.is_signature_valid


def test_multi_valued_extension_request_makes_reading_the_extensions_raise_value_error() -> None:
    pem = hostile.multi_valued_extension_request()
    assert len(requested_extensions(pem)) == 2  # the same SAN, once per attribute value
    assert well_signed(pem)
    csr = load(pem)
    assert csr.is_signature_valid
    # cryptography: csr.extensions raises ValueError("Only single-valued attributes are supported") -> csr_malformed.
    with pytest.raises(ValueError, match="single-valued"):
        csr.extensions


def test_duplicate_san_makes_reading_the_extensions_raise_duplicate_extension() -> None:
    pem = hostile.duplicate_san()
    assert [oid for oid, _, _ in requested_extensions(pem)] == ["2.5.29.17", "2.5.29.17"]
    assert b"evil.svc.test" in requested_extensions(pem)[1][2]
    csr = load(pem)
    assert csr.is_signature_valid
    # cryptography: csr.extensions raises x509.DuplicateExtension (not a ValueError) -> csr_malformed.
    assert not issubclass(x509.DuplicateExtension, ValueError)
    with pytest.raises(x509.DuplicateExtension):
        csr.extensions


def test_undecodable_common_name_makes_reading_the_subject_raise_value_error() -> None:
    pem = hostile.undecodable_common_name()
    (rdn,) = asn1(pem)["certificationRequestInfo"]["subject"]["rdnSequence"]
    assert bytes(rdn[0]["value"]) == b"\x0c\x02\xff\xfe"
    csr = load(pem)
    assert csr.is_signature_valid and dns_names(csr) == ["app.svc.test"]
    # cryptography: loading succeeds (the subject is parsed lazily); csr.subject raises ValueError (ParseError)
    # -> csr_malformed, if the subject is read under a guard.
    with pytest.raises(ValueError, match="ParseError"):
        csr.subject


# ---- strategies -------------------------------------------------------------------------------------------------

BASE = hostile.csr_for(hostile.process_key(), list(hostile.NAMES))


@QUICK
@given(hostile.mutated_csrs(BASE))
def test_mutated_csrs_are_strings(pem: str) -> None:
    assert isinstance(pem, str)
    try:  # most do not load; any that does must only be a CSR, whatever is wrong inside
        load(pem)
    except (ValueError, x509.InvalidVersion):
        pass


@QUICK
@given(hostile.random_name_csrs())
def test_random_name_csrs_are_well_signed_csrs_that_load(pem: str) -> None:
    assert isinstance(pem, str)
    assert well_signed(pem)
    csr = load(pem)
    assert csr.is_signature_valid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a random CN can be over 64 characters
        csr.subject
    try:
        csr.extensions
    except ValueError as exc:  # a latin-1 (non-UTF-8) name: the only way reading these SANs fails
        assert "InvalidValue" in str(exc)
