"""Revocation's subscriber: learns issued certificates, decides revocation requests."""

from __future__ import annotations

import asyncpg
from faststream.nats.annotations import NatsMessage

from services.revocation import domain, store
from shared.consumer import Delivery, EventRejected
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    Event,
    KeyBlocked,
    RevocationRejected,
    RevocationRequested,
)
from shared.outbox import OutboxEntry, enqueue
from shared.reasons import printable
from shared.service import Runtime

NAME = "revocation"


def register(rt: Runtime) -> None:
    """Attach revocation's consumer."""
    rt.publishes(CertificateRevoked, RevocationRejected, KeyBlocked)

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        if isinstance(event, CertificateIssued):
            await store.add_certificate(conn, event)
            return []
        if isinstance(event, RevocationRequested):
            return await _decide(conn, rt, event)
        raise EventRejected(f"revocation does not consume {event.event_type}")

    requests = rt.group_commit("requests", apply)

    @rt.consumer("requests", [CertificateIssued.filter(rt.root), RevocationRequested.filter(rt.root)])
    async def on_event(event: CertificateIssued | RevocationRequested, msg: NatsMessage) -> None:
        await requests.submit(event, Delivery.of(msg))


async def _decide(conn: asyncpg.Connection, rt: Runtime, request: RevocationRequested) -> list[OutboxEntry]:
    now = rt.clock.now()
    # Requester-supplied text is made printable before it reaches SQL (Postgres refuses NUL).
    serial = printable(domain.normalise_serial(request.serial))
    outcome = domain.decide(serial, request.reason, await store.find(conn, serial))
    envelope = {
        "occurred_at": now,
        "correlation_id": request.correlation_id,
        "causation_id": str(request.event_id),
        "producer": NAME,
    }
    result: Event
    extra: list[OutboxEntry] = []
    if isinstance(outcome, domain.Known):
        result = CertificateRevoked(
            aggregate_id=outcome.cert_id,
            serial=serial,
            issuer_id=outcome.issuer_id,
            reason=request.reason,
            revoked_at=now,
            revocation_request_id=request.aggregate_id,
            requested_by=request.requested_by,
            **envelope,
        )
        await store.mark_revoked(conn, serial, now, request.reason)
        label = "revoked"
        if request.reason == "keyCompromise" and outcome.spki_sha256:
            blocked = KeyBlocked(
                aggregate_id=outcome.spki_sha256,
                spki_sha256=outcome.spki_sha256,
                reason=f"keyCompromise: certificate {serial} revoked",
                blocked_by=NAME,
                **envelope,
            )
            extra = [await enqueue(conn, blocked, rt.root)]
    else:
        result = RevocationRejected(aggregate_id=request.aggregate_id, serial=serial, reason=outcome, **envelope)
        label = f"rejected:{outcome.code}"
    await store.record_request(
        conn, request.aggregate_id, serial, printable(request.reason), printable(request.requested_by), label, now
    )
    return [await enqueue(conn, result, rt.root), *extra]
