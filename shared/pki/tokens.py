"""One-time enrollment tokens: a provisioner-signed JWT bound to a holder key.

The operator's side (`certbus token create`) signs a JWT with the provisioner's private key (EdDSA
for an Ed25519 key, ES256 for an EC P-256 one). The JWT names the allowed names and profile, a
unique id (`jti`), a short expiry and a fresh holder public key (`cnf`). The printed token is
`<jwt>~<holder private key>`. At enrollment the requester puts only the JWT on the log, plus the
holder key's signature over the request id and the CSR: whoever reads the log can neither reuse
the token for another CSR nor learn a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

AUDIENCE = "certbus-enroll"
ProvisionerKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
ProvisionerPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PROOF_CONTEXT = b"certbus-enroll-proof-v1"


class TokenError(ValueError):
    """A token that cannot be used, with a reason code and a message a person can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token allows."""

    token_id: str
    provisioner_id: str
    subject: str
    dns_names: tuple[str, ...]
    profile: str
    expires_at: datetime
    holder_key: ed25519.Ed25519PublicKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def algorithm_for(key: object) -> str:
    """The JWT algorithm a provisioner key signs with: EdDSA (Ed25519) or ES256 (EC P-256)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return "ES256"
    raise TokenError("provisioner_key_unsupported", "a provisioner key must be Ed25519 (EdDSA) or EC P-256 (ES256)")


def create_token(
    provisioner_key: ProvisionerKey,
    provisioner_id: str,
    dns_names: list[str],
    now: datetime,
    ttl: timedelta,
    profile: str = "tls-server",
    subject: str | None = None,
) -> str:
    """A one-time token for `dns_names`, valid for `ttl` (the secret half stays in the string)."""
    if not dns_names:
        raise ValueError("a token must allow at least one name")
    holder = ed25519.Ed25519PrivateKey.generate()
    holder_pub = holder.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    claims = {
        "iss": provisioner_id,
        "aud": AUDIENCE,
        "sub": subject or dns_names[0],
        "jti": str(uuid.uuid4()),
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()) - 30,
        "exp": int((now + ttl).timestamp()),
        "sans": list(dns_names),
        "profile": profile,
        "cnf": {"kty": "OKP", "crv": "Ed25519", "x": _b64(holder_pub)},
    }
    signed = jwt.encode(
        claims, provisioner_key, algorithm=algorithm_for(provisioner_key), headers={"kid": provisioner_id}
    )
    seed = holder.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return f"{signed}~{_b64(seed)}"


def split_token(token: str) -> tuple[str, ed25519.Ed25519PrivateKey]:
    """The public JWT and the holder's private key of a printed token."""
    jwt_part, sep, seed = token.strip().rpartition("~")
    if not sep or not jwt_part:
        raise TokenError("token_malformed", "the token is not of the form <jwt>~<holder key>")
    try:
        return jwt_part, ed25519.Ed25519PrivateKey.from_private_bytes(_unb64(seed))
    except ValueError as exc:
        raise TokenError("token_malformed", "the token's holder key is not valid") from exc


def _proof_message(request_id: str, csr_der: bytes) -> bytes:
    return PROOF_CONTEXT + b"|" + request_id.encode() + b"|" + hashlib.sha256(csr_der).digest()


def prove(holder: ed25519.Ed25519PrivateKey, request_id: str, csr_der: bytes) -> str:
    """The holder's signature binding a token to one request and one CSR."""
    return _b64(holder.sign(_proof_message(request_id, csr_der)))


# A compact JWS of three unpadded base64url segments: what `create_token` writes.
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")


def _plain_header(token_jwt: str) -> dict[str, object] | None:
    """The header of a JWT whose header segment is plain base64url JSON, read without PyJWT (which
    checks every segment character by character in Python, ~30 us a call); None for anything else."""
    parts = _COMPACT_JWS.fullmatch(token_jwt)
    if parts is None or any(len(part) % 4 == 1 for part in parts.groups()):
        return None
    segment = parts[1]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def provisioner_id_of(token_jwt: str) -> str:
    """The provisioner named in a token's header (not yet verified: `verify_token` checks the whole
    token, header included, against this provisioner's key)."""
    header = _plain_header(token_jwt)
    try:
        kid = header.get("kid") if header is not None else jwt.get_unverified_header(token_jwt).get("kid")
    except jwt.InvalidTokenError as exc:
        raise TokenError("token_malformed", f"the token is not a JWT: {exc}") from exc
    if not isinstance(kid, str) or not kid:
        raise TokenError("token_malformed", "the token names no provisioner (kid)")
    return kid


def verify_token(
    token_jwt: str,
    proof: str,
    provisioner_key: ProvisionerPublicKey,
    request_id: str,
    csr_der: bytes,
    now: datetime,
    max_ttl: timedelta,
) -> TokenClaims:
    """Check signature, audience, expiry, lifetime and holder proof; return the claims."""
    try:
        claims = jwt.decode(
            token_jwt,
            provisioner_key,
            algorithms=[algorithm_for(provisioner_key)],
            audience=AUDIENCE,
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["exp", "iat", "jti", "iss", "sans", "cnf"],
            },
        )
    except jwt.InvalidSignatureError as exc:
        raise TokenError("token_forged", "the token's signature does not match its provisioner") from exc
    except jwt.InvalidTokenError as exc:
        raise TokenError("token_malformed", f"the token is not valid: {exc}") from exc
    if claims["iss"] != provisioner_id_of(token_jwt):
        raise TokenError("token_malformed", "the token's issuer does not match the provisioner whose key signed it")
    ts = now.timestamp()
    if claims["exp"] <= ts:
        raise TokenError("token_expired", "the token has expired: ask the operator for a new one")
    if claims.get("nbf", 0) > ts:
        raise TokenError("token_not_yet_valid", "the token is not valid yet (check clocks)")
    if claims["exp"] - claims["iat"] > max_ttl.total_seconds():
        raise TokenError(
            "token_lifetime_too_long",
            f"the token lives {claims['exp'] - claims['iat']} s; at most {int(max_ttl.total_seconds())} s is allowed",
        )
    try:
        holder = ed25519.Ed25519PublicKey.from_public_bytes(_unb64(claims["cnf"]["x"]))
        holder.verify(_unb64(proof), _proof_message(request_id, csr_der))
    except (InvalidSignature, ValueError, KeyError, TypeError) as exc:
        raise TokenError(
            "token_proof_invalid",
            "the request is not signed by the token's holder key (token copied from the log?)",
        ) from exc
    return TokenClaims(
        token_id=str(claims["jti"]),
        provisioner_id=str(claims["iss"]),
        subject=str(claims.get("sub", "")),
        dns_names=tuple(str(n) for n in claims["sans"]),
        profile=str(claims.get("profile", "")),
        expires_at=datetime.fromtimestamp(claims["exp"]).astimezone(),
        holder_key=holder,
    )
