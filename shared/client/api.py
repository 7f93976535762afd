"""The client side as a service may use it, and no more.

Validation requests its own OCSP responder certificate like any requester (`CertbusClient`,
`Pending`); the offline auditor (`certbus-audit`) prints its answers as `certbus audit` does.
"""

from shared.client.cli.audit_views import print_replay, print_verify, replay_failed
from shared.client.cli.common import JsonOpt, emit_json, err
from shared.client.sdk import CertbusClient, Pending

__all__ = ["CertbusClient", "JsonOpt", "Pending", "emit_json", "err", "print_replay", "print_verify", "replay_failed"]
