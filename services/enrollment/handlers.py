"""Enrollment's subscribers: thin, they parse, decide with `domain` and persist with `store`."""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from faststream.nats.annotations import NatsMessage

from services.enrollment import domain, store
from shared.consumer import Delivery, EventRejected
from shared.events import (
    EnrollmentApproved,
    EnrollmentRejected,
    EnrollmentRequested,
    Event,
    ProvisionerRegistered,
    Reason,
)
from shared.outbox import OutboxEntry, enqueue
from shared.service import Runtime
from shared.settings import EnrollmentSettings
from shared.tokens import TokenClaims, TokenError, provisioner_id_of, verify_token

NAME = "enrollment"


def register(rt: Runtime, settings: EnrollmentSettings) -> None:
    """Attach enrollment's consumers to the runtime."""
    rt.publishes(EnrollmentApproved, EnrollmentRejected)

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        if isinstance(event, ProvisionerRegistered):
            await _register_provisioner(conn, event)
            return []
        if isinstance(event, EnrollmentRequested):
            return [await _decide(conn, rt, settings, event, delivery.accepted_at)]
        raise EventRejected(f"enrollment does not consume {event.event_type}")

    requests = rt.group_commit("requests", apply)

    @rt.consumer("requests", [EnrollmentRequested.filter(rt.root), ProvisionerRegistered.filter(rt.root)])
    async def on_event(event: EnrollmentRequested | ProvisionerRegistered, msg: NatsMessage) -> None:
        await requests.submit(event, Delivery.of(msg))


async def _register_provisioner(conn: asyncpg.Connection, event: ProvisionerRegistered) -> None:
    await store.save_provisioner(
        conn, event.aggregate_id, event.name, event.public_key_pem, event.occurred_at, event.registered_by
    )


async def _decide(
    conn: asyncpg.Connection,
    rt: Runtime,
    settings: EnrollmentSettings,
    request: EnrollmentRequested,
    accepted_at: datetime,
) -> OutboxEntry:
    now = rt.clock.now()
    outcome = await _check(conn, rt, settings, request, accepted_at)
    reasons = outcome if isinstance(outcome, list) else []
    envelope = {
        "aggregate_id": request.aggregate_id,
        "occurred_at": now,
        "correlation_id": request.correlation_id,
        "causation_id": str(request.event_id),
        "producer": NAME,
    }
    decision: Event
    if isinstance(outcome, list):
        decision = EnrollmentRejected(reasons=outcome, rejected_by=NAME, **envelope)
        names: list[str] = []
    else:
        approval, claims = outcome
        names = approval.dns_names
        decision = EnrollmentApproved(
            csr_pem=request.csr_pem,
            profile=request.profile,
            dns_names=approval.dns_names,
            validity_days=approval.validity_days,
            provisioner_id=claims.provisioner_id,
            token_id=claims.token_id,
            requester=request.requester,
            **envelope,
        )
    await store.record_decision(
        conn,
        request.aggregate_id,
        request.requester,
        request.profile,
        reasons,
        names,
        request.occurred_at,
        now,
    )
    return await enqueue(conn, decision, rt.root)


@functools.lru_cache(maxsize=256)
def _public_key(pem: str) -> PublicKeyTypes:
    """A provisioner's key parsed once per process (read from the table on every request, so a
    change of key takes effect at once; only the parsing is cached, by the PEM itself)."""
    return serialization.load_pem_public_key(pem.encode())


async def _check(
    conn: asyncpg.Connection,
    rt: Runtime,
    settings: EnrollmentSettings,
    request: EnrollmentRequested,
    accepted_at: datetime,
) -> tuple[domain.Approval, TokenClaims] | list[Reason]:
    csr = domain.load_csr(request.csr_pem)
    if isinstance(csr, Reason):
        return [csr]
    try:
        provisioner_id = provisioner_id_of(request.token)
        key_pem = await store.provisioner_key(conn, provisioner_id)
        if key_pem is None:
            raise TokenError("provisioner_unknown", f"the token's provisioner {provisioner_id!r} is not registered")
        key = _public_key(key_pem)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise TokenError("provisioner_unknown", f"provisioner {provisioner_id!r} has no Ed25519 key")
        claims = verify_token(
            request.token,
            request.token_proof,
            key,
            request.aggregate_id,
            domain.csr_der(csr),
            # A token is judged at the time the log accepted the request, not when enrollment got
            # to it: a request accepted while enrollment was down is not refused for that.
            accepted_at,
            timedelta(seconds=settings.max_token_ttl_s),
        )
    except TokenError as exc:
        return [Reason(code=exc.code, message=exc.message)]
    if not await store.spend_token(conn, claims.token_id, claims.provisioner_id, request.aggregate_id, rt.clock.now()):
        return [Reason(code="token_reused", message="the token has already been used: each token enrolls once")]
    decision = domain.review(csr, claims, request.profile, settings.default_validity_days)
    if isinstance(decision, list):
        return decision
    return decision, claims
