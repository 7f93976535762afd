"""The certificate projection and its schedule: renewal-due, expired and superseded events.

The projection follows the log (issued, revoked, destroyed) in the `requests` consumer. The
schedule's own events are sent only by the timer, never by the consumer, and only once the
consumer has caught up with the log: each is marked sent in the transaction that puts it in the
outbox, and marked again when it is read back from the log. A replay from an empty schema (or a
restart) therefore reads back what was sent before it can send anything, and sends nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from cryptography import x509

from services.enrollment import renewal, store
from services.enrollment.domain import profile_of
from services.enrollment.replay import LogPosition
from shared.base.settings import EnrollmentSettings
from shared.contract.events import (
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    CertificateSuperseded,
    Event,
)
from shared.pki.crypto import spki_der, spki_sha256
from shared.runtime.consumer import EventRejected
from shared.runtime.loops import WakeableLoop
from shared.runtime.outbox import enqueue_many
from shared.runtime.service import Runtime

log = logging.getLogger("certbus.enrollment.schedule")


class RenewalSchedule:
    """Sends each certificate's renewal-due (at its renewal point), expired (at notAfter) and
    superseded (once renewed) events, once each, through the outbox, in bounded batches."""

    def __init__(self, rt: Runtime, settings: EnrollmentSettings, position: LogPosition) -> None:
        self._rt = rt
        self._position = position
        self._grace = timedelta(seconds=settings.renewal_grace_s)
        self._batch = settings.renewal_batch
        self._check_s = timedelta(seconds=settings.renewal_check_s)
        self._due_soon = False
        self.loop = WakeableLoop("renewal-schedule", self.step, idle_s=settings.renewal_check_s)

    def wake(self) -> None:
        """Look for due events now (certificates whose CA was compromised are to be told to renew)."""
        self.loop.wake()

    def wake_if_due_soon(self) -> None:
        """Wake the schedule if certificates projected since the last call may have an event due
        before its next look on its own (a renewal supersedes another; one is due or expires within
        `renewal_check_s`). A certificate issued for weeks waits for the timer: looking after every
        batch of issued certificates cost a transaction and a question to the log each time."""
        if self._due_soon:
            self._due_soon = False
            self.loop.wake()

    async def project(self, conn: asyncpg.Connection, event: Event, seq: int) -> None:
        """Apply a certificate's lifecycle event (or one of the schedule's own, read back) to the projection.

        A revocation because the certificate's CA was compromised marks its holder to be told to
        renew at once; one for keyCompromise blocks the key (so that no request after it on the
        log gets that key certified again)."""
        if isinstance(event, CertificateIssued):
            record = await store.request(conn, event.aggregate_id)
            await self.issued(conn, [(event, seq)], {event.aggregate_id: record.renews_serial if record else None})
        elif isinstance(event, CertificateRevoked):
            compromise = "ca_compromise" if event.reason == "cACompromise" else None
            spki = await store.mark_revoked(conn, event.aggregate_id, event.reason, event.authorised_by, compromise)
            if event.reason == "keyCompromise" and spki is not None:
                why = f"keyCompromise: certificate {event.serial} revoked"
                await store.block_key(conn, spki, why, event.requested_by, event.revoked_at)
        elif isinstance(event, CertificateDestroyed):
            await store.mark_destroyed(conn, event.aggregate_id)
        elif isinstance(event, CertificateRenewalDue):
            # Read back: the schedule's own, or (on older logs) revocation's after a compromise.
            kind = "renewal_due" if event.cause == "schedule" else "compromise_due"
            await store.mark_sent(conn, kind, [event.aggregate_id])
        elif isinstance(event, CertificateExpired):
            await store.mark_sent(conn, "expired", [event.aggregate_id])
        elif isinstance(event, CertificateSuperseded):
            await store.mark_sent(conn, "superseded", [event.aggregate_id])
        else:
            raise EventRejected(f"the certificate projection does not apply {event.event_type}")

    async def issued(
        self,
        conn: asyncpg.Connection,
        run: list[tuple[CertificateIssued, int]],
        renews: Mapping[str, str | None],
    ) -> None:
        """Project a run of issued certificates (with their stream seq) in a few statements: their
        profiles read once, the certificates and keys written together, then each renewal recorded
        as superseding the certificate it renews, in log order. `renews` is the serial each request
        renewed, as its request record says (signing copies it into the event; the record is kept
        for logs from before that)."""
        keys = []
        for event, _ in run:
            try:
                public_key = x509.load_pem_x509_certificate(event.cert_pem.encode()).public_key()
                keys.append((spki_der(public_key), spki_sha256(public_key)))  # type: ignore[arg-type]
            except ValueError as exc:
                raise EventRejected(f"the issued certificate cannot be parsed: {exc}") from exc
        current = await store.current_profiles(conn, sorted({event.profile for event, _ in run}))
        certs = []
        for (event, seq), (key_der, key_hash) in zip(run, keys, strict=True):
            found = current.get(event.profile)
            profile = profile_of(found[0], found[1]) if found is not None else None
            certs.append(
                store.IssuedCertificate(
                    cert_id=event.aggregate_id,
                    serial=event.serial,
                    issuer_id=event.issuer_id,
                    profile=event.profile,
                    not_before=event.not_before,
                    not_after=event.not_after,
                    spki_sha256=key_hash,
                    fingerprint_sha256=event.fingerprint_sha256,
                    spki_der=key_der,
                    dns_names=event.dns_names,
                    ip_addresses=event.ip_addresses,
                    emails=event.emails,
                    renew_at=renewal.renew_at(event.not_before, event.not_after, profile),
                    seq=seq,
                )
            )
        await store.save_certificates(conn, certs)
        soon = self._rt.clock.now() + self._check_s
        if any(c.not_after <= soon or (c.renew_at is not None and c.renew_at <= soon) for c in certs):
            self._due_soon = True
        for event, _ in run:
            old_serial = event.supersedes or renews.get(event.aggregate_id)
            if old_serial is not None:
                self._due_soon = True
            if old_serial is not None and not await store.supersede(conn, old_serial, event.serial, event.aggregate_id):
                log.warning("a renewal names a certificate already superseded or unknown", extra={"serial": old_serial})

    async def step(self) -> int:
        """Send every scheduled event due now; returns how many certificates were handled."""
        if not await self._position.caught_up():
            return 0
        handled = 0
        while True:
            async with self._rt.pool.acquire() as conn, conn.transaction():
                now = self._rt.clock.now()
                rows = await store.due(conn, now, self._batch)
                if not rows:
                    return handled
                first, then = self._events(rows, now)
                await store.mark_sent(conn, "renewal_due", [r.cert_id for r in rows if r.renewal_due])
                await store.mark_sent(conn, "expired", [r.cert_id for r in rows if r.expired])
                await store.mark_sent(conn, "superseded", [r.cert_id for r in rows if r.superseded])
                await store.mark_sent(conn, "compromise_due", [r.cert_id for r in rows if r.compromise_due])
                early = await enqueue_many(conn, first, self._rt.root)
                late = await enqueue_many(conn, then, self._rt.root)
            # A certificate's renewal-due goes out before its expiry (publishes are concurrent).
            await self._rt.publish_pending(early)
            await self._rt.publish_pending(late)
            handled += len(rows)
            if len(rows) < self._batch:
                return handled

    def _events(self, rows: list[store.Due], now: datetime) -> tuple[list[Event], list[Event]]:
        """The events to send for `rows`: (superseded and renewal-due, then expired)."""
        first: list[Event] = []
        then: list[Event] = []
        for row in rows:
            # About the certificate (its aggregate), and caused by the clock, not by an event on the log.
            by = self._rt.name
            cert: dict[str, Any] = {"serial": row.serial, "issuer_id": row.issuer_id}
            if row.superseded:
                assert row.superseded_by is not None and row.superseded_by_id is not None
                first.append(
                    CertificateSuperseded.first(
                        row.cert_id,
                        superseded_by=row.superseded_by,
                        superseded_by_id=row.superseded_by_id,
                        not_after=row.not_after,
                        producer=by,
                        at=now,
                        **cert,
                    )
                )
            if row.compromise_due == "ca_compromise":
                first.append(
                    CertificateRenewalDue.first(
                        row.cert_id, due_at=now, cause="ca_compromise", rekey=True, producer=by, at=now, **cert
                    )
                )
            # Past the renewal grace a renewal would be refused: the due event is skipped, not sent.
            if row.renewal_due and row.renew_at is not None and now <= row.not_after + self._grace:
                first.append(
                    CertificateRenewalDue.first(
                        row.cert_id, due_at=row.renew_at, cause="schedule", rekey=True, producer=by, at=now, **cert
                    )
                )
            if row.expired:
                then.append(CertificateExpired.first(row.cert_id, not_after=row.not_after, producer=by, at=now, **cert))
        return first, then
