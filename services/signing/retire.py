"""CA retirement: the CA stops issuing at once; then its final CRL is signed and its key destroyed.

Each step commits on its own (see migrations/004_retire.sql), so a crash or a redelivery resumes
where it stopped and never signs a second "final" CRL. The key is destroyed only once the final
CRL's `CrlPublished` is on the log, so `CaKeyDestroyed` always follows it there.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import asyncpg
from cryptography import x509

from services.signing import domain, store
from services.signing.cas import CaRegistry
from services.signing.crl import KEEP_CRLS, CrlPublisher
from shared.contract.events import CaKeyDestroyed, CaRetired
from shared.pki.crypto import spki_sha256
from shared.runtime.consumer import Delivery
from shared.runtime.loops import WakeableLoop
from shared.runtime.outbox import OutboxEntry, enqueue
from shared.runtime.service import Runtime
from shared.trust.operators import recorded

log = logging.getLogger("certbus.signing.retire")


class FinalCrlNotOnLog(Exception):
    """The final CRL's event is still in the outbox: the key waits (the loop retries)."""


class RevocationsBehind(Exception):
    """Signing has not read every revocation before the CaRetired yet: the final CRL waits."""


class Retirements:
    """Retires CAs (in the approvals consumer) and finishes retirements (in a background loop)."""

    def __init__(self, rt: Runtime, cas: CaRegistry, crls: CrlPublisher) -> None:
        self._rt = rt
        self._cas = cas
        self._crls = crls
        # Woken after a retirement; every 30 s it also resumes one left unfinished (outage, crash).
        self.loop = WakeableLoop("ca-retirement", self.finish, idle_s=30.0)

    async def retire(self, conn: asyncpg.Connection, event: CaRetired, delivery: Delivery) -> None:
        """In the caller's transaction: refuse, or mark the CA retired (replacing it first if it is
        the current issuing CA, so that issuance goes on under the same root)."""
        rt = self._rt
        await store.lock_ca(conn, event.ca_id)
        records = await store.ca_records(conn)
        problems = domain.retirement_problems(event.ca_id, records)
        if problems:
            log.warning(
                "refused to retire a CA",
                extra={"ca": event.ca_id, "code": problems[0].code, "detail": problems[0].message},
            )
            return
        target = next(r for r in records if r.ca_id == event.ca_id)
        replace = domain.current_issuing(records) == event.ca_id
        by = recorded(delivery.signers)  # the operators who signed the retirement
        await store.record_retirement(
            conn,
            event.ca_id,
            event_id=event.event_id,
            stream_seq=delivery.seq,
            correlation_id=event.correlation_id,
            retired_by=by,
            at=event.occurred_at,
        )
        log.warning("CA retired: it issues nothing more", extra={"ca": event.ca_id, "by": by})
        if replace:
            assert target.parent_id is not None  # an issuing CA; retirement_problems checked its root
            await self._cas.replace_issuing(conn, rt, target.parent_id, event.correlation_id)

    async def finish(self) -> list[str]:
        """Take every retired CA whose key still exists through its final CRL and key destruction;
        returns the CAs finished now."""
        async with self._rt.pool.acquire() as conn:
            pending = await store.unfinished_retirements(conn)
            active = {r.ca_id for r in await store.ca_records(conn) if r.status == "active"}
            if set(self._cas.ids()) - active:
                await self._cas.load(conn)  # closed by another replica: drop its key from memory here too
        return [ca_id for ca_id in pending if await self._finish(ca_id)]

    async def _finish(self, ca_id: str) -> bool:
        rt = self._rt
        async with rt.pool.acquire() as conn:
            async with conn.transaction():
                row = await store.lock_retirement(conn, ca_id)
                if row is None:
                    return False  # finished, or another replica is at it
                signs_final = row["final_crl_at"] is None
                final_crl = await self._final_crl(conn, ca_id, row["stream_seq"]) if signs_final else None
            if signs_final:
                await rt.publish_pending()
            for shard, number in final_crl or []:
                await self._crls.forget(ca_id, shard, number - KEEP_CRLS)
            async with conn.transaction():
                row = await store.lock_retirement(conn, ca_id)
                if row is None:
                    return False
                entry = await self._destroy_key(conn, ca_id, row)
        await rt.publish_pending([entry])
        return True

    async def _final_crl(
        self, conn: asyncpg.Connection, ca_id: str, retired_seq: int
    ) -> list[tuple[int | None, int]] | None:
        """Sign the retired CA's last CRL of each shard (every revocation on the log before its
        retirement; nextUpdate its notAfter); returns (shard, number) of each."""
        rt = self._rt
        if not await self._revocations_read_through(retired_seq):
            raise RevocationsBehind(f"signing has not read every revocation before the retirement of {ca_id} yet")
        cert_der = await store.ca_cert(conn, ca_id)
        assert cert_der is not None  # retirements references cas
        signer = self._cas.final_signer(ca_id, cert_der, await store.ca_crl_shards(conn, ca_id))
        now = rt.clock.now()
        if signer is None:
            log.error("the key of a retired CA is gone before its final CRL: none can be signed", extra={"ca": ca_id})
            await store.save_final_crl(conn, ca_id, None, None, now)
            return None
        issuer, key = signer
        fallback = timedelta(seconds=self._cas.settings.crl_validity_s)
        next_update = domain.final_crl_next_update(issuer.cert, now, fallback)
        signed = []
        for shard in issuer.shards():
            state = await store.lock_crl_state(conn, ca_id, shard)
            if state is None:
                raise RuntimeError(f"the CRL state of CA {ca_id} is locked by another transaction: retrying")
            number, published = await self._crls.sign(conn, issuer, key, state, next_update, shard=shard)
            signed.append((shard, number))
        # The last shard's event stands for all: the key waits until every final CRL is on the log.
        await store.save_final_crl(conn, ca_id, max(n for _, n in signed), published.event_id, now)
        log.warning("published the final CRLs of a retired CA", extra={"ca": ca_id, "crls": len(signed)})
        return signed

    async def _revocations_read_through(self, seq: int) -> bool:
        """Whether signing's revocation consumer has committed every revocation before log position
        `seq` (it reads revocations apart from the approvals consumer that read the CaRetired)."""
        rt = self._rt
        info = await rt.js.consumer_info(rt.settings.stream, rt.durable("revoked"))
        if not info.num_pending and not info.num_ack_pending:
            return True
        return info.ack_floor is not None and info.ack_floor.stream_seq >= seq

    async def _destroy_key(self, conn: asyncpg.Connection, ca_id: str, row: asyncpg.Record) -> OutboxEntry:
        """Destroy the key (shred its file, or C_DestroyObject in the token), forget it, and say so
        (never before the final CRL is on the log)."""
        rt = self._rt
        final_event = row["final_crl_event_id"]
        final_subject = f"{rt.root}.ca.{ca_id}.crl_published"
        if final_event is not None and not await store.events_published_through(conn, final_subject, final_event):
            rt.relay.notify()
            raise FinalCrlNotOnLog(f"the final CRL of CA {ca_id} is not on the log yet; its key waits")
        cert_der = await store.ca_cert(conn, ca_id)
        assert cert_der is not None
        cert = x509.load_der_x509_certificate(cert_der)
        destruction = self._cas.keys.destroy(ca_id)
        now = rt.clock.now()
        await store.save_key_destroyed(conn, ca_id, now)
        destroyed = CaKeyDestroyed.first(
            ca_id,
            producer="signing",
            at=now,
            correlation_id=row["correlation_id"],
            ca_id=ca_id,
            spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
            destroyed_at=now,
            final_crl_number=row["final_crl_number"],
            key_store_answer=destruction.answer,
        )
        entry = await enqueue(conn, destroyed, rt.root)
        log.warning(
            "destroyed the key of a retired CA",
            extra={
                "ca": ca_id,
                "final_crl_number": row["final_crl_number"],
                "key_found": destruction.existed,
                "key_store_answer": destruction.answer,
            },
        )
        return entry
