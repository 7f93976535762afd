"""Revocation's SQL (schema `revocation`)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.revocation.domain import Known
from shared.contract.events import CertificateIssued

_COLUMNS = "serial, cert_id, issuer_id, status, spki_sha256, spki_der, fingerprint_sha256, destroyed_at"
# Learning a certificate and recording its key compromised take this transaction lock on the key
# first, so that with several replicas neither misses the other: the statement after it sees what
# the other transaction committed (a certificate of the key, or the key's compromise).
_LOCK_KEY = "WITH key_lock AS (SELECT pg_advisory_xact_lock(hashtext('certbus.revocation.key'), hashtext($1::text)))"


def _known(row: asyncpg.Record) -> Known:
    der = row["spki_der"]
    return Known(
        row["serial"],
        row["cert_id"],
        row["issuer_id"],
        row["status"],
        row["spki_sha256"],
        bytes(der) if der else None,
        row["fingerprint_sha256"],
        row["destroyed_at"],
    )


async def add_certificate(
    conn: asyncpg.Connection, e: CertificateIssued, spki_sha256: str, spki_der: bytes | None
) -> bool:
    """Learn of an issued certificate and its public key (holding the key's lock to the end of the
    transaction); False if it was known already."""
    added = await conn.fetchval(
        f"{_LOCK_KEY} INSERT INTO certificates (spki_sha256, serial, cert_id, issuer_id, not_after, spki_der, "
        "fingerprint_sha256) SELECT $1, $2, $3, $4, $5, $6, $7 FROM key_lock ON CONFLICT (serial) DO NOTHING "
        "RETURNING true",
        spki_sha256,
        e.serial,
        e.aggregate_id,
        e.issuer_id,
        e.not_after,
        spki_der,
        e.fingerprint_sha256,
    )
    return bool(added)


async def find(conn: asyncpg.Connection, serial: str) -> Known | None:
    """A certificate by serial, locked for this transaction."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM certificates WHERE serial = $1 FOR UPDATE", serial)
    return None if row is None else _known(row)


async def live_with_key(conn: asyncpg.Connection, spki_sha256: str, now: datetime) -> list[Known]:
    """Every certificate with this key that is neither revoked nor expired, locked, in serial order."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM certificates WHERE spki_sha256 = $1 AND status = 'good' AND not_after > $2 "
        "ORDER BY serial FOR UPDATE",
        spki_sha256,
        now,
    )
    return [_known(row) for row in rows]


async def mark_revoked(conn: asyncpg.Connection, serial: str, at: datetime, reason: str) -> None:
    """Set a certificate revoked."""
    await conn.execute(
        "UPDATE certificates SET status = 'revoked', revoked_at = $2, reason = $3 WHERE serial = $1",
        serial,
        at,
        reason,
    )


async def mark_destroyed(conn: asyncpg.Connection, serial: str, at: datetime) -> None:
    """Set a certificate destroyed and drop its public key's DER (the SPKI hash stays, for key blocking)."""
    await conn.execute(
        "UPDATE certificates SET destroyed_at = $2, spki_der = NULL WHERE serial = $1 AND destroyed_at IS NULL",
        serial,
        at,
    )


async def record_compromise(
    conn: asyncpg.Connection, spki_sha256: str, serial: str, *, request_id: str, at: datetime
) -> bool:
    """Record that a key is compromised (certificate `serial` revoked for keyCompromise by request
    `request_id`), holding the key's lock to the end of the transaction; False if it was already."""
    added = await conn.fetchval(
        f"{_LOCK_KEY} INSERT INTO compromised_keys (spki_sha256, serial, request_id, recorded_at) "
        "SELECT $1, $2, $3, $4 FROM key_lock ON CONFLICT DO NOTHING RETURNING true",
        spki_sha256,
        serial,
        request_id,
        at,
    )
    return bool(added)


async def compromised_by(conn: asyncpg.Connection, spki_sha256: str) -> tuple[str, str] | None:
    """The serial and request whose keyCompromise revocation recorded this key as compromised, if any."""
    row = await conn.fetchrow("SELECT serial, request_id FROM compromised_keys WHERE spki_sha256 = $1", spki_sha256)
    return None if row is None else (row["serial"], row["request_id"])


async def record_request(
    conn: asyncpg.Connection, request_id: str, serial: str, *, reason: str, by: str, outcome: str, at: datetime
) -> None:
    """Keep a request's outcome."""
    await conn.execute(
        "INSERT INTO requests VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        request_id,
        serial,
        reason,
        by,
        outcome,
        at,
    )


async def record_issuer_compromise(conn: asyncpg.Connection, ca_id: str, by: str, at: datetime) -> bool:
    """Record an issuing CA as compromised (locking its row to the end of the transaction, so that a
    certificate of it learnt concurrently is revoked by one side or the other); False if it was already."""
    added = await conn.fetchval(
        "INSERT INTO compromised_issuers VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true", ca_id, by, at
    )
    return bool(added)


async def issuer_compromised(conn: asyncpg.Connection, ca_id: str) -> bool:
    """Whether an issuer was declared compromised (waits for a declaration being committed)."""
    row = await conn.fetchval("SELECT true FROM compromised_issuers WHERE ca_id = $1 FOR SHARE", ca_id)
    return bool(row)


async def revoke_all_of_issuer(conn: asyncpg.Connection, ca_id: str, at: datetime) -> list[asyncpg.Record]:
    """Revoke every live certificate of an issuer (cACompromise) in one statement; returns their
    serial, cert_id and not_after in serial order."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "UPDATE certificates SET status = 'revoked', revoked_at = $2, reason = 'cACompromise' "
        "WHERE issuer_id = $1 AND status = 'good' AND not_after > $2 RETURNING serial, cert_id",
        ca_id,
        at,
    )
    return sorted(rows, key=lambda r: r["serial"])
