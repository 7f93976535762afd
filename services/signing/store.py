"""Signing's SQL (schema `signing`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.signing import domain


@dataclass(frozen=True)
class Intent:
    """A recorded intent to issue (and, once signed, the certificate)."""

    request_id: str
    issuer_id: str
    serial: int
    not_before: datetime
    not_after: datetime
    issued_event_id: uuid.UUID
    cert_der: bytes | None
    refused: bool = False


async def add_ca(
    conn: asyncpg.Connection,
    ca_id: str,
    *,
    role: str,
    parent_id: str | None,
    cert_der: bytes,
    at: datetime,
    crl_shards: int | None = None,
    key_offline: bool = False,
) -> None:
    """Record a CA signing created (or adopted from the ceremony: `key_offline` for a root whose key
    it never holds), and the CRL state of each of its shards (one if unsharded)."""
    await conn.execute(
        "INSERT INTO cas (ca_id, role, parent_id, cert_der, created_at, crl_shards, key_offline) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        ca_id,
        role,
        parent_id,
        cert_der,
        at,
        crl_shards,
        key_offline,
    )
    await conn.execute(
        "INSERT INTO crl_state (ca_id, shard) SELECT $1, s FROM generate_series(0, $2 - 1) s", ca_id, crl_shards or 1
    )


async def lock_ca(conn: asyncpg.Connection, ca_id: str) -> asyncpg.Record | None:
    """A CA's row, locked for this transaction (a compromise waits for releases under way)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT ca_id, role, parent_id, cert_der, status FROM cas WHERE ca_id = $1 FOR UPDATE", ca_id
    )
    return row


async def set_ca_status(conn: asyncpg.Connection, ca_id: str, status: str) -> None:
    """Mark a CA compromised or retired: it is never loaded for signing again."""
    await conn.execute("UPDATE cas SET status = $2 WHERE ca_id = $1", ca_id, status)


async def ca_status(conn: asyncpg.Connection, ca_id: str) -> str | None:
    """A CA's status, share-locked for this transaction (a release and a compromise serialise)."""
    value: str | None = await conn.fetchval("SELECT status FROM cas WHERE ca_id = $1 FOR SHARE", ca_id)
    return value


async def current_issuing(conn: asyncpg.Connection) -> str | None:
    """The newest active issuing CA."""
    value: str | None = await conn.fetchval(
        "SELECT ca_id FROM cas WHERE role = 'issuing' AND status = 'active' ORDER BY created_at DESC LIMIT 1"
    )
    return value


async def active_cas(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Active CAs, newest first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT ca_id, role, parent_id, cert_der, crl_shards, key_offline FROM cas WHERE status = 'active' "
        "ORDER BY created_at DESC"
    )
    return rows


async def record_intents(
    conn: asyncpg.Connection,
    plans: list[tuple[str, str, int, datetime, datetime, str, uuid.UUID]],
    at: datetime,
) -> dict[str, Intent]:
    """Record intents (request, issuer, serial, not_before, not_after, spki, approval event) and
    return every request's intent: the one just recorded or the one recorded before."""
    await conn.executemany(
        "INSERT INTO issuances (request_id, issuer_id, serial, not_before, not_after, spki_sha256, "
        "approval_event_id, issued_event_id, intended_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
        "ON CONFLICT (request_id) DO NOTHING",
        [(*plan, uuid.uuid4(), at) for plan in plans],
    )
    rows = await conn.fetch(
        "SELECT request_id, issuer_id, serial, not_before, not_after, issued_event_id, cert_der, "
        "refused IS NOT NULL AS refused FROM issuances WHERE request_id = ANY($1::text[])",
        [plan[0] for plan in plans],
    )
    return {
        row["request_id"]: Intent(
            request_id=row["request_id"],
            issuer_id=row["issuer_id"],
            serial=int(row["serial"]),
            not_before=row["not_before"],
            not_after=row["not_after"],
            issued_event_id=row["issued_event_id"],
            cert_der=row["cert_der"],
            refused=row["refused"],
        )
        for row in rows
    }


async def record_signed(
    conn: asyncpg.Connection, request_id: str, cert_der: bytes, tbs_sha256: str, at: datetime
) -> bool:
    """Store the signed certificate of an intent; False if another replica already did."""
    row = await conn.fetchval(
        "UPDATE issuances SET cert_der = $2, tbs_sha256 = $3, signed_at = $4 "
        "WHERE request_id = $1 AND cert_der IS NULL RETURNING 1",
        request_id,
        cert_der,
        tbs_sha256,
        at,
    )
    return row is not None


