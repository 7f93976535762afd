"""Operators authenticate: every operator command counts only with enough valid signatures by
operator keys registered on the log before it.

- An operator's key (Ed25519 or EC P-256) is registered by `OperatorRegistered`. The first one on
  an empty log is the genesis and is signed by its own key; every later registration, removal or
  quorum change needs the `operator` quorum of registered operators, and a registration also a
  signature by the new key itself (proof that its owner holds it).
- A signature covers `operator_message`: the command as it travels (every field but the
  signatures, canonically encoded), so it cannot be moved to another command or altered.
- The two-person rule: `QuorumSet` says how many distinct operators must sign a kind of command
  (`operator`, `ca_compromise`, `ca_retire`, `ca_ceremony`; 1 unless set); a profile's `approvals_required` says
  how many distinct operators must approve a request of it.
- Whoever NATS let publish the command is not its authority: the operators recorded are the
  owners of the keys that signed it.

Every service that consumes operator commands keeps the registry in its own schema, applied in
log order by the shared consumer path (`shared.runtime.consumer.apply_events`), so a command is judged by
the registry as the log had it just before the command.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.contract.events import (
    CaCompromised,
    CaRetired,
    Event,
    IssuingCaCertified,
    OperatorCommand,
    OperatorRegistered,
    OperatorRemoved,
    OperatorSignature,
    QuorumCommand,
    QuorumSet,
    RootCaCreated,
    RootCrlSigned,
    operator_message,
)
from shared.pki.crypto import PrivateKey, PublicKey, load_spki, sign_message, spki_der, verify_message

if TYPE_CHECKING:  # the registry reads a service's database; a client signing commands needs no driver
    import asyncpg

# The registry's own events: applied by every consumer of operator commands.
REGISTRY: tuple[type[Event], ...] = (OperatorRegistered, OperatorRemoved, QuorumSet)
QUORUM_OF: dict[type[Event], QuorumCommand] = {
    OperatorRegistered: "operator",
    OperatorRemoved: "operator",
    QuorumSet: "operator",
    CaCompromised: "ca_compromise",
    CaRetired: "ca_retire",
    RootCaCreated: "ca_ceremony",
    IssuingCaCertified: "ca_ceremony",
    RootCrlSigned: "ca_ceremony",
}


class NotAuthorised(ValueError):
    """An operator command without enough valid signatures by registered operators."""


def public_key_b64(key: PublicKey) -> str:
    """A public key as `OperatorRegistered.public_key` carries it (base64 SubjectPublicKeyInfo DER)."""
    return base64.b64encode(spki_der(key)).decode()


def signed_payload(command: OperatorCommand) -> bytes:
    """What the signatures of a command cover. The command must be as it travels: one parsed from
    the wire, or one about to be sent (see `sign`): its set fields are what the wire carries."""
    return operator_message(command.model_dump(mode="json", exclude_unset=True))


def sign(command: OperatorCommand, operator: str, key: PrivateKey) -> OperatorCommand:
    """`command` with `operator`'s signature added (made by `key`); sign a command exactly as it
    will be sent, after every field is final."""
    wire: dict[str, Any] = json.loads(command.model_dump_json())
    signature = base64.b64encode(sign_message(key, operator_message(wire))).decode()
    signatures = [*command.signatures, OperatorSignature(operator=operator, signature=signature)]
    # Parsed back from the wire form, so that every field is "set", as it is on the receiving side.
    signed: OperatorCommand = type(command).model_validate({**wire, "signatures": [s.model_dump() for s in signatures]})
    return signed


def registration(name: str, key: PrivateKey, registered_by: str, at: datetime) -> OperatorRegistered:
    """An operator's registration of its own key, signed by that key (the proof of possession). On
    an empty log it is the genesis as it is; otherwise the `operator` quorum co-signs it."""
    command = OperatorRegistered.first(
        name,
        producer="operator",
        at=at,
        correlation_id=f"operator-{name}",
        public_key=public_key_b64(key.public_key()),
        registered_by=registered_by,
    )
    signed = sign(command, name, key)
    assert isinstance(signed, OperatorRegistered)
    return signed


@dataclass(frozen=True)
class Registry:
    """The operators' keys (by name) and the quorums, as the log had them at some position."""

    keys: Mapping[str, PublicKey]
    quorums: Mapping[str, int]

    def required(self, kind: QuorumCommand) -> int:
        """How many distinct operators must sign a command of `kind`."""
        return self.quorums.get(kind, 1)


def signers(command: OperatorCommand, registry: Registry) -> tuple[str, ...]:
    """The distinct registered operators whose signatures on `command` verify, in order; raises
    NotAuthorised if any signature does not verify, names an unregistered operator or repeats one,
    or if there are fewer than the quorum of its kind asks.

    A first `OperatorRegistered` on an empty registry (the genesis) verifies with its own key."""
    payload = signed_payload(command)
    keys = dict(registry.keys)
    own_key = _registered_key(command) if isinstance(command, OperatorRegistered) else None
    genesis = isinstance(command, OperatorRegistered) and not keys
    names: list[str] = []
    proven = False
    for signature in command.signatures:
        if own_key is not None and signature.operator == command.aggregate_id and _valid(own_key, signature, payload):
            proven = True  # the new key's own signature: proof of possession, not a vote
            if genesis:
                names.append(signature.operator)
            continue
        key = keys.get(signature.operator)
        if key is None:
            raise NotAuthorised(f"{signature.operator!r} is not a registered operator (or its signature is not valid)")
        if not _valid(key, signature, payload):
            raise NotAuthorised(f"{signature.operator!r}'s signature does not verify over this command")
        if signature.operator in names:
            raise NotAuthorised(f"{signature.operator!r} signed twice")
        names.append(signature.operator)
    if own_key is not None and not proven:
        raise NotAuthorised(f"the key registered for {command.aggregate_id!r} did not sign its own registration")
    kind = QUORUM_OF.get(type(command))
    required = 1 if genesis or kind is None else registry.required(kind)
    if len(names) < required:
        raise NotAuthorised(
            f"{type(command).__name__} needs {required} distinct operators' signatures, it has {len(names)}"
            + (f" ({', '.join(names)})" if names else "")
        )
    return tuple(names)


