"""The client side as a service may use it, and no more.

Validation requests its own OCSP responder certificate, and ACME its orders' certificates, like
any requester (`CertbusClient`, `Pending`, `Rejected`, `Unreachable`); the offline auditor
(`certbus-audit`) prints its answers as `certbus audit` does.
"""

from shared.client.cli.audit_views import print_replay, print_verify, replay_failed
from shared.client.cli.common import JsonOpt, emit_json, err
from shared.client.sdk import CertbusClient, Pending, Rejected, Unreachable

__all__ = [
    "CertbusClient",
    "JsonOpt",
    "Pending",
    "Rejected",
    "Unreachable",
    "emit_json",
    "err",
    "print_replay",
    "print_verify",
    "replay_failed",
]
