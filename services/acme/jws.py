"""The checks RFC 8555 §6.2-6.3 asks of every ACME POST, before its payload means anything.

A request is a JWS in flattened JSON serialization whose protected header names its algorithm, a
nonce the server issued, the URL it was sent to, and either the account's key (`jwk`, only for
newAccount and a revocation signed by the certificate's key) or the account's URL (`kid`). The
signature is checked with PyJWT over exactly the bytes received; nothing in the payload is read
before it verifies. An account's key is identified by its RFC 7638 thumbprint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.api_jws import PyJWS

from services.acme.problems import AcmeProblem, malformed

# RFC 8555 §6.2: ES256 and EdDSA, RS256 for older clients; ES384 as Boulder and step-ca accept it.
ALGORITHMS = ("ES256", "ES384", "EdDSA", "RS256")
_KEY_OF_ALGORITHM = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    "RS256": ("RSA", None),
}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
MAX_BODY_BYTES = 64 * 1024  # a finalize with an RSA-4096 CSR is under 4 kB
MAX_URL_CHARS = 2048
MAX_NONCE_CHARS = 256
_PUBLIC_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def bad_algorithm(detail: str) -> AcmeProblem:
    return AcmeProblem("badSignatureAlgorithm", detail, algorithms=list(ALGORITHMS))


@dataclass(frozen=True)
class Envelope:
    """A request's JWS, parsed but not yet verified: what its protected header says and the raw parts."""

    alg: str
    nonce: str
    url: str
    jwk: dict[str, Any] | None
    kid: str | None
    compact: str  # protected.payload.signature, as received

    def verify(self, jwk: dict[str, Any]) -> bytes:
        """The payload's bytes if the signature verifies with `jwk` under the header's algorithm."""
        key = public_key(jwk, self.alg)
        try:
            verified: dict[str, Any] = PyJWS().decode_complete(self.compact, key, algorithms=[self.alg])
        except jwt.InvalidSignatureError:
            raise malformed("JWS signature does not verify") from None
        except jwt.PyJWTError as e:
            raise malformed(f"JWS cannot be verified: {e}") from None
        payload: bytes = verified["payload"]
        return payload


def base64url(segment: str, what: str) -> bytes:
    try:
        if "=" in segment or "+" in segment or "/" in segment:
            raise ValueError("padded or not url-safe")
        return base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise malformed(f"{what} is not base64url") from None


def parse(body: bytes) -> Envelope:
    """Parse a request body as an ACME JWS (flattened JSON, protected header only) and check its header."""
    return _parse(body, inner=False)


def parse_inner(value: object) -> Envelope:
    """Parse keyChange's inner JWS (RFC 8555 §7.3.5): the payload of the outer one, signed by the new
    key, which it carries as `jwk`, with no nonce (its `nonce` is the empty string in the envelope)."""
    return _parse(json.dumps(value).encode(), inner=True)