def applied(command: OperatorCommand, current: Registry) -> Registry:
    """The registry after `command`, one that `signers` accepted against `current`: what `authorise`
    records, in memory (`current` itself for a command that is not the registry's own). Raises
    NotAuthorised for a removal or a quorum that would leave some command impossible to sign."""
    if isinstance(command, OperatorRemoved | QuorumSet):
        _keep_quorums_reachable(command, current)
    keys, quorums = dict(current.keys), dict(current.quorums)
    if isinstance(command, OperatorRegistered):
        key = _registered_key(command)
        assert key is not None  # signers() checked the key's own signature
        keys[command.aggregate_id] = key
    elif isinstance(command, OperatorRemoved):
        keys.pop(command.aggregate_id, None)
    elif isinstance(command, QuorumSet):
        quorums[command.aggregate_id] = command.required
    else:
        return current
    return Registry(keys, quorums)


def _registered_key(command: OperatorRegistered) -> PublicKey | None:
    try:
        return load_spki(base64.b64decode(command.public_key, validate=True))
    except (binascii.Error, ValueError):
        return None


def _valid(key: PublicKey, signature: OperatorSignature, payload: bytes) -> bool:
    try:
        raw = base64.b64decode(signature.signature, validate=True)
    except binascii.Error:
        return False
    return verify_message(key, raw, payload)


# --- the registry in a service's schema ---------------------------------------------------------


async def registry(conn: asyncpg.Connection, seq: int) -> Registry:
    """The registry as the log had it just before position `seq`."""
    keys = {
        r["name"]: load_spki(bytes(r["public_key"]))
        for r in await conn.fetch(
            "SELECT name, public_key FROM operators "
            "WHERE registered_seq < $1 AND (ended_seq IS NULL OR ended_seq >= $1)",
            seq,
        )
    }
    quorums = {
        r["kind"]: r["required"]
        for r in await conn.fetch(
            "SELECT DISTINCT ON (kind) kind, required FROM quorums WHERE set_seq < $1 ORDER BY kind, set_seq DESC", seq
        )
    }
    return Registry(keys, quorums)


async def authorise(conn: asyncpg.Connection, command: OperatorCommand, seq: int) -> tuple[str, ...]:
    """Check `command`, at log position `seq`, against the registry as it was just before it (in
    the caller's transaction) and, if it changes the registry, record the change from `seq` on;
    returns its signers, or raises NotAuthorised. Each of a service's consumers of operator
    commands reads the registry's commands: the first records a change (and how far it has
    recorded, `registry_position`), the others find it there and record nothing."""
    current = await registry(conn, seq)
    names = signers(command, current)
    if isinstance(command, OperatorRemoved | QuorumSet):
        _keep_quorums_reachable(command, current)
    if not isinstance(command, REGISTRY):
        return names
    recorded = await conn.fetchval("SELECT through FROM registry_position FOR UPDATE")
    if seq <= recorded:
        return names  # recorded already (by another consumer of this service, or before the history)
    await conn.execute("UPDATE registry_position SET through = $1", seq)
    if isinstance(command, OperatorRegistered):
        key = _registered_key(command)
        assert key is not None  # signers() checked the key's own signature
        await _end_key(conn, command.aggregate_id, seq)
        await conn.execute(
            "INSERT INTO operators (name, public_key, registered_seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            command.aggregate_id,
            spki_der(key),
            seq,
        )
    elif isinstance(command, OperatorRemoved):
        await _end_key(conn, command.aggregate_id, seq)
    elif isinstance(command, QuorumSet):
        await conn.execute(
            "INSERT INTO quorums (kind, required, set_seq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            command.aggregate_id,
            command.required,
            seq,
        )
    return names


async def _end_key(conn: asyncpg.Connection, name: str, seq: int) -> None:
    """Operator `name`'s current key counts no more from position `seq` (replaced or removed)."""
    await conn.execute(
        "UPDATE operators SET ended_seq = $2 WHERE name = $1 AND registered_seq < $2 AND ended_seq IS NULL", name, seq
    )


def _keep_quorums_reachable(command: OperatorRemoved | QuorumSet, current: Registry) -> None:
    """Refuse a removal or a quorum that would leave some command impossible to sign."""
    operators = set(current.keys) - ({command.aggregate_id} if isinstance(command, OperatorRemoved) else set())
    quorums = dict(current.quorums)
    if isinstance(command, QuorumSet):
        quorums[command.aggregate_id] = command.required
    highest = max([1, *quorums.values()])
    if len(operators) < highest:
        raise NotAuthorised(
            f"this would leave {len(operators)} operator(s) for a quorum of {highest}: "
            "register another operator first, or lower the quorum"
        )


def recorded(names: Sequence[str]) -> str:
    """How a command's signers are recorded on the events it causes (`alice` or `alice+bob`)."""
    return "+".join(names)
