"""Hostile and broken enrollment CSRs, for table-driven tests of the enrollment service.

Every factory returns PEM text (str). Names are parameters with defaults under `SUFFIX`, so a caller decides
what its profile/token allows. Where `cryptography`'s builders refuse the broken thing (non-ASCII DNS names,
undecodable bytes), the subjectAltName value is encoded by hand with pyasn1 and handed to the builder as an
`UnrecognizedExtension` carrying the SAN OID, so the CSR is still properly signed by its own key. For damage the
builder cannot express at all (version, algorithm OIDs, attribute structure, duplicate extensions, subject bytes)
`resigned` edits the decoded CSR with pyasn1 and signs its CertificationRequestInfo again.

What cryptography 50 does when it reads these back is pinned in tests/unit/test_hostile.py.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import random
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import strategies as st
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import char, tag, univ
from pyasn1_alt_modules import rfc2986, rfc5280

SUFFIX = "svc.test"
NAMES: tuple[str, ...] = (f"app.{SUFFIX}",)
FIRST_NAME = "<first name>"  # sentinel for `common_name`: the CN is the first DNS name (none if there is none)
PRIVATE_OID = "1.3.6.1.4.1.99999.42.1"  # an extension OID no one knows
PEM_LABEL = "CERTIFICATE REQUEST"

CsrKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
Curve: TypeAlias = Literal["secp256k1", "secp521r1"]
RawName: TypeAlias = str | bytes  # str is encoded as UTF-8; bytes go into the DER exactly as given


# ---- keys -------------------------------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key."""
    return ec.generate_private_key(ec.SECP256R1())


@functools.cache
def process_key() -> ec.EllipticCurvePrivateKey:
    """One P-256 key per process, reused by the factories and strategies (signing is ~0.1 ms, keygen is not free)."""
    return new_key()


@functools.cache
def _rsa_1024_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 1024)


@functools.cache
def _curve_key(curve: Curve) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key({"secp256k1": ec.SECP256K1(), "secp521r1": ec.SECP521R1()}[curve])


def _hash_for(key: CsrKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


# ---- PEM / DER --------------------------------------------------------------------------------------------------


def der_to_pem(der: bytes, label: str = PEM_LABEL) -> str:
    """`der` as PEM text with 64-character lines."""
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


def pem_to_der(pem: str) -> bytes:
    """The DER inside a (well-formed) PEM text, decoded without cryptography."""
    body = re.search(r"-----BEGIN [A-Z ]+-----(.*?)-----END [A-Z ]+-----", pem, re.DOTALL)
    if body is None:
        raise ValueError("no PEM block")
    return base64.b64decode("".join(body.group(1).split()), validate=True)


def _pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# ---- hand-encoded subjectAltName --------------------------------------------------------------------------------


class _RawIA5String(char.IA5String):
    """An IA5String that carries any bytes: latin-1 maps each byte to one character and back, unchecked."""

    encoding = "latin-1"


def _implicit(number: int) -> tag.Tag:
    return tag.Tag(tag.tagClassContext, tag.tagFormatSimple, number)


def _raw(value: RawName) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def general_names_der(
    dns: Sequence[RawName] = (), ips: Sequence[str | bytes] = (), emails: Sequence[RawName] = ()
) -> bytes:
    """The DER of a GeneralNames SEQUENCE, byte for byte as given (no syntax check at all).

    DNS names and emails: str is written as UTF-8 inside the IA5String (so "bücher" really is c3 bc), bytes as is.
    IPs: str is parsed as an address (4 or 16 bytes), bytes are written as the raw OCTET STRING.
    No entries at all gives an empty SEQUENCE (30 00), which RFC 5280 forbids (SIZE (1..MAX)).
    """
    names = rfc5280.GeneralNames()
    for value in dns:
        name = rfc5280.GeneralName()
        name["dNSName"] = _RawIA5String(_raw(value).decode("latin-1")).subtype(implicitTag=_implicit(2))
        names.append(name)
    for ip in ips:
        packed = ipaddress.ip_address(ip).packed if isinstance(ip, str) else ip
        name = rfc5280.GeneralName()
        name["iPAddress"] = univ.OctetString(packed).subtype(implicitTag=_implicit(7))
        names.append(name)
    for email in emails:
        name = rfc5280.GeneralName()
        name["rfc822Name"] = _RawIA5String(_raw(email).decode("latin-1")).subtype(implicitTag=_implicit(1))
        names.append(name)
    if len(names) == 0:
        return b"\x30\x00"  # pyasn1 refuses to encode a SEQUENCE that breaks its SIZE constraint
    return bytes(encoder.encode(names))


def _subject(common_name: str | None, first: RawName | None, validate: bool = True) -> x509.Name:
    if common_name == FIRST_NAME:
        common_name = first.decode("utf-8", "replace") if isinstance(first, bytes) else first
    if not common_name:
        return x509.Name([])
    with warnings.catch_warnings():  # cryptography warns about a CN over 64 characters even unvalidated
        warnings.simplefilter("ignore", UserWarning)
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=validate)])