async def record_signed_many(
    conn: asyncpg.Connection, signed: Sequence[tuple[str, bytes, str]], at: datetime
) -> set[str]:
    """`record_signed` for several intents (request id, certificate DER, TBS SHA-256) in one
    statement; returns the requests whose certificate this call stored."""
    if not signed:
        return set()
    ids, ders, tbss = (list(col) for col in zip(*signed, strict=True))
    rows = await conn.fetch(
        "UPDATE issuances i SET cert_der = t.der, tbs_sha256 = t.tbs, signed_at = $4 "
        "FROM unnest($1::text[], $2::bytea[], $3::text[]) AS t(id, der, tbs) "
        "WHERE i.request_id = t.id AND i.cert_der IS NULL RETURNING i.request_id",
        ids,
        ders,
        tbss,
        at,
    )
    return {r["request_id"] for r in rows}


async def ca_statuses(conn: asyncpg.Connection, ca_ids: Sequence[str]) -> dict[str, str]:
    """`ca_status` of several CAs in one statement (each share-locked for this transaction)."""
    rows = await conn.fetch("SELECT ca_id, status FROM cas WHERE ca_id = ANY($1::text[]) FOR SHARE", list(ca_ids))
    return {r["ca_id"]: r["status"] for r in rows}


async def add_revoked(
    conn: asyncpg.Connection,
    issuer_id: str,
    serial: int,
    *,
    revoked_at: datetime,
    reason: str,
    invalidity_date: datetime | None = None,
) -> None:
    """Remember a revocation for the next CRL of its issuer's shard (`serial mod crl_shards`; 0 for
    an unsharded or unknown issuer)."""
    await conn.execute(
        "INSERT INTO revoked (issuer_id, serial, revoked_at, reason, invalidity_date, shard) "
        "SELECT $1::text, $2::numeric, $3::timestamptz, $4::text, $5::timestamptz, "
        "COALESCE((SELECT ($2::numeric % crl_shards)::int FROM cas WHERE ca_id = $1::text), 0) "
        "ON CONFLICT DO NOTHING",
        issuer_id,
        serial,
        revoked_at,
        reason,
        invalidity_date,
    )


async def issuers_needing_crl(conn: asyncpg.Connection, now: datetime) -> list[tuple[str, int | None]]:
    """(issuer, shard) of every CRL with revocations not yet in it, none signed yet, or past half its
    life; the shard is None for an unsharded issuer's only CRL. CRLs with revocations waiting come
    first: a refresh of every shard at once must not hold a revocation back."""
    rows = await conn.fetch(
        "SELECT ca_id, shard, crl_shards FROM ("
        " SELECT s.ca_id, s.shard, c.crl_shards, s.crl_number, s.this_update, s.next_update,"
        " EXISTS (SELECT 1 FROM revoked r WHERE r.issuer_id = s.ca_id AND r.shard = s.shard"
        " AND r.id > s.built_through) AS revoked_since"
        " FROM crl_state s JOIN cas c USING (ca_id) WHERE c.status = 'active' AND NOT c.key_offline) d "
        "WHERE revoked_since OR crl_number = 0 OR next_update - ($1::timestamptz) < (next_update - this_update) / 2 "
        "ORDER BY revoked_since DESC, ca_id, shard",
        now,
    )
    return [(r["ca_id"], r["shard"] if r["crl_shards"] else None) for r in rows]


async def lock_crl_state(conn: asyncpg.Connection, ca_id: str, shard: int | None = None) -> asyncpg.Record | None:
    """Lock the CRL state of an issuer's shard for this transaction (None if another replica holds it)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT crl_number, built_through FROM crl_state WHERE ca_id = $1 AND shard = $2 FOR UPDATE SKIP LOCKED",
        ca_id,
        shard or 0,
    )
    return row


async def revoked_entries(
    conn: asyncpg.Connection, ca_id: str, shard: int | None = None
) -> tuple[list[asyncpg.Record], int]:
    """Every revocation of an issuer's shard (of the issuer, if unsharded), and the highest
    revocation id among them."""
    rows = await conn.fetch(
        "SELECT id, serial, revoked_at, reason, invalidity_date FROM revoked WHERE issuer_id = $1 AND shard = $2 "
        "ORDER BY id",
        ca_id,
        shard or 0,
    )
    return rows, max((r["id"] for r in rows), default=0)


async def save_crl_state(
    conn: asyncpg.Connection,
    ca_id: str,
    number: int,
    *,
    shard: int | None = None,
    built_through: int,
    this_update: datetime,
    next_update: datetime,
) -> None:
    """Advance the CRL state of an issuer's shard."""
    await conn.execute(
        "UPDATE crl_state SET crl_number = $2, built_through = $3, this_update = $4, next_update = $5 "
        "WHERE ca_id = $1 AND shard = $6",
        ca_id,
        number,
        built_through,
        this_update,
        next_update,
        shard or 0,
    )


