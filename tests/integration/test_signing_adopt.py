"""Signing's adopt step of a rebuild (`services.signing.rebuild`), on a migrated schema of a real
PostgreSQL: the CAs the log names are taken back only with the key store's matching keys, a CA whose
key was destroyed comes back retired without its key, and a key store that does not match the log
stops the start with the CA it is about."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization

from services.signing import domain, store
from services.signing.keystore import KeyStore
from services.signing.rebuild import KeysDoNotMatchTheLog, adopting
from shared.contract.events import CaCreated, CaKeyDestroyed, CrlPublished, Event
from shared.pki.crypto import PrivateKey, generate_key, spki_sha256

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _created(ca_id: str, key: PrivateKey) -> CaCreated:
    cert = domain.root_certificate(key, ca_id, "Adopt", NOW, 3650)
    return CaCreated.first(
        ca_id,
        producer="signing",
        at=NOW,
        ca_id=ca_id,
        role="root",
        parent_id=None,
        subject_dn=cert.subject.rfc4514_string(),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        spki_sha256=spki_sha256(key.public_key()),
    )


def _published(*events: Event) -> list[tuple[int, Event]]:
    return list(enumerate(events, start=1))


async def _adopt(pool: asyncpg.Pool, keys: KeyStore, published: list[tuple[int, Event]]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await adopting(keys)(conn, published)


async def test_a_retired_ca_comes_back_retired_without_its_key_and_a_live_one_with_its_own(
    signing: asyncpg.Pool, tmp_path: Path
) -> None:
    keys = KeyStore(tmp_path / "keys", b"passphrase")
    old_key, new_key = generate_key("ec-p256"), generate_key("ec-p256")
    old, new = f"old-{uuid.uuid4().hex[:6]}", f"new-{uuid.uuid4().hex[:6]}"
    keys.save(new, new_key)  # the retired CA's key was destroyed: the store no longer holds it
    destroyed = CaKeyDestroyed.first(
        old, producer="signing", at=NOW, ca_id=old, spki_sha256=spki_sha256(old_key.public_key()), destroyed_at=NOW
    )
    crl = CrlPublished.first(
        new,
        producer="signing",
        at=NOW,
        ca_id=new,
        crl_number=41,
        this_update=NOW,
        next_update=NOW,
        revoked_count=0,
        object_bucket="crls",
        object_name=f"{new}/41.crl",
        sha256="0" * 64,
        size=2,
    )
    await _adopt(signing, keys, _published(_created(old, old_key), _created(new, new_key), destroyed, crl))

    async with signing.acquire() as conn:
        assert await store.ca_status(conn, old) == "retired"
        assert await store.ca_status(conn, new) == "active"
        assert await conn.fetchval("SELECT crl_number FROM crl_state WHERE ca_id = $1", new) == 41
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [f"{new}.key.pem"], "a key was created"


async def test_a_key_store_without_the_key_of_a_live_ca_stops_the_start_and_names_it(
    signing: asyncpg.Pool, tmp_path: Path
) -> None:
    keys = KeyStore(tmp_path / "keys", b"passphrase")
    ca = f"live-{uuid.uuid4().hex[:6]}"
    with pytest.raises(KeysDoNotMatchTheLog, match=ca):
        await _adopt(signing, keys, _published(_created(ca, generate_key("ec-p256"))))
    keys.save(ca, generate_key("ec-p256"))  # another key under the CA's name
    with pytest.raises(KeysDoNotMatchTheLog, match="not the key of the certificate"):
        await _adopt(signing, keys, _published(_created(ca, generate_key("ec-p256"))))
    async with signing.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM cas") == 0, "a CA was adopted without its key"


async def test_a_rebuild_adopts_the_shard_count_and_each_shards_crl_number(
    signing: asyncpg.Pool, tmp_path: Path
) -> None:
    keys = KeyStore(tmp_path / "keys", b"passphrase")
    key, ca = generate_key("ec-p256"), f"sharded-{uuid.uuid4().hex[:6]}"
    keys.save(ca, key)
    created = _created(ca, key).model_copy(update={"crl_shards": 4})

    def crl(shard: int, number: int) -> CrlPublished:
        return CrlPublished.first(
            ca,
            producer="signing",
            at=NOW,
            ca_id=ca,
            crl_number=number,
            this_update=NOW,
            next_update=NOW,
            revoked_count=0,
            object_bucket="crls",
            object_name=f"{ca}/{shard}/{number}.crl",
            sha256="0" * 64,
            size=2,
            shard=shard,
        )

    await _adopt(signing, keys, _published(created, crl(0, 1), crl(1, 1), crl(1, 7), crl(3, 2)))
    async with signing.acquire() as conn:
        assert await store.ca_crl_shards(conn, ca) == 4
        numbers = await conn.fetch("SELECT shard, crl_number FROM crl_state WHERE ca_id = $1 ORDER BY shard", ca)
    assert [(r["shard"], r["crl_number"]) for r in numbers] == [(0, 1), (1, 7), (2, 0), (3, 2)]