def raw_san_csr(
    key: CsrKey,
    dns: Sequence[RawName],
    ips: Sequence[str | bytes] = (),
    emails: Sequence[RawName] = (),
    common_name: str | None = FIRST_NAME,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    san_der: bytes | None = None,
) -> str:
    """A CSR signed by `key` whose SAN is hand-encoded (`san_der`, or `general_names_der` of the names).

    The CN (default: the first DNS name) is not length-checked either: cryptography warns (UserWarning) when
    it reads back a CN longer than 64 characters.
    """
    der = general_names_der(dns, ips, emails) if san_der is None else san_der
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        _subject(common_name, dns[0] if dns else None, validate=False)
    )
    builder = builder.add_extension(
        x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, der), critical=False
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return _pem(builder.sign(key, _hash_for(key)))


# ---- well-formed CSRs -------------------------------------------------------------------------------------------


def csr_for(
    key: CsrKey,
    names: Sequence[str],
    ips: Sequence[str] = (),
    emails: Sequence[str] = (),
    common_name: str | None = FIRST_NAME,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> str:
    """A well-formed CSR built with cryptography's own checks; CN defaults to the first name, None = empty subject.

    The SAN is left out when there are no names, IPs or emails at all.
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(common_name, names[0] if names else None))
    general: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    general += [x509.RFC822Name(e) for e in emails]
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return _pem(builder.sign(key, _hash_for(key)))


# ---- not a CSR at all -------------------------------------------------------------------------------------------


def garbage_bytes(size: int = 512, seed: int | None = 0) -> str:
    """Random binary junk decoded as latin-1 (every byte a character): not PEM, not DER."""
    return random.Random(seed).randbytes(size).decode("latin-1")


def truncated_pem(pem: str | None = None) -> str:
    """A valid CSR PEM (default: `csr_for` the process key) cut in the middle of its base64: no END line."""
    pem = csr_for(process_key(), NAMES) if pem is None else pem
    start = pem.index("-----\n") + len("-----\n")
    end = pem.index("-----END")
    return pem[: start + (end - start) // 2]


def bad_signature(names: Sequence[str] = NAMES, common_name: str | None = FIRST_NAME) -> str:
    """A well-formed P-256 CSR whose signature's last byte (the end of ECDSA `s`) has one bit flipped."""
    der = bytearray(pem_to_der(csr_for(process_key(), names, common_name=common_name)))
    der[-1] ^= 0x01  # the signature BIT STRING is the last field; its DER stays well-formed, `s` is now wrong
    return der_to_pem(bytes(der))


# ---- weak or unsupported keys -----------------------------------------------------------------------------------


def rsa_1024(names: Sequence[str] = NAMES, common_name: str | None = FIRST_NAME) -> str:
    """A well-formed CSR for a 1024-bit RSA key (one key per process)."""
    return csr_for(_rsa_1024_key(), names, common_name=common_name)


def unsupported_curve(
    names: Sequence[str] = NAMES, curve: Curve = "secp256k1", common_name: str | None = FIRST_NAME
) -> str:
    """A well-formed CSR for an EC key on a curve the profile does not allow (secp256k1 or secp521r1)."""
    return csr_for(_curve_key(curve), names, common_name=common_name)


# ---- names ------------------------------------------------------------------------------------------------------


def many_sans(n: int = 1000, suffix: str = SUFFIX) -> str:
    """A CSR with `n` distinct DNS names host-0000.<suffix>...; CN is the first."""
    return csr_for(process_key(), [f"host-{i:04d}.{suffix}" for i in range(n)])


def long_label(length: int = 300, suffix: str = SUFFIX, common_name: str | None = None) -> str:
    """A CSR for one DNS name whose first label is `length` 'a's, under `suffix`.

    No CN by default: a CN over 64 characters would be a second problem (cryptography warns when reading it).
    """
    return raw_san_csr(process_key(), [f"{'a' * length}.{suffix}"], common_name=common_name)


def nul_in_name(
    names: Sequence[RawName] = (f"good.{SUFFIX}\x00.evil.test",), common_name: str | None = FIRST_NAME
) -> str:
    """A DNS SAN with a NUL byte inside: the IA5String's DER really holds 0x00 (the classic NUL-prefix attack)."""
    return raw_san_csr(process_key(), names, common_name=common_name)


def u_label(names: Sequence[RawName] = (f"bücher.{SUFFIX}",), common_name: str | None = FIRST_NAME) -> str:
    """A DNS SAN with a Unicode U-label written as UTF-8 bytes inside the IA5String (not punycode)."""
    return raw_san_csr(process_key(), names, common_name=common_name)


def non_utf8_name(names: Sequence[RawName] = (f"b\xfccher.{SUFFIX}".encode("latin-1"),)) -> str:
    """A DNS SAN with a byte that is neither ASCII nor UTF-8 (latin-1 0xFC); no CN."""
    return raw_san_csr(process_key(), names, common_name=None)


def empty_san(common_name: str | None = None) -> str:
    """A CSR whose SAN extension is present but empty (SEQUENCE of zero GeneralNames, 30 00)."""
    return raw_san_csr(process_key(), [], common_name=common_name)


def cn_not_in_sans(names: Sequence[str] = NAMES, common_name: str = f"other.{SUFFIX}") -> str:
    """A CSR whose CN is not one of its DNS SANs."""
    return csr_for(process_key(), names, common_name=common_name)


def wildcard(names: Sequence[str] = (f"*.{SUFFIX}",), common_name: str | None = FIRST_NAME) -> str:
    """A CSR asking for a wildcard DNS name."""
    return csr_for(process_key(), names, common_name=common_name)


def ip_san(names: Sequence[str] = NAMES, ips: Sequence[str] = ("10.0.0.1",)) -> str:
    """A CSR with DNS names plus IP address SANs."""
    return csr_for(process_key(), names, ips=ips)


def email_san(names: Sequence[str] = NAMES, emails: Sequence[str] = (f"admin@{SUFFIX}",)) -> str:
    """A CSR with DNS names plus rfc822Name (email) SANs."""
    return csr_for(process_key(), names, emails=emails)


def ca_extension_requested(names: Sequence[str] = NAMES) -> str:
    """A CSR whose extensionRequest asks for BasicConstraints(ca=True), critical, besides the SAN."""
    return csr_for(process_key(), names, extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)])


