"""A minimal ACME client for tests: JWS built by hand with `cryptography` alone (not with the
library the server verifies with), so that a server-side mistake cannot cancel out on both ends."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

AccountKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int | None = None) -> str:
    size = size or (value.bit_length() + 7) // 8
    return b64(value.to_bytes(size, "big"))


def alg_of(key: AccountKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return {"secp256r1": "ES256", "secp384r1": "ES384"}[key.curve.name]


def public_jwk(key: AccountKey) -> dict[str, Any]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))}
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
    size = (key.curve.key_size + 7) // 8
    point = key.public_key().public_numbers()
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
    return {"kty": "EC", "crv": crv, "x": _int(point.x, size), "y": _int(point.y, size)}


def sign(key: AccountKey, data: bytes, alg: str | None = None) -> bytes:
    alg = alg or alg_of(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    digest = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def jws(
    key: AccountKey,
    url: str,
    payload: dict[str, Any] | None,
    nonce: str,
    *,
    kid: str | None = None,
    header: dict[str, Any] | None = None,
) -> bytes:
    """A flattened-JSON JWS as RFC 8555 §6.2 asks: signed with `key`, naming it by `kid` or carrying
    its jwk; `payload` None is POST-as-GET. `header` overrides or adds protected members."""
    protected: dict[str, Any] = {"alg": alg_of(key), "nonce": nonce, "url": url}
    protected |= {"kid": kid} if kid else {"jwk": public_jwk(key)}
    protected |= header or {}
    p = b64(json.dumps(protected).encode())
    body = "" if payload is None else b64(json.dumps(payload).encode())
    signature = sign(key, f"{p}.{body}".encode(), protected["alg"] if protected["alg"] in ("ES256", "ES384") else None)
    return json.dumps({"protected": p, "payload": body, "signature": b64(signature)}).encode()
