"""The CAs this signing service operates: created on first start, loaded from its own tables."""

from __future__ import annotations

import hashlib
import logging
import uuid

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.signing import domain, store
from services.signing.keystore import KeyStore
from shared.crypto import KeyType, PrivateKey, generate_key, spki_sha256
from shared.events import CaCreated
from shared.outbox import enqueue
from shared.service import Runtime
from shared.settings import SigningSettings

log = logging.getLogger("certbus.signing.cas")


class CaRegistry:
    """The active CAs and their keys (keys only through the key store)."""

    def __init__(self, keys: KeyStore, settings: SigningSettings) -> None:
        self.keys = keys
        self.settings = settings
        self.urls = domain.Urls(settings.public_base_url)
        self._cas: dict[str, domain.CaIdentity] = {}
        self._parents: dict[str, str | None] = {}
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

    def key(self, ca_id: str) -> PrivateKey:
        """The private key of `ca_id`."""
        return self.keys.load(ca_id)

    def chain_pem(self, ca_id: str) -> str:
        """The PEM chain from `ca_id` up to its root."""
        parts: list[str] = []
        current: str | None = ca_id
        while current is not None:
            parts.append(self._cas[current].cert.public_bytes(serialization.Encoding.PEM).decode())
            current = self._parents.get(current)
        return "".join(parts)

    async def load(self, conn: asyncpg.Connection) -> None:
        """Load the active CAs from signing's tables and check their keys decrypt."""
        self._cas.clear()
        self.issuing_id = None
        for row in reversed(await store.active_cas(conn)):
            cert = x509.load_der_x509_certificate(row["cert_der"])
            self._cas[row["ca_id"]] = domain.CaIdentity(row["ca_id"], cert)
            self._parents[row["ca_id"]] = row["parent_id"]
            if row["role"] == "issuing":
                self.issuing_id = row["ca_id"]
            self.keys.load(row["ca_id"])

    async def bootstrap(self, rt: Runtime) -> None:
        """Create a root and an issuing CA if there are none (once, whatever the replica count)."""
        async with rt.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('signing:bootstrap'))")
            await self.load(conn)
            if self.issuing_id is not None:
                return
            now = rt.clock.now()
            key_type: KeyType = self.settings.ca_key_type  # type: ignore[assignment]
            root_id, issuing_id = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
            root_key = generate_key(key_type)
            root_cert = domain.root_certificate(
                root_key, root_id, self.settings.organization, now, self.settings.root_validity_days
            )
            root = domain.CaIdentity(root_id, root_cert)
            issuing_key = generate_key(key_type)
            issuing_cert = domain.issuing_certificate(
                issuing_key.public_key(),
                issuing_id,
                root,
                root_key,
                self.settings.organization,
                self.urls,
                now,
                self.settings.issuing_validity_days,
            )
            self.keys.save(root_id, root_key)
            self.keys.save(issuing_id, issuing_key)
            for ca_id, role, parent, cert in (
                (root_id, "root", None, root_cert),
                (issuing_id, "issuing", root_id, issuing_cert),
            ):
                der = cert.public_bytes(serialization.Encoding.DER)
                await store.add_ca(conn, ca_id, role, parent, der, now)
                await enqueue(
                    conn,
                    CaCreated(
                        aggregate_id=ca_id,
                        occurred_at=now,
                        correlation_id=f"bootstrap-{root_id}",
                        producer="signing",
                        ca_id=ca_id,
                        role=role,
                        parent_id=parent,
                        subject_dn=cert.subject.rfc4514_string(),
                        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
                        not_before=cert.not_valid_before_utc,
                        not_after=cert.not_valid_after_utc,
                        spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
                    ),
                    rt.root,
                )
            await self.load(conn)
            log.info(
                "created CAs",
                extra={"root": root_id, "issuing": issuing_id, "fingerprint": hashlib.sha256(der).hexdigest()},
            )
