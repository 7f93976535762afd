"""External account binding (RFC 8555 §7.3.4): the checks of a newAccount's `externalAccountBinding`.

The binding is a flattened JWS whose protected header names an HMAC algorithm, the credential's key
id and the newAccount URL (and no nonce), whose payload is the account's key (the outer JWS's
`jwk`), and whose signature is an HMAC with the credential's key. Its structure is checked first
(`malformed`); the signature, compared in constant time, once the credential is found.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from services.acme.jws import MAX_URL_CHARS, base64url
from services.acme.problems import malformed, unauthorized

DIGESTS = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
MAX_KID_CHARS = 256


@dataclass(frozen=True)
class Binding:
    """A binding whose structure is sound, not yet verified."""

    alg: str
    kid: str
    signing_input: bytes  # protected.payload, as received
    signature: bytes
    payload: bytes


def parse(value: object, url: str) -> Binding:
    """The binding in a newAccount payload, if it is a well-formed EAB JWS for `url` (the newAccount
    URL); `malformed` otherwise."""
    if not isinstance(value, dict):
        raise malformed("externalAccountBinding must be a JWS object")
    if set(value) != {"protected", "payload", "signature"} or not all(isinstance(v, str) for v in value.values()):
        raise malformed("externalAccountBinding must have exactly the string members protected, payload and signature")
    try:
        header = json.loads(base64url(value["protected"], "externalAccountBinding's protected header"))
    except (ValueError, UnicodeDecodeError):
        raise malformed("externalAccountBinding's protected header is not JSON") from None
    if not isinstance(header, dict):
        raise malformed("externalAccountBinding's protected header is not a JSON object")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in DIGESTS:
        raise malformed(f"externalAccountBinding's alg {str(alg)[:32]!r} is not one of {', '.join(DIGESTS)}")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        raise malformed("externalAccountBinding's kid is missing or not a key id")
    if "nonce" in header:
        raise malformed("externalAccountBinding must not carry a nonce")
    bound_url = header.get("url")
    if not isinstance(bound_url, str) or len(bound_url) > MAX_URL_CHARS or bound_url != url:
        raise malformed("externalAccountBinding's url is not the newAccount URL")
    signature = base64url(value["signature"], "externalAccountBinding's signature")
    payload = base64url(value["payload"], "externalAccountBinding's payload")
    return Binding(alg, kid, f"{value['protected']}.{value['payload']}".encode(), signature, payload)


def verify(binding: Binding, hmac_key: bytes, jwk: dict[str, Any]) -> None:
    """`unauthorized` unless the binding's HMAC is the credential's (compared in constant time);
    `malformed` unless its payload is the account's key, `jwk`."""
    expected = hmac.new(hmac_key, binding.signing_input, DIGESTS[binding.alg]).digest()
    if not hmac.compare_digest(expected, binding.signature):
        raise unauthorized("externalAccountBinding's signature does not verify with that key id's key")
    try:
        bound_key = json.loads(binding.payload)
    except (ValueError, UnicodeDecodeError):
        raise malformed("externalAccountBinding's payload is not JSON") from None
    if bound_key != jwk:
        raise malformed("externalAccountBinding's payload is not the key this request is signed with")
