"""The CAs this signing service operates: created on first start, loaded from its own tables.

With an offline root (`CERTBUS_CA_ROOT=offline`, docs/hsm.md) signing creates no root: it adopts the
one the ceremony made (`RootCaCreated`), never holding its key; it generates each issuing CA's key
itself, asks the ceremony to certify it (`IssuingCaKeyGenerated`, with the CSR), and adopts the
certificate the ceremony signed (`IssuingCaCertified`) once it checks it is the root's, for exactly
that key. Until then there is no issuing CA: signing is not ready, and approvals wait."""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta
from typing import Literal

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.signing import domain, store
from services.signing.keystore import CaKeyStore, KeyStoreError
from shared.base.settings import SigningSettings
from shared.contract.events import CaCreated, IssuingCaCertified, IssuingCaKeyGenerated, RootCaCreated
from shared.pki.crypto import KeyType, PrivateKey, spki_sha256
from shared.runtime.consumer import EventRejected, WaitingFor
from shared.runtime.outbox import enqueue
from shared.runtime.service import Readiness, Runtime

log = logging.getLogger("certbus.signing.cas")


class CaRegistry:
    """The active CAs and their keys (keys only through the key store)."""

    def __init__(self, keys: CaKeyStore, settings: SigningSettings) -> None:
        self.keys = keys
        self.settings = settings
        self.urls = domain.Urls(settings.public_base_url)
        self._cas: dict[str, domain.CaIdentity] = {}
        self._parents: dict[str, str | None] = {}
        self._chains: dict[str, str] = {}  # chain_pem's, until the next load
        self._offline: frozenset[str] = frozenset()  # active roots whose key is the ceremony's
        self.issuing_id: str | None = None

    def get(self, ca_id: str) -> domain.CaIdentity:
        """A CA by id."""
        return self._cas[ca_id]

    def ids(self) -> list[str]:
        """Every active CA id."""
        return list(self._cas)

    def issuing(self) -> domain.CaIdentity:
        """The CA that signs new leaf certificates (WaitingFor while there is none: under an offline
        root, until the ceremony certifies one; the consumer asking retries in place)."""
        if self.issuing_id is None:
            raise WaitingFor("no active issuing CA yet (an offline root's ceremony must certify one)")
        return self._cas[self.issuing_id]

    async def readiness(self, rt: Runtime) -> Readiness:
        """Ready while an issuing CA is active; its id is what validation must have a responder for.
        Warns while an offline root's CRL (the ceremony's) is missing or near its nextUpdate."""
        if self.issuing_id is not None:
            warnings = await self._root_crl_warnings(rt) if self._offline else []
            return Readiness(facts={"issuing_ca": self.issuing_id}, warnings=warnings)
        if self.settings.ca_root == "online":
            return Readiness(missing=["no active issuing CA: nothing can be issued"])
        async with rt.pool.acquire() as conn:
            waiting = await store.waiting_issuing_request(conn)
        if waiting is not None:
            return Readiness(
                missing=[
                    f"issuing CA {waiting['ca_id']} waits for the offline root's ceremony to certify its key "
                    "(`certbus ca csr`, then `certbus-ceremony sign-issuing`): nothing can be issued"
                ]
            )
        return Readiness(
            missing=[
                "offline root: no root yet; publish the ceremony's RootCaCreated (docs/hsm.md): nothing can be issued"
            ]
        )

    async def _root_crl_warnings(self, rt: Runtime) -> list[str]:
        async with rt.pool.acquire() as conn:
            roots = await store.offline_roots(conn)
        now, warnings = rt.clock.now(), []
        soon = timedelta(days=self.settings.root_crl_warn_days)
        ceremony = "run `certbus-ceremony crl` (`certbus ca root` lists what it must name) and publish it"
        for root in roots:
            if not root["crl_number"]:
                warnings.append(f"offline root {root['ca_id']} has no CRL served yet: {ceremony}")
            elif root["next_update"] <= now:
                warnings.append(
                    f"offline root {root['ca_id']}'s CRL #{root['crl_number']} is out of date since "
                    f"{root['next_update']:%Y-%m-%d %H:%M} UTC: relying parties checking it refuse the chain; "
                    f"{ceremony}"
                )
            elif root["next_update"] - now <= soon:
                warnings.append(
                    f"offline root {root['ca_id']}'s CRL #{root['crl_number']} goes out of date at "
                    f"{root['next_update']:%Y-%m-%d %H:%M} UTC: {ceremony} before then"
                )
        return warnings

    def key(self, ca_id: str) -> PrivateKey:
        """The private key of an active CA; a retired, compromised or unknown CA signs nothing, and
        signing never has an offline root's."""
        if ca_id in self._offline:
            raise KeyStoreError(f"root {ca_id}'s key is offline, in the ceremony's token: signing never signs with it")
        if ca_id not in self._cas:
            raise KeyStoreError(f"CA {ca_id} is not active (retired, compromised or unknown): it signs nothing")
        return self.keys.load(ca_id)

    def final_signer(
        self, ca_id: str, cert_der: bytes, crl_shards: int | None
    ) -> tuple[domain.CaIdentity, PrivateKey] | None:
        """A retired CA and its key, for its final CRLs only (the caller holds its retirement row);
        None if its key is gone."""
        if not self.keys.has(ca_id):
            return None
        return domain.CaIdentity(ca_id, x509.load_der_x509_certificate(cert_der), crl_shards), self.keys.load(ca_id)

    def chain_pem(self, ca_id: str) -> str:
        """The PEM chain from `ca_id` up to its root (encoded once per CA while it is loaded)."""
        if (chain := self._chains.get(ca_id)) is None:
            parts: list[str] = []
            current: str | None = ca_id
            while current is not None:
                parts.append(self._cas[current].cert.public_bytes(serialization.Encoding.PEM).decode())
                current = self._parents.get(current)
            chain = self._chains[ca_id] = "".join(parts)
        return chain

    async def load(self, conn: asyncpg.Connection) -> None:
        """Load the active CAs from signing's tables and check their keys decrypt."""
        rows = await store.active_cas(conn)
        cas: dict[str, domain.CaIdentity] = {}
        issuing_id = None
        for row in reversed(rows):
            cert = x509.load_der_x509_certificate(row["cert_der"])
            cas[row["ca_id"]] = domain.CaIdentity(row["ca_id"], cert, row["crl_shards"])
            self._parents[row["ca_id"]] = row["parent_id"]
            if row["role"] == "issuing":
                issuing_id = row["ca_id"]
            if not row["key_offline"]:
                self.keys.load(row["ca_id"])
        offline = frozenset(row["ca_id"] for row in rows if row["key_offline"])
        # Swapped in at once: the approvals consumer and the background loops read the registry meanwhile.
        self._cas, self.issuing_id, self._chains, self._offline = cas, issuing_id, {}, offline
        self.keys.retain(cas)  # a CA closed since (here or by another replica) leaves no key in memory

    async def bootstrap(self, rt: Runtime) -> None:
        """Create a root and an issuing CA if there are none (once, whatever the replica count)."""
        async with rt.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('signing:bootstrap'))")
            await self.load(conn)
            if self.issuing_id is not None:
                return
            if self.settings.ca_root == "offline":
                log.warning("offline root: no issuing CA yet; signing waits for the ceremony (docs/hsm.md)")
                return
            now = rt.clock.now()
            root_id = uuid.uuid4().hex[:16]
            root_key = self.keys.generate(root_id, self._key_type)
            root_cert = domain.root_certificate(
                root_key, root_id, self.settings.organization, now, self.settings.root_validity_days
            )
            await self._record(
                conn, rt, root_cert, ca_id=root_id, role="root", parent=None, correlation_id=f"bootstrap-{root_id}"
            )
            await self.load(conn)
            issuing_id = await self.create_issuing(conn, rt, root_id, f"bootstrap-{root_id}")
            log.info("created CAs", extra={"root": root_id, "issuing": issuing_id})

    @property
    def _key_type(self) -> KeyType:
        return self.settings.ca_key_type  # type: ignore[return-value]

    async def replace_issuing(self, conn: asyncpg.Connection, rt: Runtime, root_id: str, correlation_id: str) -> str:
        """In the caller's transaction: the next issuing CA under `root_id`. Under an online root,
        created at once (`create_issuing`); under an offline root, its key generated and its
        certification asked of the ceremony (`request_issuing`): nothing is issued until then."""
        if await store.key_offline(conn, root_id):
            return await self.request_issuing(conn, rt, root_id, correlation_id)
        return await self.create_issuing(conn, rt, root_id, correlation_id)

    async def create_issuing(self, conn: asyncpg.Connection, rt: Runtime, root_id: str, correlation_id: str) -> str:
        """In the caller's transaction: a new issuing CA under `root_id`, announced with CaCreated;
        it becomes the current issuing CA (registry reloaded)."""
        now = rt.clock.now()
        issuing_id = uuid.uuid4().hex[:16]
        issuing_key = self.keys.generate(issuing_id, self._key_type)
        issuing_cert = domain.issuing_certificate(
            issuing_key.public_key(),
            issuing_id,
            self.get(root_id),
            self.key(root_id),
            self.settings.organization,
            self.urls,
            now,
            self.settings.issuing_validity_days,
        )
        await self._record(
            conn,
            rt,
            issuing_cert,
            ca_id=issuing_id,
            role="issuing",
            parent=root_id,
            correlation_id=correlation_id,
            crl_shards=self.settings.crl_shards or None,  # the root's CRL lists CAs only: never sharded
        )
        await self.load(conn)
        return issuing_id

    async def request_issuing(self, conn: asyncpg.Connection, rt: Runtime, root_id: str, correlation_id: str) -> str:
        """In the caller's transaction: a new issuing CA key under offline root `root_id`, generated
        in the key store, and its CSR on the log (IssuingCaKeyGenerated) for the ceremony to certify;
        the key already waiting, if there is one."""
        waiting = await store.waiting_issuing_request(conn)
        if waiting is not None:
            return str(waiting["ca_id"])
        now = rt.clock.now()
        issuing_id = uuid.uuid4().hex[:16]
        key = self.keys.generate(issuing_id, self._key_type)
        csr_pem = domain.issuing_csr(key, issuing_id, self.settings.organization).public_bytes(
            serialization.Encoding.PEM
        )
        spki = spki_sha256(key.public_key())
        await store.add_issuing_request(
            conn,
            issuing_id,
            parent_id=root_id,
            csr_pem=csr_pem.decode(),
            spki_sha256=spki,
            correlation_id=correlation_id,
            at=now,
        )
        generated = IssuingCaKeyGenerated.first(
            issuing_id,
            producer="signing",
            at=now,
            correlation_id=correlation_id,
            ca_id=issuing_id,
            parent_id=root_id,
            csr_pem=csr_pem.decode(),
            spki_sha256=spki,
            key_type=self._key_type,
        )
        await enqueue(conn, generated, rt.root)
        log.warning(
            "generated an issuing CA key: the offline root's ceremony must certify it before anything is issued",
            extra={"ca": issuing_id, "root": root_id},
        )
        return issuing_id

    async def adopt_root(self, conn: asyncpg.Connection, rt: Runtime, event: RootCaCreated) -> None:
        """In the caller's transaction: adopt the ceremony's root (its certificate only, never a key)
        and, with no issuing CA active, ask the ceremony to certify a new one. EventRejected (the
        command is parked, nothing changes) if it cannot be adopted."""
        if self.settings.ca_root != "offline":
            raise EventRejected(
                f"ceremony_refused: signing runs with an online root (CERTBUS_CA_ROOT=online): root {event.ca_id} "
                "from the ceremony is not adopted"
            )
        cert = _ceremony_certificate(event.cert_pem, "the root certificate")
        if await self._known(conn, event.ca_id, cert, offline=True):
            return
        problems = domain.root_adoption_problems(cert, event.spki_sha256, rt.clock.now())
        if self.keys.has(event.ca_id):
            problems.append("signing's key store holds a key of that id: an offline root's key is never online")
        if problems:
            raise EventRejected(f"ceremony_refused: root {event.ca_id} cannot be adopted: " + "; ".join(problems))
        await self._record(
            conn,
            rt,
            cert,
            ca_id=event.ca_id,
            role="root",
            parent=None,
            correlation_id=event.correlation_id,
            offline=True,
        )
        await self.load(conn)
        if self.issuing_id is None:
            await self.request_issuing(conn, rt, event.ca_id, event.correlation_id)

    async def adopt_issuing(self, conn: asyncpg.Connection, rt: Runtime, event: IssuingCaCertified) -> None:
        """In the caller's transaction: adopt the certificate the ceremony signed for the issuing CA
        key that waits for it, after checking it (signed by the root signing adopted, for exactly
        that key, an issuing CA's profile, valid now); it becomes the issuing CA. EventRejected (the
        command is parked, nothing changes) if it cannot be adopted."""
        cert = _ceremony_certificate(event.cert_pem, "the issuing CA certificate")
        if await self._known(conn, event.ca_id, cert, offline=False):
            return
        waiting = await store.waiting_issuing_request(conn)
        if waiting is None or waiting["ca_id"] != event.ca_id:
            which = f" (the key waiting is issuing CA {waiting['ca_id']}'s)" if waiting is not None else ""
            raise EventRejected(f"ceremony_refused: no key of issuing CA {event.ca_id} waits for certification{which}")
        if event.parent_id != waiting["parent_id"] or await store.ca_status(conn, event.parent_id) != "active":
            raise EventRejected(
                f"ceremony_refused: issuing CA {event.ca_id} is to be certified by root {waiting['parent_id']}, "
                f"not {event.parent_id}, and that root must be active"
            )
        root = x509.load_der_x509_certificate(await store.ca_cert(conn, event.parent_id) or b"")
        own = self.keys.load(event.ca_id).public_key()
        problems = domain.certification_problems(cert, root, own, rt.clock.now())
        if spki_sha256(cert.public_key()) != event.spki_sha256:  # type: ignore[arg-type]
            problems.append("its key is not the one the command names (spki_sha256)")
        if problems:
            raise EventRejected(
                f"ceremony_refused: issuing CA {event.ca_id}'s certificate cannot be adopted: " + "; ".join(problems)
            )
        await store.mark_certified(conn, event.ca_id, rt.clock.now())
        await self._record(
            conn,
            rt,
            cert,
            ca_id=event.ca_id,
            role="issuing",
            parent=event.parent_id,
            correlation_id=str(waiting["correlation_id"]),
            crl_shards=self.settings.crl_shards or None,
        )
        await self.load(conn)
        log.warning("adopted the issuing CA the offline root certified", extra={"ca": event.ca_id})

    async def _known(self, conn: asyncpg.Connection, ca_id: str, cert: x509.Certificate, *, offline: bool) -> bool:
        """Whether the ceremony's CA is adopted already, with exactly this certificate (the command
        read again, as a rebuild from the log does: nothing to do); EventRejected if another CA of
        that id is known."""
        known = await store.ca_cert(conn, ca_id)
        if known is None:
            return False
        if known != cert.public_bytes(serialization.Encoding.DER) or await store.key_offline(conn, ca_id) != offline:
            raise EventRejected(f"ceremony_refused: another CA {ca_id} is known already")
        log.info("the ceremony's CA is adopted already", extra={"ca": ca_id})
        return True

    async def _record(
        self,
        conn: asyncpg.Connection,
        rt: Runtime,
        cert: x509.Certificate,
        *,
        ca_id: str,
        role: Literal["root", "issuing"],
        parent: str | None,
        correlation_id: str,
        crl_shards: int | None = None,
        offline: bool = False,
    ) -> None:
        now = rt.clock.now()
        der = cert.public_bytes(serialization.Encoding.DER)
        await store.add_ca(
            conn, ca_id, role=role, parent_id=parent, cert_der=der, at=now, crl_shards=crl_shards, key_offline=offline
        )
        await enqueue(
            conn,
            CaCreated.first(
                ca_id,
                producer="signing",
                at=now,
                correlation_id=correlation_id,
                ca_id=ca_id,
                role=role,
                parent_id=parent,
                subject_dn=cert.subject.rfc4514_string(),
                cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
                crl_shards=crl_shards,
                key_offline=offline,
            ),
            rt.root,
        )
        log.info("created a CA", extra={"ca": ca_id, "role": role, "fingerprint": hashlib.sha256(der).hexdigest()})


def _ceremony_certificate(pem: str, what: str) -> x509.Certificate:
    """A certificate from a ceremony command; EventRejected (the command is parked) if unreadable."""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as error:
        raise EventRejected(f"ceremony_refused: {what} cannot be read: {error}") from None
