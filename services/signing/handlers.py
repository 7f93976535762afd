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
from shared.consumer import EventRejected, apply_once, correlation_id
from shared.crypto import fingerprint_sha256, serial_hex, signing_hash, spki_sha256
from shared.db import claim_event
from shared.events import (
    CertificateIssued,
    CertificateRevoked,
    EnrollmentApproved,
    EnrollmentRejected,
    Reason,
)
from shared.outbox import enqueue
from shared.service import Runtime

NAME = "signing"
log = logging.getLogger("certbus.signing")


def register(rt: Runtime, cas: CaRegistry, crls: CrlPublisher) -> None:
    """Attach signing's consumers. Signing accepts work only from approvals and revocations."""

    @rt.consumer("approved", [EnrollmentApproved.filter(rt.root)])
    async def on_approved(event: EnrollmentApproved, msg: NatsMessage) -> None:
        await issue(rt, cas, event, msg.raw_message.metadata.sequence.stream)

    @rt.consumer("revoked", [CertificateRevoked.filter(rt.root)])
    async def on_revoked(event: CertificateRevoked, msg: NatsMessage) -> None:
        async def apply(conn: asyncpg.Connection) -> None:
            await store.add_revoked(conn, event.issuer_id, int(event.serial, 16), event.revoked_at, event.reason)

        if await apply_once(rt.pool, f"{NAME}-revoked", event, msg.raw_message.metadata.sequence.stream, apply):
            crls.wake()


async def issue(rt: Runtime, cas: CaRegistry, approved: EnrollmentApproved, seq: int) -> None:
    """Issue at most one certificate per request: intent first, then sign, then publish."""
    correlation_id.set(approved.correlation_id)
    try:
        csr = x509.load_pem_x509_csr(approved.csr_pem.encode())
    except ValueError as exc:
        raise EventRejected(f"approved CSR cannot be parsed: {exc}") from exc
    problems = domain.policy_problems(approved, csr, cas.settings.max_validity_days)
    if problems:
        await _reject(rt, approved, seq, problems)
        return
    issuer = cas.issuing()
    plan = domain.plan_leaf(issuer, approved.validity_days, rt.clock.now())
    spki = spki_sha256(csr.public_key())  # type: ignore[arg-type]
    async with rt.pool.acquire() as conn:
        intent = await store.record_intent(
            conn,
            approved.aggregate_id,
            issuer.ca_id,
            plan.serial,
            plan.not_before,
            plan.not_after,
            spki,
            approved.event_id,
            rt.clock.now(),
        )
    if intent.cert_der is None:
        # Sign exactly what the intent recorded (its serial and validity), even on a retry.
        issuer = cas.get(intent.issuer_id)
        plan = domain.LeafPlan(intent.serial, intent.not_before, intent.not_after)
        key = cas.key(issuer.ca_id)
        cert = domain.leaf_builder(approved, csr, issuer, plan, cas.urls).sign(key, signing_hash(key))
        await _store_signed(rt, cas, approved, seq, intent, cert)
    else:
        async with rt.pool.acquire() as conn:
            await claim_event(conn, f"{NAME}-approved", approved.event_id, seq)
    await rt.publish_pending()


async def _store_signed(
    rt: Runtime,
    cas: CaRegistry,
    approved: EnrollmentApproved,
    seq: int,
    intent: store.Intent,
    cert: x509.Certificate,
) -> None:
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
    async with rt.pool.acquire() as conn, conn.transaction():
        await claim_event(conn, f"{NAME}-approved", approved.event_id, seq)
        tbs = hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()
        if await store.record_signed(conn, approved.aggregate_id, der, tbs, rt.clock.now()):
            await enqueue(conn, issued, rt.root)
            log.info("issued certificate", extra={"serial": issued.serial, "issuer": intent.issuer_id})


async def _reject(rt: Runtime, approved: EnrollmentApproved, seq: int, problems: list[Reason]) -> None:
    rejected = EnrollmentRejected(
        aggregate_id=approved.aggregate_id,
        occurred_at=rt.clock.now(),
        correlation_id=approved.correlation_id,
        causation_id=str(approved.event_id),
        producer=NAME,
        reasons=problems,
        rejected_by=NAME,
    )

    async def apply(conn: asyncpg.Connection) -> None:
        await enqueue(conn, rejected, rt.root)

    if await apply_once(rt.pool, f"{NAME}-approved", approved, seq, apply):
        await rt.publish_pending()
