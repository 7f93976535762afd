"""The CRL publisher: signs a fresh CRL per issuer shard shortly after revocations and before nextUpdate."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import time
from datetime import datetime, timedelta

import asyncpg
import nats.js.errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import Histogram

from services.signing import domain, store
from services.signing.cas import CaRegistry
from shared.contract.events import CrlPublished, RootCrlSigned
from shared.pki.crypto import PrivateKey
from shared.runtime.consumer import EventRejected
from shared.runtime.loops import WakeableLoop
from shared.runtime.outbox import enqueue
from shared.runtime.service import Runtime

log = logging.getLogger("certbus.signing.crl")
# From locking a CRL's state to its event on the log: read its revocations, build, sign, store, commit, publish.
CRL_PUBLISH_SECONDS = Histogram(
    "certbus_crl_publish_seconds",
    "Time to republish one CRL (one shard's, for a sharded CA)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0),
)
KEEP_CRLS = 5  # CRL objects kept per issuer shard in the object store


def object_name(ca_id: str, shard: int | None, number: int) -> str:
    """The object store name of a CRL (of an issuer's shard, or of an unsharded issuer)."""
    return f"{ca_id}/{number}.crl" if shard is None else f"{ca_id}/{shard}/{number}.crl"


class CrlPublisher:
    """Batches revocations that arrive close together into one CRL per issuer shard touched."""

    def __init__(self, rt: Runtime, cas: CaRegistry) -> None:
        self._rt = rt
        self._cas = cas
        # Woken by revocations (batched for crl_batch_s); every 5 s it also refreshes CRLs due.
        self.loop = WakeableLoop("crl-publisher", self.publish_due, idle_s=5.0, settle_s=cas.settings.crl_batch_s)

    def wake(self) -> None:
        """Say a revocation arrived (the next CRL goes out within the batch interval)."""
        self.loop.wake()

    async def publish_due(self) -> list[tuple[str, int | None, int]]:
        """Sign and publish a CRL for every issuer shard that needs one; returns (issuer, shard,
        number). None while the database is rebuilt from the log: its revocations are not all read
        again yet."""
        if self._rt.rebuilding:
            return []
        async with self._rt.pool.acquire() as conn:
            due = await store.issuers_needing_crl(conn, self._rt.clock.now())
        published: list[tuple[str, int | None, int]] = []
        for ca_id, shard in due:
            if published and self.loop.woken:
                # A revocation arrived meanwhile: its shard goes first in the next round, which
                # runs at once; the CRLs left here are still due then.
                break
            started = time.perf_counter()
            number = await self._publish(ca_id, shard)
            if number is None:
                continue
            # Each CRL's event goes to the log as soon as it is signed, not after every shard due.
            await self._rt.publish_pending()
            took = time.perf_counter() - started
            CRL_PUBLISH_SECONDS.observe(took)
            log.info(
                "CRL on the log",
                extra={"issuer": ca_id, "shard": shard, "crl_number": number, "publish_ms": round(took * 1000, 1)},
            )
            published.append((ca_id, shard, number))
        return published

    async def _publish(self, ca_id: str, shard: int | None) -> int | None:
        rt, settings = self._rt, self._cas.settings
        async with rt.pool.acquire() as conn, conn.transaction():
            state = await store.lock_crl_state(conn, ca_id, shard)
            if state is None:
                return None  # another replica is signing this shard's CRL
            if await store.ca_status(conn, ca_id) != "active":
                # Retired (its final CRL is out, or on its way) or compromised since it was found due.
                log.info("skipped the CRL of a CA that is no longer active", extra={"issuer": ca_id})
                return None
            if ca_id not in self._cas.ids():
                await self._cas.load(conn)  # another replica created it
            now = rt.clock.now()
            issuer, key = self._cas.get(ca_id), self._cas.key(ca_id)
            number, _ = await self.sign(
                conn, issuer, key, state, now + timedelta(seconds=settings.crl_validity_s), shard=shard
            )
        await self.forget(ca_id, shard, number - KEEP_CRLS)
        return number

    async def sign(
        self,
        conn: asyncpg.Connection,
        issuer: domain.CaIdentity,
        key: PrivateKey,
        state: asyncpg.Record,
        next_update: datetime,
        *,
        shard: int | None = None,
    ) -> tuple[int, CrlPublished]:
        """In the caller's transaction, holding the CRL state of the issuer's shard
        (`store.lock_crl_state`): sign its next CRL with every revocation of the shard, store it in
        the object store, and say so in the outbox."""
        rt, settings, ca_id = self._rt, self._cas.settings, issuer.ca_id
        rows, through = await store.revoked_entries(conn, ca_id, shard)
        number = int(state["crl_number"]) + 1
        now = rt.clock.now()
        entries = [
            domain.RevokedEntry(int(r["serial"]), r["revoked_at"], r["reason"], r["invalidity_date"]) for r in rows
        ]
        shard_url = None if shard is None else self._cas.urls.crl(ca_id, shard)
        crl = await asyncio.to_thread(
            functools.partial(domain.crl, shard_url=shard_url), issuer, key, number, entries, now, next_update
        )
        der = crl.public_bytes(serialization.Encoding.DER)
        name = object_name(ca_id, shard, number)
        obj = await rt.js.object_store(settings.crl_bucket)
        await obj.put(name, io.BytesIO(der))
        await store.save_crl_state(
            conn, ca_id, number, shard=shard, built_through=through, this_update=now, next_update=next_update
        )
        published = CrlPublished.first(
            ca_id,
            producer="signing",
            at=now,
            correlation_id=f"crl-{ca_id}-{number}" if shard is None else f"crl-{ca_id}-{shard}-{number}",
            ca_id=ca_id,
            crl_number=number,
            this_update=now,
            next_update=next_update,
            revoked_count=len(entries),
            object_bucket=settings.crl_bucket,
            object_name=name,
            sha256=hashlib.sha256(der).hexdigest(),
            size=len(der),
            shard=shard,
        )
        await enqueue(conn, published, rt.root)
        log.info(
            "published CRL", extra={"issuer": ca_id, "shard": shard, "crl_number": number, "entries": len(entries)}
        )
        return number, published

    async def relay_root_crl(self, conn: asyncpg.Connection, event: RootCrlSigned) -> None:
        """In the caller's transaction: serve a CRL the offline root's ceremony signed, unchanged, as
        signing serves its own (the object store, then CrlPublished), once it is checked to be that
        root's, numbered above the last one served and not out of date. EventRejected (the command
        is parked, nothing changes) otherwise."""
        rt, ca_id = self._rt, event.ca_id
        if not await store.key_offline(conn, ca_id) or await store.ca_status(conn, ca_id) != "active":
            raise EventRejected(f"ceremony_refused: {ca_id} is not an active offline root signing adopted")
        try:
            crl = x509.load_pem_x509_crl(event.crl_pem.encode())
        except ValueError as error:
            raise EventRejected(f"ceremony_refused: the root CRL cannot be read: {error}") from None
        der = crl.public_bytes(serialization.Encoding.DER)
        last = await store.crl_number(conn, ca_id)
        if event.crl_number <= last:
            # Served already (the command read again, as a rebuild from the log does), or older than
            # the one served: nothing changes either way.
            log.warning(
                "a root CRL not above the one served is not served again",
                extra={"issuer": ca_id, "crl_number": event.crl_number, "served": last},
            )
            return
        root = x509.load_der_x509_certificate(await store.ca_cert(conn, ca_id) or b"")
        now = rt.clock.now()
        revoked, _ = await store.revoked_entries(conn, ca_id)
        known = [int(r["serial"]) for r in revoked]
        problems = domain.root_crl_problems(crl, root, event.crl_number, last, now, known)
        if hashlib.sha256(der).hexdigest() != event.sha256:
            problems.append("its DER is not the one the command names (sha256)")
        if problems:
            refused = f"ceremony_refused: root {ca_id}'s CRL #{event.crl_number} is not served: "
            raise EventRejected(refused + "; ".join(problems))
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        assert next_update is not None  # root_crl_problems refused a CRL without one
        if not await store.advance_root_crl(
            conn, ca_id, event.crl_number, this_update=this_update, next_update=next_update
        ):
            raise EventRejected(f"ceremony_refused: root {ca_id}'s CRL #{event.crl_number} is not above the last one")
        name = object_name(ca_id, None, event.crl_number)
        obj = await rt.js.object_store(self._cas.settings.crl_bucket)
        await obj.put(name, io.BytesIO(der))
        published = CrlPublished.first(
            ca_id,
            producer="signing",
            at=now,
            correlation_id=event.correlation_id,
            ca_id=ca_id,
            crl_number=event.crl_number,
            this_update=this_update,
            next_update=next_update,
            revoked_count=len(crl),
            object_bucket=self._cas.settings.crl_bucket,
            object_name=name,
            sha256=event.sha256,
            size=len(der),
        )
        await enqueue(conn, published, rt.root)
        log.warning(
            "serving the root CRL the offline ceremony signed",
            extra={"issuer": ca_id, "crl_number": event.crl_number, "entries": len(crl), "signed_by": event.signed_by},
        )

    async def forget(self, ca_id: str, shard: int | None, number: int) -> None:
        """Delete an old CRL object (the newest KEEP_CRLS of each issuer shard stay, so a consumer
        that is a few CRLs behind can still fetch what its event names); a missing one is fine."""
        if number < 1:
            return
        try:
            obj = await self._rt.js.object_store(self._cas.settings.crl_bucket)
            await obj.delete(object_name(ca_id, shard, number))
        except nats.js.errors.NotFoundError:
            pass