def unknown_extension_requested(names: Sequence[str] = NAMES, oid: str = PRIVATE_OID, critical: bool = False) -> str:
    """A CSR whose extensionRequest carries, besides the SAN, an extension under a private OID (value: UTF8String)."""
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), b"\x0c\x05hello")
    return csr_for(process_key(), names, extensions=[(unknown, critical)])


def trailing_dot(names: Sequence[RawName] = (f"app.{SUFFIX}.",), common_name: str | None = FIRST_NAME) -> str:
    """A CSR for a fully-qualified DNS name written with its trailing dot."""
    return raw_san_csr(process_key(), names, common_name=common_name)


def control_char_in_name(
    names: Sequence[RawName] = (f"app\t.{SUFFIX}", f"bell\x07.{SUFFIX}"), common_name: str | None = FIRST_NAME
) -> str:
    """A CSR whose DNS SANs hold ASCII control characters (a tab and a BEL by default)."""
    return raw_san_csr(process_key(), names, common_name=common_name)


# ---- structural damage, re-signed (found by fuzzing: each makes cryptography raise somewhere unexpected) ---------

EXTENSION_REQUEST = univ.ObjectIdentifier("1.2.840.113549.1.9.14")


def resigned(pem: str, edit: Callable[[rfc2986.CertificationRequest], None], key: CsrKey | None = None) -> str:
    """`pem` decoded with pyasn1, changed in place by `edit`, its CertificationRequestInfo signed again by `key`.

    `key` (default: the process key) must be the one `pem` was made with if the signature is to verify; the
    signatureAlgorithm field is kept as it is (an edit may change it), the signature is always ECDSA/RSA-SHA256
    or Ed25519/Ed448 as the key dictates.
    """
    key = process_key() if key is None else key
    request, rest = decoder.decode(pem_to_der(pem), asn1Spec=rfc2986.CertificationRequest())
    assert not rest
    edit(request)
    tbs = bytes(encoder.encode(request["certificationRequestInfo"]))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(tbs)
    request["signature"] = univ.BitString.fromOctetString(signature)
    return der_to_pem(bytes(encoder.encode(request)))