async def save_profile(conn: asyncpg.Connection, digest: str, name: str, body: dict[str, Any], at: datetime) -> None:
    """Keep a profile version and make it the current one of its name."""
    await conn.execute(
        "INSERT INTO profiles VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING", digest, name, body, at
    )
    await conn.execute(
        "INSERT INTO current_profiles VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET digest = $2", name, digest
    )


async def profile_bodies(conn: asyncpg.Connection) -> list[tuple[str, dict[str, Any], bool]]:
    """Every known profile version: (digest, body, whether it is the current one of its name)."""
    rows = await conn.fetch(
        "SELECT p.digest, p.body, c.name IS NOT NULL AS current FROM profiles p "
        "LEFT JOIN current_profiles c ON c.digest = p.digest"
    )
    return [(r["digest"], r["body"], r["current"]) for r in rows]


async def current_digest(conn: asyncpg.Connection, name: str) -> str | None:
    """The digest of the current version of profile `name`."""
    value: str | None = await conn.fetchval("SELECT digest FROM current_profiles WHERE name = $1", name)
    return value


async def record_lint(
    conn: asyncpg.Connection,
    digest: str,
    issuer_id: str,
    *,
    usable: bool,
    findings: list[dict[str, Any]],
    at: datetime,
) -> bool:
    """Keep a lint verdict; False if this profile version was already linted under this issuer."""
    row = await conn.fetchval(
        "INSERT INTO profile_lints VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
        digest,
        issuer_id,
        usable,
        findings,
        at,
    )
    return row is not None


async def record_refused(conn: asyncpg.Connection, request_id: str, findings: list[dict[str, Any]]) -> bool:
    """Mark an intent's certificate as refused before release; False if already decided."""
    row = await conn.fetchval(
        "UPDATE issuances SET refused = $2 WHERE request_id = $1 AND cert_der IS NULL AND refused IS NULL RETURNING 1",
        request_id,
        findings,
    )
    return row is not None


async def ca_records(conn: asyncpg.Connection) -> list[domain.CaRecord]:
    """Every CA signing created, whatever its status, newest first."""
    rows = await conn.fetch("SELECT ca_id, role, status, parent_id, key_offline FROM cas ORDER BY created_at DESC")
    return [domain.CaRecord(r["ca_id"], r["role"], r["status"], r["parent_id"], r["key_offline"]) for r in rows]


async def ca_cert(conn: asyncpg.Connection, ca_id: str) -> bytes | None:
    """A CA's certificate (DER), whatever its status."""
    value: bytes | None = await conn.fetchval("SELECT cert_der FROM cas WHERE ca_id = $1", ca_id)
    return value


async def record_retirement(
    conn: asyncpg.Connection,
    ca_id: str,
    *,
    event_id: uuid.UUID,
    stream_seq: int,
    correlation_id: str,
    retired_by: str,
    at: datetime,
) -> None:
    """Mark a CA retired and start its way to key destruction."""
    await conn.execute("UPDATE cas SET status = 'retired' WHERE ca_id = $1", ca_id)
    await conn.execute(
        "INSERT INTO retirements (ca_id, event_id, stream_seq, correlation_id, retired_by, retired_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        ca_id,
        event_id,
        stream_seq,
        correlation_id,
        retired_by,
        at,
    )


async def unfinished_retirements(conn: asyncpg.Connection) -> list[str]:
    """Retired CAs whose key is not destroyed yet, oldest first."""
    rows = await conn.fetch("SELECT ca_id FROM retirements WHERE key_destroyed_at IS NULL ORDER BY retired_at")
    return [r["ca_id"] for r in rows]


async def lock_retirement(conn: asyncpg.Connection, ca_id: str) -> asyncpg.Record | None:
    """A retirement not finished yet, locked for this transaction (None if finished or another
    replica is at it)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT ca_id, stream_seq, correlation_id, final_crl_number, final_crl_event_id, final_crl_at FROM retirements "
        "WHERE ca_id = $1 AND key_destroyed_at IS NULL FOR UPDATE SKIP LOCKED",
        ca_id,
    )
    return row


async def save_final_crl(
    conn: asyncpg.Connection, ca_id: str, number: int | None, event_id: uuid.UUID | None, at: datetime
) -> None:
    """Record that a retired CA's final CRL was signed (number None: none could be)."""
    await conn.execute(
        "UPDATE retirements SET final_crl_number = $2, final_crl_event_id = $3, final_crl_at = $4 WHERE ca_id = $1",
        ca_id,
        number,
        event_id,
        at,
    )


