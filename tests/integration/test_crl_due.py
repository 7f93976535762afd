"""Which CRLs signing signs next (`store.issuers_needing_crl`), on a migrated schema of a real
PostgreSQL: every shard of a sharded CA is its own CRL, and a shard with a revocation waiting comes
before shards that are only due for their refresh."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from cryptography.hazmat.primitives import serialization

from services.signing import domain, store
from shared.pki.crypto import generate_key

NOW = datetime(2026, 12, 1, tzinfo=UTC)


async def _ca(conn: asyncpg.Connection, shards: int | None) -> str:
    ca = f"ca-{uuid.uuid4().hex[:8]}"
    cert = domain.root_certificate(generate_key("ec-p256"), ca, "Due", NOW, 365)
    der = cert.public_bytes(serialization.Encoding.DER)
    await store.add_ca(conn, ca, role="issuing", parent_id=None, cert_der=der, at=NOW, crl_shards=shards)
    return ca


async def test_a_revoked_shard_comes_before_shards_due_for_refresh_only(signing: asyncpg.Pool) -> None:
    async with signing.acquire() as conn:
        ca = await _ca(conn, 4)
        for shard in range(4):  # every shard signed a day ago, for a week: past half its life in 4 days
            await store.save_crl_state(
                conn, ca, 1, shard=shard, built_through=0, this_update=NOW, next_update=NOW + timedelta(days=7)
            )
        assert await store.issuers_needing_crl(conn, NOW + timedelta(days=1)) == []
        await store.add_revoked(conn, ca, 4 * 1000 + 2, revoked_at=NOW, reason="keyCompromise")
        assert await store.issuers_needing_crl(conn, NOW + timedelta(days=1)) == [(ca, 2)]
        due = await store.issuers_needing_crl(conn, NOW + timedelta(days=4))
        assert due == [(ca, 2), (ca, 0), (ca, 1), (ca, 3)]


async def test_an_unsharded_ca_has_one_crl_with_no_shard(signing: asyncpg.Pool) -> None:
    async with signing.acquire() as conn:
        ca = await _ca(conn, None)
        assert await store.issuers_needing_crl(conn, NOW) == [(ca, None)]  # none signed yet
        await store.add_revoked(conn, ca, 12345, revoked_at=NOW, reason="superseded")
        entries, _ = await store.revoked_entries(conn, ca)
        assert [int(r["serial"]) for r in entries] == [12345]