def _parse(body: bytes, *, inner: bool) -> Envelope:
    if len(body) > MAX_BODY_BYTES:
        raise malformed(f"request body of {len(body)} bytes is over {MAX_BODY_BYTES}")
    try:
        outer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise malformed("request body is not JSON") from None
    if not isinstance(outer, dict):
        raise malformed("request body is not a JWS object")
    if "signatures" in outer:
        raise malformed("JWS must use the flattened JSON serialization, not the general one")
    if "header" in outer:
        raise malformed("JWS must not have an unprotected header")
    if set(outer) != {"protected", "payload", "signature"} or not all(isinstance(v, str) for v in outer.values()):
        raise malformed("JWS must have exactly the string members protected, payload and signature")
    try:
        header = json.loads(base64url(outer["protected"], "protected header"))
    except (ValueError, UnicodeDecodeError):
        raise malformed("protected header is not JSON") from None
    if not isinstance(header, dict):
        raise malformed("protected header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise bad_algorithm(f"JWS algorithm {str(alg)[:32]!r} is not one of {', '.join(ALGORITHMS)}")
    if ("jwk" in header) == ("kid" in header):
        raise malformed("protected header must have exactly one of jwk and kid")
    jwk, kid = header.get("jwk"), header.get("kid")
    if jwk is not None and not isinstance(jwk, dict):
        raise malformed("jwk is not a JSON object")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_URL_CHARS):
        raise malformed("kid is not an account URL")
    nonce = header.get("nonce")
    if inner:
        if nonce is not None or "kid" in header:
            raise malformed("the inner JWS of a key change must carry its jwk and no nonce or kid")
        nonce = ""
    elif not isinstance(nonce, str) or not nonce or len(nonce) > MAX_NONCE_CHARS:
        raise AcmeProblem("badNonce", "protected header has no usable nonce")
    url = header.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise malformed("protected header has no url")
    if header.get("b64", True) is not True or "crit" in header:
        raise malformed("JWS extensions (crit, b64) are not accepted")
    compact = f"{outer['protected']}.{outer['payload']}.{outer['signature']}"
    return Envelope(alg=alg, nonce=nonce, url=url, jwk=jwk, kid=kid, compact=compact)


def public_key(jwk: dict[str, Any], alg: str) -> Any:
    """The public key of a JWK fit for `alg`; refused (badPublicKey / badSignatureAlgorithm) otherwise."""
    kty = jwk.get("kty")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise AcmeProblem("badPublicKey", "jwk holds private key material")
    if kty not in _PUBLIC_MEMBERS:
        raise AcmeProblem("badPublicKey", f"jwk key type {str(kty)[:16]!r} is not EC, OKP or RSA")
    want_kty, want_crv = _KEY_OF_ALGORITHM[alg]
    if kty != want_kty or (want_crv is not None and jwk.get("crv") != want_crv):
        raise bad_algorithm(f"algorithm {alg} does not fit a {kty} {jwk.get('crv', '')} key".replace("  ", " "))
    try:
        key = jwt.PyJWK({m: jwk[m] for m in _PUBLIC_MEMBERS[kty] if m in jwk}, algorithm=alg).key
    except (jwt.PyJWTError, KeyError, ValueError, TypeError) as e:
        raise AcmeProblem("badPublicKey", f"jwk is not a usable {kty} public key: {e}") from None
    if isinstance(key, rsa.RSAPublicKey) and not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise AcmeProblem("badPublicKey", f"RSA key of {key.key_size} bits; {MIN_RSA_BITS}-{MAX_RSA_BITS} accepted")
    return key


def account_key(jwk: dict[str, Any]) -> Any:
    """The public key of an account's stored JWK, by the algorithm its kind of key signs with."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    alg = next((a for a, (t, c) in _KEY_OF_ALGORITHM.items() if t == kty and c in (None, crv)), None)
    if alg is None:
        raise AcmeProblem("badPublicKey", f"no accepted algorithm signs with a {str(kty)[:16]} {str(crv)[:16]} key")
    return public_key(jwk, alg)


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    kty = jwk.get("kty")
    if kty not in _PUBLIC_MEMBERS:
        raise AcmeProblem("badPublicKey", f"jwk key type {str(kty)[:16]!r} is not EC, OKP or RSA")
    try:
        canonical = {m: jwk[m] for m in _PUBLIC_MEMBERS[kty]}
    except KeyError as e:
        raise AcmeProblem("badPublicKey", f"jwk lacks {e.args[0]}") from None
    digest = hashlib.sha256(json.dumps(canonical, separators=(",", ":"), sort_keys=True).encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def payload_object(payload: bytes) -> dict[str, Any] | None:
    """A verified payload as a JSON object; None for POST-as-GET (an empty payload)."""
    if payload == b"":
        return None
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise malformed("payload is not JSON") from None
    if not isinstance(value, dict):
        raise malformed("payload is not a JSON object")
    return value
