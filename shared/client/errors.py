"""What a client call raises, and which services it asks: importable without NATS or pydantic, so
the `certbus` command line names them before it connects (and starts fast)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.contract.reasons import Reason

SERVICES = ("enrollment", "signing", "validation", "revocation", "audit")
# Services a deployment may leave out; health asks them only where they are deployed (ACME answers
# over HTTP, at CERTBUS_ACME_READYZ_URL, not on the bus).
ACME = "acme"
OPTIONAL_SERVICES = (ACME,)


class CertbusError(Exception):
    """Base of the SDK's errors; `code` names the case when the answering service gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(CertbusError):
    """NATS or the service that answers this call could not be reached in time."""


class Rejected(CertbusError):
    """A request was refused; `reasons` say why (machine code and human message)."""

    def __init__(self, reasons: list[Reason]) -> None:
        super().__init__("; ".join(f"{r.code}: {r.message}" for r in reasons))
        self.reasons = reasons


class Throttled(CertbusError):
    """The ingress stream holds as many of this identity's requests as it may (`code`
    `backlog_full`): wait until some are answered, then send again."""


class UnknownRequest(CertbusError):
    """Enrollment has no request with this id (never sent, or not consumed yet)."""


class Pending(CertbusError):
    """The profile needs an operator's approval: the request waits (see `certbus requests show`)."""

    def __init__(self, request_id: str, expires_at: datetime) -> None:
        super().__init__(f"request {request_id} waits for an operator's approval until {expires_at:%Y-%m-%d %H:%M} UTC")
        self.request_id = request_id
        self.expires_at = expires_at
