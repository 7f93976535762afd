"""Why things are refused (codes and messages), and RFC 5280 revocation reasons."""

from __future__ import annotations

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.contract.revocation_reasons import REVOCATION_REASONS

MAX_MESSAGE = 2048
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def printable(text: str) -> str:
    """`text` with control characters (NUL included) written as \\xNN: safe to store and to show."""
    return text.translate(_CONTROL)


class Reason(BaseModel):
    """Why something was refused: a stable machine code and a message a person can act on.

    Messages often quote what the requester sent, so control characters are escaped: a NUL in a
    hostile name must not reach a terminal or a database column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(max_length=128)
    message: str = Field(max_length=MAX_MESSAGE)

    @field_validator("message", mode="before")
    @classmethod
    def _printable(cls, value: object) -> object:
        """Escaped, and cut to the bound: a reason quoting a huge hostile name still says why."""
        return printable(value)[:MAX_MESSAGE] if isinstance(value, str) else value


# Each name is its x509 reason flag's value.
REASONS: dict[str, x509.ReasonFlags] = {name: x509.ReasonFlags(name) for name in REVOCATION_REASONS}


def reason_flag(name: str) -> x509.ReasonFlags:
    """The x509 reason for a reason name; ValueError names the accepted ones."""
    try:
        return REASONS[name]
    except KeyError:
        raise ValueError(f"unknown revocation reason {name!r}: use one of {', '.join(REASONS)}") from None
