"""The CAs this signing service operates: created on first start, loaded from its own tables."""

from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Literal

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.signing import domain, store
from services.signing.keystore import CaKeyStore, KeyStoreError
from shared.base.settings import SigningSettings
from shared.contract.events import CaCreated
from shared.pki.crypto import KeyType, PrivateKey, spki_sha256
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
        self.issuing_id: str | None = None

    def get(self, ca_id: str) -> domain.CaIdentity:
        """A CA by id."""
        return self._cas[ca_id]

    def ids(self) -> list[str]:
        """Every active CA id."""
        return list(self._cas)

    def issuing(self) -> domain.CaIdentity:
        """The CA that signs new leaf certificates."""
        if self.issuing_id is None:
            raise RuntimeError("no active issuing CA")
        return self._cas[self.issuing_id]

    async def readiness(self, _: Runtime) -> Readiness:
        """Ready while an issuing CA is active; its id is what validation must have a responder for."""
        if self.issuing_id is None:
            return Readiness(missing=["no active issuing CA: nothing can be issued"])
        return Readiness(facts={"issuing_ca": self.issuing_id})

    def key(self, ca_id: str) -> PrivateKey:
        """The private key of an active CA; a retired, compromised or unknown CA signs nothing."""
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
            self.keys.load(row["ca_id"])
        # Swapped in at once: the approvals consumer and the background loops read the registry meanwhile.
        self._cas, self.issuing_id, self._chains = cas, issuing_id, {}
        self.keys.retain(cas)  # a CA closed since (here or by another replica) leaves no key in memory

    async def bootstrap(self, rt: Runtime) -> None:
        """Create a root and an issuing CA if there are none (once, whatever the replica count)."""
        async with rt.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('signing:bootstrap'))")
            await self.load(conn)
            if self.issuing_id is not None:
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
    ) -> None:
        now = rt.clock.now()
        der = cert.public_bytes(serialization.Encoding.DER)
        await store.add_ca(conn, ca_id, role=role, parent_id=parent, cert_der=der, at=now, crl_shards=crl_shards)
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
            ),
            rt.root,
        )
        log.info("created a CA", extra={"ca": ca_id, "role": role, "fingerprint": hashlib.sha256(der).hexdigest()})
