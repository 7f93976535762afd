"""Signing's subscribers: issue for approved enrollments, remember revocations for CRLs."""

from __future__ import annotations

import hashlib
import logging

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from faststream.nats.annotations import NatsMessage

from services.signing import domain, store
from services.signing.cas import CaRegistry
from services.signing.crl import CrlPublisher
from shared.consumer import Delivery, EventRejected, GroupCommit, apply_events
from shared.crypto import fingerprint_sha256, serial_hex, signing_hash, spki_sha256
from shared.events import (
    CaCreated,
    CertificateIssued,
    CertificateRevoked,
    CrlPublished,
    EnrollmentApproved,
    EnrollmentRejected,
    Event,
)
from shared.outbox import OutboxEntry, enqueue
from shared.reasons import Reason
from shared.service import Runtime

NAME = "signing"
log = logging.getLogger("certbus.signing")


def register(rt: Runtime, cas: CaRegistry, crls: CrlPublisher) -> None:
    """Attach signing's consumers. Signing accepts work only from approvals and revocations."""
    rt.publishes(CertificateIssued, EnrollmentRejected, CaCreated, CrlPublished)
    approvals: GroupCommit[Event] = GroupCommit(lambda items: issue(rt, cas, items), rt.publish_pending)

    @rt.consumer("approved", [EnrollmentApproved.filter(rt.root)])
    async def on_approved(event: EnrollmentApproved, msg: NatsMessage) -> None:
        await approvals.submit(event, Delivery.of(msg))

    async def remember(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, CertificateRevoked):
            raise EventRejected(f"signing's revocation consumer does not take {event.event_type}")
        await store.add_revoked(conn, event.issuer_id, int(event.serial, 16), event.revoked_at, event.reason)

    revocations = rt.group_commit("revoked", remember)

    @rt.consumer("revoked", [CertificateRevoked.filter(rt.root)])
    async def on_revoked(event: CertificateRevoked, msg: NatsMessage) -> None:
        await revocations.submit(event, Delivery.of(msg))
        crls.wake()


async def issue(rt: Runtime, cas: CaRegistry, items: list[tuple[Event, Delivery]]) -> list[OutboxEntry]:
    """Issue at most one certificate per request: record intents, sign, then store.

    Intents (request id -> serial, validity) are committed before anything is signed, so a
    redelivered or repeated approval signs the recorded serial again, or nothing if it was stored.
    """
    work: dict[str, tuple[EnrollmentApproved, x509.CertificateSigningRequest] | list[Reason]] = {}
    for approved, _ in items:
        if not isinstance(approved, EnrollmentApproved):
            raise EventRejected(f"signing does not take {approved.event_type} as an approval")
        if approved.aggregate_id in work:
            continue
        try:
            csr = x509.load_pem_x509_csr(approved.csr_pem.encode())
        except ValueError as exc:
            raise EventRejected(f"the approved CSR cannot be parsed: {exc}") from exc
        problems = domain.policy_problems(approved, csr, cas.settings.max_validity_days)
        work[approved.aggregate_id] = problems or (approved, csr)
    to_sign = {rid: item for rid, item in work.items() if not isinstance(item, list)}
    intents = await _record_intents(rt, cas, to_sign) if to_sign else {}
    signed: dict[str, x509.Certificate] = {}
    for rid, intent in intents.items():
        if intent.cert_der is None:
            approved, csr = to_sign[rid]
            issuer = cas.get(intent.issuer_id)
            plan = domain.LeafPlan(intent.serial, intent.not_before, intent.not_after)
            key = cas.key(issuer.ca_id)
            signed[rid] = domain.leaf_builder(approved, csr, issuer, plan, cas.urls).sign(key, signing_hash(key))
    if len(signed) < len(intents):
        rt.relay.notify()  # a redelivery of something signed before: make sure its event is out

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        assert isinstance(event, EnrollmentApproved)
        item = work[event.aggregate_id]
        if isinstance(item, list):
            return [await _reject(conn, rt, event, item)]
        cert = signed.get(event.aggregate_id)
        if cert is None:
            return []  # signed before: its issued event is already in the outbox
        return await _store_signed(conn, rt, cas, event, intents[event.aggregate_id], cert)

    async with rt.pool.acquire() as conn, conn.transaction():
        return await apply_events(conn, rt.durable("approved"), items, apply)


async def _record_intents(
    rt: Runtime, cas: CaRegistry, to_sign: dict[str, tuple[EnrollmentApproved, x509.CertificateSigningRequest]]
) -> dict[str, store.Intent]:
    issuer = cas.issuing()
    now = rt.clock.now()
    plans = []
    for rid, (approved, csr) in to_sign.items():
        plan = domain.plan_leaf(issuer, approved.validity_days, now)
        spki = spki_sha256(csr.public_key())  # type: ignore[arg-type]
        plans.append((rid, issuer.ca_id, plan.serial, plan.not_before, plan.not_after, spki, approved.event_id))
    async with rt.pool.acquire() as conn, conn.transaction():
        return await store.record_intents(conn, plans, now)


async def _store_signed(
    conn: asyncpg.Connection,
    rt: Runtime,
    cas: CaRegistry,
    approved: EnrollmentApproved,
    intent: store.Intent,
    cert: x509.Certificate,
) -> list[OutboxEntry]:
    der = cert.public_bytes(serialization.Encoding.DER)
    issued = CertificateIssued(
        event_id=intent.issued_event_id,
        aggregate_id=approved.aggregate_id,
        occurred_at=rt.clock.now(),
        correlation_id=approved.correlation_id,
        causation_id=str(approved.event_id),
        producer=NAME,
        serial=serial_hex(cert),
        issuer_id=intent.issuer_id,
        profile=approved.profile,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        chain_pem=cas.chain_pem(intent.issuer_id),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=approved.dns_names,
        ip_addresses=approved.ip_addresses,
        spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
        fingerprint_sha256=fingerprint_sha256(cert),
    )
    tbs = hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()
    if not await store.record_signed(conn, approved.aggregate_id, der, tbs, rt.clock.now()):
        return []  # another replica stored its signature of this intent first
    log.info("issued certificate", extra={"serial": issued.serial, "issuer": intent.issuer_id})
    return [await enqueue(conn, issued, rt.root)]


async def _reject(
    conn: asyncpg.Connection, rt: Runtime, approved: EnrollmentApproved, problems: list[Reason]
) -> OutboxEntry:
    rejected = EnrollmentRejected(
        aggregate_id=approved.aggregate_id,
        occurred_at=rt.clock.now(),
        correlation_id=approved.correlation_id,
        causation_id=str(approved.event_id),
        producer=NAME,
        reasons=problems,
        rejected_by=NAME,
    )
    return await enqueue(conn, rejected, rt.root)