async def event_published(conn: asyncpg.Connection, event_id: uuid.UUID) -> bool:
    """Whether an event of this service's outbox is on the log (a row no longer kept was published)."""
    value = await conn.fetchval("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1", event_id)
    return value is None or bool(value)


async def events_published_through(conn: asyncpg.Connection, subject: str, event_id: uuid.UUID) -> bool:
    """Whether every event of this service's outbox on `subject`, up to and including `event_id`, is
    on the log (the final CRLs of a sharded CA's shards are enqueued together)."""
    value = await conn.fetchval(
        "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE subject = $1 AND published_at IS NULL AND NOT suppressed "
        "AND id <= COALESCE((SELECT id FROM outbox WHERE event_id = $2), 0))",
        subject,
        event_id,
    )
    return bool(value) and await event_published(conn, event_id)


async def ca_crl_shards(conn: asyncpg.Connection, ca_id: str) -> int | None:
    """The CRL shards a CA was created with (None: one CRL)."""
    value: int | None = await conn.fetchval("SELECT crl_shards FROM cas WHERE ca_id = $1", ca_id)
    return value


async def save_key_destroyed(conn: asyncpg.Connection, ca_id: str, at: datetime) -> None:
    """Record that a retired CA's key is destroyed (its retirement is finished)."""
    await conn.execute("UPDATE retirements SET key_destroyed_at = $2 WHERE ca_id = $1", ca_id, at)


async def add_issuing_request(
    conn: asyncpg.Connection,
    ca_id: str,
    *,
    parent_id: str,
    csr_pem: str,
    spki_sha256: str,
    correlation_id: str,
    at: datetime,
) -> None:
    """Record an issuing CA key waiting for the offline root's ceremony to certify it."""
    await conn.execute(
        "INSERT INTO issuing_requests (ca_id, parent_id, csr_pem, spki_sha256, correlation_id, requested_at) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        ca_id,
        parent_id,
        csr_pem,
        spki_sha256,
        correlation_id,
        at,
    )


async def waiting_issuing_request(conn: asyncpg.Connection) -> asyncpg.Record | None:
    """The issuing CA key waiting for the ceremony, if one is."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT ca_id, parent_id, csr_pem, spki_sha256, correlation_id, requested_at "
        "FROM issuing_requests WHERE certified_at IS NULL"
    )
    return row


async def mark_certified(conn: asyncpg.Connection, ca_id: str, at: datetime) -> None:
    """The ceremony's certificate for a waiting issuing CA key was adopted."""
    await conn.execute("UPDATE issuing_requests SET certified_at = $2 WHERE ca_id = $1", ca_id, at)


async def crl_number(conn: asyncpg.Connection, ca_id: str) -> int:
    """The number of the last CRL of an unsharded CA (0: none yet)."""
    value = await conn.fetchval("SELECT crl_number FROM crl_state WHERE ca_id = $1 AND shard = 0", ca_id)
    return int(value or 0)


async def key_offline(conn: asyncpg.Connection, ca_id: str) -> bool:
    """Whether a CA is an offline root (its key is the ceremony's)."""
    return bool(await conn.fetchval("SELECT key_offline FROM cas WHERE ca_id = $1", ca_id))


async def offline_roots(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The active offline roots, each with its last CRL from the ceremony (crl_number 0: none yet)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT c.ca_id, s.crl_number, s.this_update, s.next_update FROM cas c JOIN crl_state s USING (ca_id) "
        "WHERE c.key_offline AND c.status = 'active' AND s.shard = 0 ORDER BY c.created_at DESC"
    )
    return rows


async def advance_root_crl(
    conn: asyncpg.Connection, ca_id: str, number: int, *, this_update: datetime, next_update: datetime
) -> bool:
    """Record the ceremony's CRL `number` as an offline root's latest, if it is above the last one
    (False: it is not, and nothing changed)."""
    done = await conn.fetchval(
        "UPDATE crl_state SET crl_number = $2, this_update = $3, next_update = $4 "
        "WHERE ca_id = $1 AND shard = 0 AND crl_number < $2 RETURNING true",
        ca_id,
        number,
        this_update,
        next_update,
    )
    return bool(done)
