"""What signing restores from its own events when it rebuilds a lost database (`shared.runtime.rebuild`).

Its decisions are not all things it could make again: a certificate signed again would have another
serial and signature than the one on the log, and a CA created again would be a new key beside the
one the log names. So, before the log is applied again, signing adopts from its own events:

- each CA the log announced (`CaCreated`), but only if the key store holds that CA's key (the
  certificate's public key, compared): a key store that does not match the log stops the start
  (an operator restores the key directory), and no key is ever created while the log names a CA.
  A CA whose key was destroyed (`CaKeyDestroyed`) is adopted retired. The newest issuing CA is the
  issuing one, so a compromise read again does not replace it a second time. An offline root
  (`CaCreated.key_offline`) is adopted without a key: signing never held it;
- each issuing CA key it generated for an offline root's ceremony (`IssuingCaKeyGenerated`), its
  key checked as a CA's is: certified if the log announced that CA since, else still waiting;
- each certificate it issued (`CertificateIssued`), as a signed intent: the approval read again
  finds it decided and signs nothing;
- each CA's CRL shard count (`CaCreated.crl_shards`, none for a CA created before shards), and
  each shard's CRL number (`CrlPublished`): the next CRL of a shard, signed once the rebuild is
  over, has a higher number than any of that shard on the log.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.signing import store
from services.signing.keystore import CaKeyStore
from shared.contract.events import CaCreated, CaKeyDestroyed, CertificateIssued, CrlPublished, IssuingCaKeyGenerated
from shared.pki.crypto import spki_sha256
from shared.runtime.rebuild import Adopt, Published


class KeysDoNotMatchTheLog(RuntimeError):
    """The log names a CA whose key the key store does not hold (or holds another key for)."""


def adopting(keys: CaKeyStore) -> Adopt:
    """Signing's adopt step, with the key store it checks the log's CAs against."""

    async def adopt(conn: asyncpg.Connection, published: Published) -> None:
        events = [event for _, event in published]
        destroyed = {e.ca_id for e in events if isinstance(e, CaKeyDestroyed)}
        created = {e.ca_id: e for e in events if isinstance(e, CaCreated)}
        for ca in created.values():
            await _adopt_ca(conn, keys, ca, retired=ca.ca_id in destroyed)
        for generated in (e for e in events if isinstance(e, IssuingCaKeyGenerated)):
            certified = created.get(generated.ca_id)
            await _adopt_key_generated(conn, keys, generated, None if certified is None else certified.occurred_at)
        issued = [e for e in events if isinstance(e, CertificateIssued)]
        await _adopt_issued(conn, issued)
        crls: dict[tuple[str, int | None], CrlPublished] = {}
        for crl in (e for e in events if isinstance(e, CrlPublished)):
            key = (crl.ca_id, crl.shard)
            if key not in crls or crl.crl_number > crls[key].crl_number:
                crls[key] = crl
        for crl in crls.values():
            await conn.execute(
                "UPDATE crl_state SET crl_number = $2, this_update = $3, next_update = $4 "
                "WHERE ca_id = $1 AND shard = $5",
                crl.ca_id,
                crl.crl_number,
                crl.this_update,
                crl.next_update,
                crl.shard or 0,
            )

    return adopt


async def _adopt_ca(conn: asyncpg.Connection, keys: CaKeyStore, created: CaCreated, *, retired: bool) -> None:
    cert = x509.load_pem_x509_certificate(created.cert_pem.encode())
    if not retired and not created.key_offline:
        if not keys.has(created.ca_id):
            raise KeysDoNotMatchTheLog(
                f"the log names CA {created.ca_id} ({created.role}), but the key store has no key for it: "
                "restore the key directory (signing creates no CA while the log names one)"
            )
        held = spki_sha256(keys.load(created.ca_id).public_key())
        if held != created.spki_sha256 or spki_sha256(cert.public_key()) != created.spki_sha256:  # type: ignore[arg-type]
            raise KeysDoNotMatchTheLog(
                f"the key store's key for CA {created.ca_id} is not the key of the certificate the log names"
            )
    der = cert.public_bytes(serialization.Encoding.DER)
    await store.add_ca(
        conn,
        created.ca_id,
        role=created.role,
        parent_id=created.parent_id,
        cert_der=der,
        at=created.occurred_at,
        crl_shards=created.crl_shards,
        key_offline=created.key_offline,
    )
    if retired:
        await store.set_ca_status(conn, created.ca_id, "retired")


async def _adopt_key_generated(
    conn: asyncpg.Connection, keys: CaKeyStore, generated: IssuingCaKeyGenerated, certified_at: datetime | None
) -> None:
    if certified_at is None and (
        not keys.has(generated.ca_id) or spki_sha256(keys.load(generated.ca_id).public_key()) != generated.spki_sha256
    ):
        raise KeysDoNotMatchTheLog(
            f"the log names issuing CA key {generated.ca_id}, waiting for the ceremony, but the key store does not "
            "hold that key: restore the key store"
        )
    await store.add_issuing_request(
        conn,
        generated.ca_id,
        parent_id=generated.parent_id,
        csr_pem=generated.csr_pem,
        spki_sha256=generated.spki_sha256,
        correlation_id=generated.correlation_id,
        at=generated.occurred_at,
    )
    if certified_at is not None:
        await store.mark_certified(conn, generated.ca_id, certified_at)


async def _adopt_issued(conn: asyncpg.Connection, issued: list[CertificateIssued]) -> None:
    rows = []
    for e in issued:
        cert = x509.load_pem_x509_certificate(e.cert_pem.encode())
        rows.append(
            (
                e.aggregate_id,
                e.issuer_id,
                int(e.serial, 16),
                e.not_before,
                e.not_after,
                e.spki_sha256,
                e.event_id,
                uuid.UUID(e.causation_id) if e.causation_id else e.event_id,
                e.occurred_at,
                cert.public_bytes(serialization.Encoding.DER),
                hashlib.sha256(cert.tbs_certificate_bytes).hexdigest(),
            )
        )
    await conn.executemany(
        "INSERT INTO issuances (request_id, issuer_id, serial, not_before, not_after, spki_sha256, "
        "issued_event_id, approval_event_id, intended_at, cert_der, tbs_sha256, signed_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $9) ON CONFLICT (request_id) DO NOTHING",
        rows,
    )
