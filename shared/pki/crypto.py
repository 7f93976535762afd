"""Certificate and key helpers that touch no CA private key (safe in every process)."""

from __future__ import annotations

import hashlib
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from shared.pki.key_types import KEY_TYPES as KEY_TYPES  # re-exported: part of this module's API
from shared.pki.key_types import KeyType as KeyType

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def generate_key(key_type: KeyType) -> PrivateKey:
    """A new private key of the given type."""
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "rsa-2048":
        return rsa.generate_private_key(65537, 2048)
    if key_type == "rsa-3072":
        return rsa.generate_private_key(65537, 3072)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}: choose one of {', '.join(KEY_TYPES)}")


def signing_hash(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The hash to sign (or verify) with for `key` (None for Ed25519, which hashes internally)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def sign_message(key: PrivateKey, message: bytes) -> bytes:
    """`key`'s signature over `message`: ECDSA with the curve's hash, Ed25519, or RSA PKCS#1 v1.5 SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    digest = signing_hash(key)
    assert digest is not None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(message, padding.PKCS1v15(), digest)
    raise TypeError(f"cannot sign with a {type(key).__name__}: use an EC, Ed25519 or RSA key")


def verify_message(public_key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is `public_key`'s signature over `message` (the algorithm `sign_message` uses)."""
    digest = signing_hash(public_key)
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and digest is not None:
            public_key.verify(signature, message, ec.ECDSA(digest))
        elif isinstance(public_key, rsa.RSAPublicKey) and digest is not None:
            public_key.verify(signature, message, padding.PKCS1v15(), digest)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def spki_der(public_key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_spki(der: bytes) -> PublicKey:
    """A public key from DER SubjectPublicKeyInfo; ValueError if it is not an EC, Ed25519 or RSA key."""
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"unsupported public key type {type(key).__name__}")
    return key


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def build_csr(
    key: PrivateKey, dns_names: list[str], ip_addresses: list[str] | None = None, emails: list[str] | None = None
) -> bytes:
    """A PEM CSR for `dns_names` (the first is also the CN), IP addresses and emails, signed by `key`."""
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses or []]
    names += [x509.RFC822Name(e) for e in emails or []]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])] if dns_names else [])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, signing_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def spki_sha256(public_key: PublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo (the key's stable identity)."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER."""
    return cert.fingerprint(hashes.SHA256()).hex()


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as lower-case hex without leading zeros."""
    return format(cert.serial_number, "x")


def normalise_serial(serial: str) -> str:
    """A serial as Certbus writes it: lower-case hex, no 0x prefix, colons or leading zeros."""
    text = serial.strip().lower().removeprefix("0x").replace(":", "")
    return text.lstrip("0") or "0"


def csr_names(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a CSR asks for, from its SAN extension."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips
