"""Why things are refused (codes and messages), and RFC 5280 revocation reasons."""

from __future__ import annotations

from cryptography import x509
from pydantic import BaseModel, ConfigDict


class Reason(BaseModel):
    """Why something was refused: a stable machine code and a message a person can act on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str
    message: str


# certificateHold is deliberately absent: a revocation is final. removeFromCRL and
# aACompromise have no meaning for this CA.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}


def reason_flag(name: str) -> x509.ReasonFlags:
    """The x509 reason for a reason name; ValueError names the accepted ones."""
    try:
        return REASONS[name]
    except KeyError:
        raise ValueError(f"unknown revocation reason {name!r}: use one of {', '.join(REASONS)}") from None