def _extension_request(request: rfc2986.CertificationRequest) -> rfc2986.Attribute:
    for attribute in request["certificationRequestInfo"]["attributes"]:
        if attribute["type"] == EXTENSION_REQUEST:
            return attribute
    raise AssertionError("the CSR has no extensionRequest attribute")


def bad_version(names: Sequence[str] = NAMES, version: int = 1) -> str:
    """A well-signed CSR whose CertificationRequestInfo version is not 0 (v1)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        request["certificationRequestInfo"]["version"] = version

    return resigned(csr_for(process_key(), names), edit)


def unknown_signature_algorithm(names: Sequence[str] = NAMES, oid: str = PRIVATE_OID) -> str:
    """A CSR whose signatureAlgorithm is a private OID (the signature bytes are a correct ECDSA-SHA256 one)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        request["signatureAlgorithm"]["algorithm"] = univ.ObjectIdentifier(oid)

    return resigned(csr_for(process_key(), names), edit)


def unknown_key_algorithm(names: Sequence[str] = NAMES, oid: str = PRIVATE_OID) -> str:
    """A well-signed CSR whose SubjectPublicKeyInfo algorithm is a private OID (the key bits are still P-256)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        request["certificationRequestInfo"]["subjectPKInfo"]["algorithm"]["algorithm"] = univ.ObjectIdentifier(oid)

    return resigned(csr_for(process_key(), names), edit)


def unknown_curve(names: Sequence[str] = NAMES, oid: str = PRIVATE_OID) -> str:
    """A well-signed CSR whose EC key names a curve OID no one knows (the point is still on P-256)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        algorithm = request["certificationRequestInfo"]["subjectPKInfo"]["algorithm"]
        algorithm["parameters"] = encoder.encode(univ.ObjectIdentifier(oid))

    return resigned(csr_for(process_key(), names), edit)


