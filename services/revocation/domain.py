"""Revocation decisions: pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from shared.crypto import normalise_serial
from shared.reasons import Reason, reason_flag

__all__ = ["Known", "decide", "normalise_serial"]


@dataclass(frozen=True)
class Known:
    """What revocation knows of a certificate."""

    serial: str
    cert_id: str
    issuer_id: str
    status: str
    spki_sha256: str | None = None


def decide(serial: str, reason: str, known: Known | None) -> Known | Reason:
    """The certificate to revoke, or why the request is refused."""
    try:
        reason_flag(reason)
    except ValueError as exc:
        return Reason(code="reason_invalid", message=str(exc))
    if known is None:
        return Reason(code="serial_unknown", message=f"no certificate with serial {serial} was issued by Certbus")
    if known.status == "revoked":
        return Reason(code="already_revoked", message=f"certificate {serial} is already revoked")
    return known
