"""Revocation decisions: pure, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.contract.events import revocation_message
from shared.contract.reasons import Reason, reason_flag
from shared.contract.revocation_reasons import REASON_CODES
from shared.pki.crypto import load_spki, normalise_serial, verify_message

__all__ = [
    "Ask",
    "Known",
    "acme_proof_valid",
    "authority",
    "compromised_by",
    "decide",
    "decide_destruction",
    "holder_proof_valid",
    "normalise_serial",
    "public_key_of",
]

Authority = Literal["holder", "operator"]
AuthorisedBy = Literal["holder", "requester", "operator", "key_compromise", "ca_compromise"]
HOW_TO_ASK = (
    "sign the request with the certificate's private key (`certbus revoke SERIAL --key key.pem`, "
    "or `revoke(serial, reason, key=...)` in the SDK), ask as the requester that obtained it, "
    "or ask an operator (`certbus revoke SERIAL --operator NAME`)"
)
# Reasons the requester that obtained a certificate may not give without its key: keyCompromise
# blocks the key and revokes every certificate of it, so it needs the key's proof (as Let's Encrypt
# asks of ACME clients); cACompromise is an operator's alone.
_NOT_FOR_REQUESTERS = ("keyCompromise", "cACompromise")
# The JWS algorithms an ACME client signs with (RFC 8555 §6.2), as ACME's own service accepts them.
_JWS_ALGORITHMS = ["ES256", "ES384", "ES512", "EdDSA", "RS256"]


@dataclass(frozen=True)
class Known:
    """What revocation knows of a certificate."""

    serial: str
    cert_id: str
    issuer_id: str
    status: str
    spki_sha256: str | None = None
    spki_der: bytes | None = None
    fingerprint_sha256: str | None = None
    destroyed_at: datetime | None = None
    requester: str | None = None  # the identity that obtained it (None: learnt before it was recorded)


@dataclass(frozen=True)
class Ask:
    """A revocation request as revocation judges it: who asks, with what authority and proof."""

    request_id: str
    serial: str
    reason: str
    by: str
    authority: Authority
    proof: str | None = None
    invalidity_date: datetime | None = None
    proof_jws: str | None = None


def decide(ask: Ask, known: Known | None, now: datetime | None = None) -> Known | Reason:
    """The certificate to revoke, or why the request is refused.

    The reason is checked first, then that the serial was issued, then who asks (the holder's proof
    or an operator), and last the certificate's state.
    """
    try:
        reason_flag(ask.reason)
    except ValueError as exc:
        return Reason(code="reason_invalid", message=str(exc))
    if ask.invalidity_date is not None and now is not None and ask.invalidity_date > now:
        return Reason(
            code="invalidity_date_invalid",
            message=f"the invalidity date {ask.invalidity_date.isoformat()} is in the future: give when the key "
            "was (or may have been) compromised",
        )
    if known is None:
        return Reason(code="serial_unknown", message=f"no certificate with serial {ask.serial} was issued by Certbus")
    if known.destroyed_at is not None:
        return _destroyed(known)
    if ask.authority == "holder":
        refused = _holder_refused(ask, known)
        if refused is not None:
            return refused
    if known.status == "revoked":
        return Reason(code="already_revoked", message=f"certificate {ask.serial} is already revoked")
    return known


def decide_destruction(serial: str, known: Known | None) -> Known | Reason:
    """The certificate to destroy, or why the order is refused: a certificate Certbus issued and did
    not destroy already. (Only an operator can have ordered it: the order's subject says so, and its
    signatures were checked before it got here.)"""
    if known is None:
        return Reason(
            code="certificate_unknown",
            message=f"no certificate with serial {serial} was issued by Certbus: check the serial "
            "(`certbus status SERIAL`, hex)",
        )
    if known.destroyed_at is not None:
        return _destroyed(known)
    return known


def _destroyed(known: Known) -> Reason:
    at = known.destroyed_at.isoformat() if known.destroyed_at else "?"
    return Reason(
        code="certificate_destroyed",
        message=f"certificate {known.serial} was destroyed at {at} (and revoked): nothing more can be done with it",
    )


def authority(ask: Ask, known: Known) -> AuthorisedBy:
    """What authorises a request `decide` accepted: an operator's order, the holder's proof, or the
    requester that obtained the certificate."""
    if ask.authority == "operator":
        return "operator"
    return "holder" if _proof_holds(ask, known) else "requester"


def _holder_refused(ask: Ask, known: Known) -> Reason | None:
    """Why a holder's request is not authorised, or None if its proof holds or it comes from the
    requester that obtained the certificate."""
    if ask.reason == "cACompromise":
        return Reason(
            code="not_authorised",
            message="only an operator may revoke for cACompromise (`certbus revoke SERIAL --operator NAME`)",
        )
    if not ask.proof and not ask.proof_jws:
        if known.requester is not None and ask.by == known.requester:
            if ask.reason in _NOT_FOR_REQUESTERS:
                return Reason(
                    code="not_authorised",
                    message=f"the requester that obtained {ask.serial} may not revoke it for {ask.reason} without "
                    "its key: sign the request with the certificate's private key, or ask an operator",
                )
            return None
        return Reason(
            code="not_authorised",
            message=f"the request for {ask.serial} carries no proof that it comes from the holder, and "
            f"{ask.by!r} is not the requester that obtained it: {HOW_TO_ASK}",
        )
    if known.spki_der is None:
        return Reason(
            code="not_authorised",
            message=f"certificate {ask.serial} was learnt before revocation kept public keys, so a holder's proof "
            "cannot be checked: ask an operator (`certbus revoke SERIAL --operator NAME`)",
        )
    if not _proof_holds(ask, known):
        what = "ACME request" if ask.proof_jws else "proof"
        return Reason(
            code="not_authorised",
            message=f"the {what} is not certificate {ask.serial}'s key's signature over this request "
            f"({'its certificate and reason' if ask.proof_jws else 'request id, serial and reason'}): {HOW_TO_ASK}",
        )
    return None


def _proof_holds(ask: Ask, known: Known) -> bool:
    if known.spki_der is None:
        return False
    if ask.proof_jws:
        return acme_proof_valid(known.spki_der, ask.proof_jws, ask.serial, ask.reason)
    if ask.proof:
        return holder_proof_valid(known.spki_der, ask.proof, revocation_message(ask.request_id, ask.serial, ask.reason))
    return False


def acme_proof_valid(public_key_der: bytes, compact: str, serial: str, reason: str) -> bool:
    """Whether `compact` is an ACME revokeCert request (RFC 8555 §7.6) signed with the key in
    `public_key_der`, for the certificate with `serial` and for `reason` (no reason: unspecified)."""
    try:
        key = load_spki(public_key_der)
        signed = jwt.api_jws.PyJWS().decode_complete(compact, key=key, algorithms=_JWS_ALGORITHMS)
        payload = json.loads(signed["payload"])
        text = payload["certificate"]
        der = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        cert = x509.load_der_x509_certificate(der)
        code = payload.get("reason", 0)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, binascii.Error):
        return False
    if not isinstance(code, int) or isinstance(code, bool):
        return False
    return f"{cert.serial_number:x}" == normalise_serial(serial) and REASON_CODES.get(code) == reason


def compromised_by(serial: str) -> str:
    """Who revokes the other certificates of a key revoked for keyCompromise with certificate `serial`."""
    return f"revocation (key of {serial} compromised)"


def holder_proof_valid(public_key_der: bytes, proof: str, message: bytes) -> bool:
    """Whether `proof` (base64) is the signature over `message` by the key in `public_key_der`."""
    try:
        signature = base64.b64decode(proof, validate=True)
        key = load_spki(public_key_der)
    except (binascii.Error, ValueError):
        return False
    return verify_message(key, signature, message)


def public_key_of(cert_pem: str) -> tuple[bytes, str] | None:
    """A certificate's SubjectPublicKeyInfo (DER) and its SHA-256 (hex), or None if it cannot be read."""
    try:
        key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    except ValueError:
        return None
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der, hashlib.sha256(der).hexdigest()
