"""Revocation's subscriber: learns issued certificates, decides revocation requests and orders, and
carries out operators' destruction orders."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from services.revocation import domain, store
from shared.base.settings import RevocationSettings
from shared.contract.binding import Unbound, loads
from shared.contract.bounds import MAX_REQUEST_BYTES
from shared.contract.events import (
    CaCompromised,
    CertificateDestroyed,
    CertificateIssued,
    CertificateRevoked,
    DestructionOrdered,
    Event,
    KeyDestroyed,
    RevocationOrdered,
    RevocationRejected,
    RevocationRequested,
)
from shared.contract.ingress import Kind
from shared.contract.reasons import Reason, printable
from shared.runtime.admission import Admission
from shared.runtime.consumer import Projections, Together, applying, dispatching
from shared.runtime.outbox import OutboxEntry, enqueue, enqueue_many
from shared.runtime.service import Runtime
from shared.trust.operators import recorded

NAME = "revocation"
log = logging.getLogger("certbus.revocation")


def register(rt: Runtime, settings: RevocationSettings) -> None:
    """Attach revocation's consumer and its admission of holders' requests and key-destroyed
    attestations from the ingress stream."""
    rt.publishes(CertificateRevoked, RevocationRejected, CertificateDestroyed, RevocationRequested, KeyDestroyed)

    async def refuse(
        conn: asyncpg.Connection, kind: Kind, request_id: str, identity: str, reason: Reason, raw: bytes
    ) -> Event | None:
        if kind != "revoke":
            return None  # an attestation has no answer to wait for: refused and parked
        return RevocationRejected.first(
            request_id, producer=NAME, at=rt.clock.now(), serial=_serial_named(raw), reason=reason
        )

    Admission(rt, ["revoke", "key_destroyed"], refuse, settings.admission_rate_per_min).register()

    # An operator's command is recorded as its signers' (checked before it got here).
    projections: Projections = {
        CertificateIssued: Together(
            lambda conn, run: _learn(conn, rt, [(event, rt.decided_at(delivery)) for event, delivery in run])
        ),
        RevocationRequested: lambda conn, event, delivery: _decide(
            conn, rt, event, recorded(delivery.signers), rt.decided_at(delivery)
        ),
        RevocationOrdered: lambda conn, event, delivery: _decide(
            conn, rt, event, recorded(delivery.signers), rt.decided_at(delivery)
        ),
        CaCompromised: lambda conn, event, delivery: _issuer_compromised(conn, rt, event, recorded(delivery.signers)),
        DestructionOrdered: lambda conn, event, delivery: _destroy(
            conn, rt, event, recorded(delivery.signers), rt.decided_at(delivery)
        ),
    }

    async def committed(events: list[Event]) -> None:
        if any(isinstance(event, CaCompromised) for event in events):
            # Its revocations were enqueued, not returned (there may be millions): publish them now.
            try:
                await rt.relay.drain()
            except Exception as exc:  # noqa: BLE001 - committed: the relay publishes what is left
                log.warning("draining a compromise's revocations failed; the relay goes on", extra={"error": repr(exc)})

    requests = applying(lambda: rt.pool, rt.durable("requests"), dispatching(NAME, projections))
    rt.batch_consumer("requests", projections, requests, after=committed)


def _serial_named(raw: bytes) -> str:
    """The serial a refused request named, shown escaped and short (it may be anything)."""
    try:
        serial = loads(raw, MAX_REQUEST_BYTES).get("serial")
    except Unbound:
        return ""
    return printable(serial[:128]) if isinstance(serial, str) else ""


async def _learn(
    conn: asyncpg.Connection, rt: Runtime, run: list[tuple[CertificateIssued, datetime]]
) -> list[OutboxEntry]:
    """Keep issued certificates (each with the time it is judged at) and their public keys, a run at a
    time (one statement each to keep them, to read their issuers' and keys' compromise); revoke at
    once one whose CA was declared compromised (released just before the declaration, learnt here
    after it) or whose key was revoked for keyCompromise (approved before the key was blocked,
    issued after). Nothing in a run changes what the next is judged by: a revocation here records
    no compromise."""
    keys = []
    for issued, _ in run:
        key = domain.public_key_of(issued.cert_pem)
        keys.append(key if key is not None else (None, issued.spki_sha256))
    added = await store.add_certificates(conn, [(e, spki, der) for (e, _), (der, spki) in zip(run, keys, strict=True)])
    live = [
        (issued, now, key)
        for (issued, now), key in zip(run, keys, strict=True)
        if issued.serial in added and issued.not_after > now
    ]
    if not live:
        return []
    # Released by its CA just before the compromise was declared, learnt here after it (enrollment
    # tells the holder to renew when it reads the revocation).
    compromised_issuers = await store.issuers_compromised(conn, sorted({e.issuer_id for e, _, _ in live}))
    compromised_keys = await store.compromised_by(conn, sorted({spki for _, _, (_, spki) in live}))
    entries = []
    for issued, now, (spki_der, spki_sha256) in live:
        if issued.serial not in added:
            continue  # the same serial again in this run: known already
        added.discard(issued.serial)
        cert = domain.Known(issued.serial, issued.aggregate_id, issued.issuer_id, "good", spki_sha256, spki_der)
        authorised_by: domain.AuthorisedBy
        if issued.issuer_id in compromised_issuers:
            reason, request_id, by, authorised_by = "cACompromise", issued.aggregate_id, NAME, "ca_compromise"
        elif spki_sha256 in compromised_keys:
            serial, request_id = compromised_keys[spki_sha256]
            reason, by, authorised_by = "keyCompromise", domain.compromised_by(serial), "key_compromise"
        else:
            continue
        entries.append(
            await _revoke_one(
                conn,
                rt,
                cert,
                reason=reason,
                request_id=request_id,
                requested_by=by,
                authorised_by=authorised_by,
                cause=issued,
                now=now,
            )
        )
    return entries


def _ask(request: RevocationRequested | RevocationOrdered, serial: str, operator: str) -> domain.Ask:
    if isinstance(request, RevocationOrdered):
        return domain.Ask(
            request.aggregate_id,
            serial,
            request.reason,
            operator,
            "operator",
            invalidity_date=request.invalidity_date,
        )
    return domain.Ask(
        request.aggregate_id,
        serial,
        request.reason,
        printable(request.requested_by),
        "holder",
        request.proof,
        request.invalidity_date,
        request.proof_jws,
    )


async def _decide(
    conn: asyncpg.Connection,
    rt: Runtime,
    request: RevocationRequested | RevocationOrdered,
    operator: str,
    now: datetime,
) -> list[OutboxEntry]:
    # Requester-supplied text is made printable before it reaches SQL (Postgres refuses NUL).
    serial = printable(domain.normalise_serial(request.serial))
    ask = _ask(request, serial, operator)
    outcome = domain.decide(ask, await store.find(conn, serial), now)
    if isinstance(outcome, domain.Known):
        entries = await _revoke(conn, rt, outcome, ask, cause=request, now=now)
        label = "revoked"
    else:
        rejected = RevocationRejected.caused_by(request, producer=NAME, at=now, serial=serial, reason=outcome)
        entries = [await enqueue(conn, rejected, rt.root)]
        label = f"rejected:{outcome.code}"
    await store.record_request(
        conn, request.aggregate_id, serial, reason=printable(request.reason), by=ask.by, outcome=label, at=now
    )
    return entries


async def _destroy(
    conn: asyncpg.Connection, rt: Runtime, order: DestructionOrdered, operator: str, now: datetime
) -> list[OutboxEntry]:
    """Retire a certificate for good: revoke it (cessationOfOperation) if it is not revoked yet, then
    mark it destroyed, both events in this transaction (the outbox keeps their order)."""
    serial = printable(domain.normalise_serial(order.serial))
    reason = printable(order.reason)
    outcome = domain.decide_destruction(serial, await store.find(conn, serial))
    if not isinstance(outcome, domain.Known):
        rejected = RevocationRejected.caused_by(order, producer=NAME, at=now, serial=serial, reason=outcome)
        await store.record_request(
            conn, order.aggregate_id, serial, reason="destroy", by=operator, outcome=f"rejected:{outcome.code}", at=now
        )
        return [await enqueue(conn, rejected, rt.root)]
    entries = []
    if outcome.status != "revoked":
        entries.append(
            await _revoke_one(
                conn,
                rt,
                outcome,
                reason="cessationOfOperation",
                request_id=order.aggregate_id,
                requested_by=operator,
                authorised_by="operator",
                cause=order,
                now=now,
            )
        )
    await store.mark_destroyed(conn, serial, now)
    destroyed = CertificateDestroyed.caused_by(
        order,
        producer=NAME,
        at=now,
        aggregate_id=outcome.cert_id,
        serial=serial,
        issuer_id=outcome.issuer_id,
        # Certificates learnt before revocation kept fingerprints have none: the audit archive has it.
        fingerprint_sha256=outcome.fingerprint_sha256 or "",
        destroyed_at=now,
        destruction_request_id=order.aggregate_id,
        ordered_by=operator,
        reason=reason,
    )
    entries.append(await enqueue(conn, destroyed, rt.root))
    await store.record_request(
        conn, order.aggregate_id, serial, reason="destroy", by=operator, outcome="destroyed", at=now
    )
    log.info("destroyed a certificate", extra={"serial": serial, "ordered_by": operator})
    return entries


async def _revoke(
    conn: asyncpg.Connection,
    rt: Runtime,
    cert: domain.Known,
    ask: domain.Ask,
    *,
    cause: RevocationRequested | RevocationOrdered,
    now: datetime,
) -> list[OutboxEntry]:
    """Revoke `cert` as asked; for keyCompromise also revoke every other live certificate with the
    same key (bad-key-revoker), all in the caller's transaction. Enrollment blocks the key itself
    when it reads a keyCompromise revocation, so no request after it on the log gets the key certified."""
    entries: list[OutboxEntry] = []
    if ask.reason == "keyCompromise" and cert.spki_sha256:
        # Recorded before the other certificates are looked up (see store.record_compromise).
        await store.record_compromise(conn, cert.spki_sha256, cert.serial, request_id=ask.request_id, at=now)
    entries.append(
        await _revoke_one(
            conn,
            rt,
            cert,
            reason=ask.reason,
            request_id=ask.request_id,
            requested_by=ask.by,
            authorised_by=domain.authority(ask, cert),
            cause=cause,
            now=now,
            invalidity_date=ask.invalidity_date,
        )
    )
    if ask.reason == "keyCompromise" and cert.spki_sha256:
        by = domain.compromised_by(cert.serial)
        for sibling in await store.live_with_key(conn, cert.spki_sha256, now):
            entries.append(
                await _revoke_one(
                    conn,
                    rt,
                    sibling,
                    reason="keyCompromise",
                    request_id=ask.request_id,
                    requested_by=by,
                    authorised_by="key_compromise",
                    cause=cause,
                    now=now,
                    invalidity_date=ask.invalidity_date,
                )
            )
    return entries


async def _revoke_one(
    conn: asyncpg.Connection,
    rt: Runtime,
    cert: domain.Known,
    *,
    reason: str,
    request_id: str,
    requested_by: str,
    authorised_by: domain.AuthorisedBy,
    cause: Event,
    now: datetime,
    invalidity_date: datetime | None = None,
) -> OutboxEntry:
    await store.mark_revoked(conn, cert.serial, now, reason)
    revoked = CertificateRevoked.caused_by(
        cause,
        producer=NAME,
        at=now,
        aggregate_id=cert.cert_id,
        serial=cert.serial,
        issuer_id=cert.issuer_id,
        reason=reason,
        revoked_at=now,
        revocation_request_id=request_id,
        requested_by=requested_by,
        authorised_by=authorised_by,
        invalidity_date=invalidity_date,
    )
    return await enqueue(conn, revoked, rt.root)


# How many revocations of a CA compromise are built and enqueued at a time: its memory, whatever
# the number of certificates.
COMPROMISE_CHUNK = 1000


async def _issuer_compromised(
    conn: asyncpg.Connection, rt: Runtime, event: CaCompromised, operator: str
) -> list[OutboxEntry]:
    """Operators declared an issuing CA compromised: revoke every live certificate it issued
    (cACompromise, in one statement, at the compromise's place in the log); enrollment tells each
    holder to renew with a new key. Their CertificateRevoked events are built and enqueued a chunk
    at a time from a cursor, and none is returned: the consumer drains the outbox once this
    transaction has committed (`OutboxRelay.drain`), so memory stays flat however many there are."""
    now = rt.clock.now()
    if not await store.record_issuer_compromise(conn, event.ca_id, operator, now):
        return []
    revoked = await store.revoke_all_of_issuer(conn, event.ca_id, now)
    async for rows in store.revoked_by_compromise(conn, event.ca_id, now, COMPROMISE_CHUNK):
        events = [
            CertificateRevoked.caused_by(
                event,
                producer=NAME,
                at=now,
                aggregate_id=row["cert_id"],
                serial=row["serial"],
                issuer_id=event.ca_id,
                reason="cACompromise",
                revoked_at=now,
                revocation_request_id=event.aggregate_id,
                requested_by=operator,
                authorised_by="ca_compromise",
            )
            for row in rows
        ]
        await enqueue_many(conn, events, rt.root)
    log.warning("revoked every certificate of a compromised CA", extra={"ca": event.ca_id, "certificates": revoked})
    return []