def point_not_on_curve(names: Sequence[str] = NAMES) -> str:
    """A CSR whose P-256 public point has its last byte (the end of y) changed, so it is off the curve."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        spki = request["certificationRequestInfo"]["subjectPKInfo"]
        point = bytearray(spki["subjectPublicKey"].asOctets())
        point[-1] ^= 0x01
        spki["subjectPublicKey"] = univ.BitString.fromOctetString(bytes(point))

    return resigned(csr_for(process_key(), names), edit)


def multi_valued_extension_request(names: Sequence[str] = NAMES) -> str:
    """A well-signed CSR whose extensionRequest attribute holds its Extensions twice (a SET of two values)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        values = _extension_request(request)["values"]
        values.append(values[0])

    return resigned(csr_for(process_key(), names), edit)


def duplicate_san(names: Sequence[str] = NAMES, second: Sequence[str] = (f"evil.{SUFFIX}",)) -> str:
    """A well-signed CSR whose extensionRequest holds two subjectAltName extensions (`names`, then `second`)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        attribute = _extension_request(request)
        extensions, rest = decoder.decode(bytes(attribute["values"][0]), asn1Spec=rfc5280.Extensions())
        assert not rest
        duplicate = rfc5280.Extension()
        duplicate["extnID"] = rfc5280.id_ce_subjectAltName
        duplicate["extnValue"] = univ.OctetString(general_names_der(second))
        extensions.append(duplicate)
        attribute["values"][0] = rfc5280.AttributeValue(encoder.encode(extensions))

    return resigned(csr_for(process_key(), names), edit)


def undecodable_common_name(names: Sequence[str] = NAMES, value_der: bytes = b"\x0c\x02\xff\xfe") -> str:
    """A well-signed CSR whose CN value is a UTF8String holding bytes that are not UTF-8 (by default)."""

    def edit(request: rfc2986.CertificationRequest) -> None:
        rdns = request["certificationRequestInfo"]["subject"]["rdnSequence"]
        rdns[0][0]["value"] = rfc5280.AttributeValue(value_der)

    return resigned(csr_for(process_key(), names), edit)


# ---- hypothesis strategies --------------------------------------------------------------------------------------

_MUTATIONS = ("flip", "flip", "truncate", "insert", "delete", "overwrite", "byte", "random")
_FRAMINGS = ("pem",) * 20 + (  # about one draw in three mangles the framing
    "crlf",
    "no_end",
    "no_begin",
    "wrong_label",
    "mismatched_label",
    "junk_in_base64",
    "one_line",
    "bare_base64",
    "double_begin",
    "bad_padding",
)


@st.composite
def _mutate(draw: st.DrawFn, der: bytes) -> bytes:
    kind = draw(st.sampled_from(_MUTATIONS))
    size = len(der)
    data = bytearray(der)
    if kind == "flip":
        offsets = st.tuples(st.integers(0, size - 1), st.integers(0, 7))
        for offset, bit in draw(st.lists(offsets, min_size=1, max_size=8, unique_by=lambda t: t)):
            data[offset] ^= 1 << bit
    elif kind == "truncate":
        del data[draw(st.integers(0, size - 1)) :]
    elif kind == "insert":
        at = draw(st.integers(0, size))
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        at = draw(st.integers(0, size - 1))
        del data[at : at + draw(st.integers(1, 16))]
    elif kind == "overwrite":
        at = draw(st.integers(0, size - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        data[at : at + len(chunk)] = chunk
    elif kind == "byte":
        data[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
    else:
        return draw(st.binary(max_size=2 * size))
    return bytes(data)


@st.composite
def _frame(draw: st.DrawFn, der: bytes) -> str:
    framing = draw(st.sampled_from(_FRAMINGS))
    pem = der_to_pem(der)
    lines = pem.splitlines()
    if framing == "crlf":
        return "\r\n".join(lines) + "\r\n"
    if framing == "no_end":
        return "\n".join(lines[:-1]) + "\n"
    if framing == "no_begin":
        return "\n".join(lines[1:]) + "\n"
    if framing == "wrong_label":
        return der_to_pem(der, "CERTIFICATE")
    if framing == "mismatched_label":
        return "\n".join([*lines[:-1], "-----END CERTIFICATE-----"]) + "\n"
    if framing == "junk_in_base64":
        body = "".join(lines[1:-1])
        at = draw(st.integers(0, len(body)))
        junk = draw(st.text(alphabet="!#$%&*?~\x00\t é-", min_size=1, max_size=4))
        return "\n".join([lines[0], body[:at] + junk + body[at:], lines[-1]]) + "\n"
    if framing == "one_line":
        return "".join(lines)
    if framing == "bare_base64":
        return "\n".join(lines[1:-1]) + "\n"
    if framing == "double_begin":
        return "\n".join([lines[0], *lines]) + "\n"
    if framing == "bad_padding":
        return "\n".join([lines[0], *lines[1:-1], "===", lines[-1]]) + "\n"
    return pem


def mutated_csrs(base_pem: str) -> st.SearchStrategy[str]:
    """DER-level mutations of a valid CSR (bit flips, truncation, insertion, deletion, random chunks) as PEM text.

    About one draw in three also mangles the PEM framing (no END or BEGIN line, another label, CRLF, junk in the
    base64, no line breaks, bare base64...). Some outcomes still load (a flip inside the signature only breaks the
    signature; CRLF is fine), so a test must accept any outcome but a crash.
    """
    der = pem_to_der(base_pem)
    return _mutate(der).flatmap(_frame)


_HOSTILE_CHARS = "abcxyzABCXYZ0189-.*_\x00 "
_UNICODE_LETTERS = st.characters(categories=("Ll", "Lu", "Lo"), min_codepoint=0x80)
_HOSTILE_CHAR = st.one_of(st.sampled_from(_HOSTILE_CHARS), _UNICODE_LETTERS)
_LABEL = st.one_of(
    st.text(_HOSTILE_CHAR, max_size=12),
    st.text(_HOSTILE_CHAR, max_size=12),
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1, max_size=12),
    st.builds(lambda n, c: c * n, st.integers(60, 300), st.sampled_from("a-_ü")),
)
_DNS_NAME = st.builds(
    lambda labels, in_suffix: ".".join(labels) + (f".{SUFFIX}" if in_suffix else ""),
    st.lists(_LABEL, min_size=1, max_size=5),
    st.booleans(),
)
# One name in twenty is written latin-1 instead of UTF-8: a non-ASCII letter in it is then a byte that is not UTF-8.
_RAW_DNS_NAME = st.builds(
    lambda name, roll: name.encode("latin-1", "replace") if roll == 0 else name, _DNS_NAME, st.integers(0, 19)
)
_EMAIL = st.builds(lambda local, domain: f"{local}@{domain}", st.text(_HOSTILE_CHAR, max_size=10), _DNS_NAME)
_COMMON_NAME = st.one_of(
    st.none(), st.just(FIRST_NAME), st.just(FIRST_NAME), st.text(_HOSTILE_CHAR, min_size=1, max_size=80)
)


def random_name_csrs() -> st.SearchStrategy[str]:
    """Well-signed CSRs (the process key) whose SAN DNS names come from a hostile alphabet.

    Names mix ASCII letters and digits, '-', '.', '*', '_', NUL, space, Unicode letters (written as UTF-8 in the
    IA5String, or for one name in twenty as latin-1, which is not UTF-8) and labels up to 300 characters, sometimes
    under SUFFIX; sometimes IP and email SANs; a CN that is absent, the first DNS name, or random (up to 80
    characters, so sometimes over the 64 limit). With no entries at all the SAN is an empty SEQUENCE.
    """
    return st.builds(
        lambda dns, ips, emails, cn: raw_san_csr(process_key(), dns, ips, emails, common_name=cn),
        st.lists(_RAW_DNS_NAME, max_size=6),
        st.lists(st.ip_addresses().map(str), max_size=2),
        st.lists(_EMAIL, max_size=2),
        _COMMON_NAME,
    )
