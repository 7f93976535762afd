"""Validation's subscribers (the read model) and queries (its HTTP endpoints are in `endpoints`)."""

from __future__ import annotations

import base64
import functools
import hashlib
import logging

import asyncpg
import nats.js.errors
from cryptography import x509

from services.validation import domain, store
from services.validation.ocsp import ResponderSet
from services.validation.responder import ResponderKeeper
from shared.contract.events import (
    CaCompromised,
    CaCreated,
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateRevoked,
    CertificateSuperseded,
    CrlPublished,
    Event,
)
from shared.contract.queries import (
    CrlAnswer,
    CrlQuery,
    Failure,
    StatusAnswer,
    StatusQuery,
    ValidateAnswer,
    ValidateQuery,
)
from shared.pki.crypto import normalise_serial, serial_hex
from shared.runtime.consumer import Delivery, EventRejected, Projections, Together, applying, dispatching
from shared.runtime.outbox import OutboxEntry
from shared.runtime.service import Runtime
from shared.runtime.stream import read_object

NAME = "validation"
log = logging.getLogger("certbus.validation")


def register(rt: Runtime, responders: ResponderSet, keeper: ResponderKeeper) -> None:
    """Attach validation's consumer and queries. Once a revocation is committed, the OCSP responses
    cached about its serial are dropped; once a new issuing CA is, the keeper gets it a responder."""

    crl_bytes: dict[str, bytes] = {}  # fetched before the transaction that stores them

    async def crl_published(conn: asyncpg.Connection, event: CrlPublished, delivery: Delivery) -> None:
        der = crl_bytes[event.object_name]
        await store.apply_crl(
            conn,
            event.ca_id,
            event.crl_number,
            shard=event.shard,
            this_update=event.this_update,
            next_update=event.next_update,
            der=der,
        )

    # The read model: what each event type does to it.
    projections: Projections = {
        CertificateIssued: Together(
            lambda conn, run: store.apply_issued(conn, [(event, _pem_to_der(event.cert_pem)) for event, _ in run])
        ),
        CertificateRevoked: lambda conn, event, _: store.apply_revoked(conn, event),
        CaCreated: lambda conn, event, _: store.apply_ca(conn, event, _pem_to_der(event.cert_pem)),
        CrlPublished: crl_published,
        CaCompromised: lambda conn, event, _: store.apply_compromise(conn, event.ca_id, event.occurred_at),
        CertificateSuperseded: lambda conn, event, _: store.apply_superseded(conn, event),
        CertificateExpired: lambda conn, event, _: store.apply_expired(conn, event),
        CertificateDestroyed: lambda conn, event, _: store.apply_destroyed(conn, event),
    }
    apply = applying(lambda: rt.pool, rt.durable("status"), dispatching(NAME, projections))

    async def read_model(items: list[tuple[Event, Delivery]]) -> list[OutboxEntry]:
        """Apply a batch in one transaction, its CRLs fetched from the object store before it."""
        kept = []
        for event, delivery in items:
            if isinstance(event, CrlPublished):
                try:
                    crl_bytes[event.object_name] = await _fetch_crl(rt, event)
                except nats.js.errors.NotFoundError:
                    # Signing keeps only the newest few CRL objects: a newer CRL is already on the log.
                    log.warning("CRL object gone (superseded); skipped", extra={"object": event.object_name})
                    continue
            kept.append((event, delivery))
        try:
            return await apply(kept)
        finally:
            for event, _ in kept:
                if isinstance(event, CrlPublished):
                    crl_bytes.pop(event.object_name, None)

    async def committed(events: list[Event]) -> None:
        for event in events:
            if isinstance(event, CertificateRevoked):
                # Frees memory only: every replica (one consumes each event) drops the serial when
                # its poll of the status changes sees the row committed with it (StatusView), and
                # answers no request from memory before a poll begun after the request has.
                responders.invalidate(event.issuer_id, event.serial)
                keeper.certificate_revoked(event.issuer_id, event.serial)
            elif isinstance(event, CaCreated) and event.role == "issuing":
                keeper.wake()

    rt.batch_consumer("status", projections, read_model, after=committed)

    @rt.query("status")
    async def status(query: StatusQuery) -> StatusAnswer:
        async with rt.pool.acquire() as conn:
            row = await store.status(conn, normalise_serial(query.serial))
        if row is None:
            return StatusAnswer(serial=query.serial, status="unknown")
        return StatusAnswer(
            serial=row["serial"],
            status=domain.public_status(
                row["status"], row["expired_at"], row["destroyed_at"], row["not_after"], rt.clock.now()
            ),
            cert_id=row["cert_id"],
            issuer_id=row["issuer_id"],
            not_before=row["not_before"],
            not_after=row["not_after"],
            dns_names=row["dns_names"],
            revoked_at=row["revoked_at"],
            reason=row["reason"],
            superseded_by=row["superseded_by"],
            superseded_by_id=row["superseded_by_id"],
            destroyed_at=row["destroyed_at"],
            fingerprint_sha256=row["fingerprint"],
        )

    @rt.query("validate")
    async def validate(query: ValidateQuery) -> ValidateAnswer | Failure:
        try:
            cert = x509.load_pem_x509_certificate(query.cert_pem.encode())
        except ValueError as exc:
            return Failure(error=f"not a PEM certificate: {exc}")
        async with rt.pool.acquire() as conn:
            cas = {r["ca_id"]: _ca_certificate(r["cert_der"]) for r in await store.cas(conn)}
            row = await store.status(conn, serial_hex(cert))
        record = (
            None
            if row is None
            else domain.StatusRecord(
                row["serial"], row["status"], row["revoked_at"], row["reason"], row["destroyed_at"]
            )
        )
        verdict = domain.validate(cert, cas, record, rt.clock.now())
        return ValidateAnswer(
            status=verdict.status,
            detail=verdict.detail,
            serial=verdict.serial,
            chain=list(verdict.chain),
            revoked_at=verdict.revoked_at,
            reason=verdict.reason,
        )

    @rt.query("crl")
    async def crl(query: CrlQuery) -> CrlAnswer | Failure:
        async with rt.pool.acquire() as conn:
            ca_id = query.ca_id or await _current_issuer(conn)
            row = await store.crl(conn, ca_id, query.shard) if ca_id else None
            shards = await store.crl_shard_count(conn, ca_id) if ca_id and row is None else 0
        if row is None and query.shard is None and shards:
            return Failure(
                error=f"issuer {ca_id} publishes {shards} CRL shards: name one (0 to {shards - 1}); "
                "a certificate is listed in the one its CRL distribution point names"
            )
        if row is None:
            which = "" if query.shard is None else f" shard {query.shard}"
            return Failure(error=f"no CRL published yet for issuer {ca_id}{which}")
        return CrlAnswer(
            ca_id=row["ca_id"],
            shard=row["shard"],
            crl_number=row["crl_number"],
            this_update=row["this_update"],
            next_update=row["next_update"],
            der_b64=base64.b64encode(row["der"]).decode(),
        )


@functools.lru_cache(maxsize=256)
def _ca_certificate(der: bytes) -> x509.Certificate:
    """A CA certificate parsed once per process (CA certificates never change under their DER)."""
    return x509.load_der_x509_certificate(der)


async def _current_issuer(conn: asyncpg.Connection) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT ca_id FROM cas WHERE role = 'issuing' ORDER BY not_after DESC LIMIT 1"
    )
    return value


def _pem_to_der(pem: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


async def _fetch_crl(rt: Runtime, event: CrlPublished) -> bytes:
    der = await read_object(rt.js, event.object_bucket, event.object_name)
    if hashlib.sha256(der).hexdigest() != event.sha256 or len(der) != event.size:
        raise EventRejected(f"CRL object {event.object_name} does not match the digest on the event")
    return der
