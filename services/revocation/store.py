"""Revocation's SQL (schema `revocation`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg

from services.revocation.domain import Known
from shared.contract.events import CertificateIssued
from shared.contract.reasons import printable

_COLUMNS = "serial, cert_id, issuer_id, status, spki_sha256, spki_der, fingerprint_sha256, destroyed_at, requester"
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
        row["requester"],
    )


async def add_certificates(
    conn: asyncpg.Connection, issued: Sequence[tuple[CertificateIssued, str, bytes | None]]
) -> set[str]:
    """Learn of issued certificates (each with its key's SHA-256 and DER), holding each key's lock to
    the end of the transaction (taken in key order), in one statement; returns the serials that were
    not known already (a serial twice: the first)."""
    if not issued:
        return set()
    rows = await conn.fetch(
        "WITH key_lock AS (SELECT count(pg_advisory_xact_lock(hashtext('certbus.revocation.key'), hashtext(k))) "
        "FROM (SELECT DISTINCT k FROM unnest($1::text[]) AS k ORDER BY k) keys) "
        "INSERT INTO certificates "
        "(spki_sha256, serial, cert_id, issuer_id, not_after, spki_der, fingerprint_sha256, requester) "
        "SELECT t.spki, t.serial, t.cert_id, t.issuer, t.not_after, t.der, t.fp, t.requester "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::bytea[], $7::text[], "
        "$8::text[]) WITH ORDINALITY AS t(spki, serial, cert_id, issuer, not_after, der, fp, requester, i), key_lock "
        "ORDER BY t.i "
        "ON CONFLICT (serial) DO NOTHING RETURNING serial",
        [spki for _, spki, _ in issued],
        [e.serial for e, _, _ in issued],
        [e.aggregate_id for e, _, _ in issued],
        [e.issuer_id for e, _, _ in issued],
        [e.not_after for e, _, _ in issued],
        [der for _, _, der in issued],
        [e.fingerprint_sha256 for e, _, _ in issued],
        [printable(e.requester) if e.requester is not None else None for e, _, _ in issued],
    )
    return {r["serial"] for r in rows}


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


async def compromised_by(conn: asyncpg.Connection, spkis: Sequence[str]) -> dict[str, tuple[str, str]]:
    """For each of these keys recorded as compromised by a keyCompromise revocation: that
    revocation's serial and request."""
    rows = await conn.fetch(
        "SELECT spki_sha256, serial, request_id FROM compromised_keys WHERE spki_sha256 = ANY($1::text[])", list(spkis)
    )
    return {r["spki_sha256"]: (r["serial"], r["request_id"]) for r in rows}


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


async def issuers_compromised(conn: asyncpg.Connection, ca_ids: Sequence[str]) -> set[str]:
    """Which of these issuers were declared compromised (waits for a declaration being committed)."""
    rows = await conn.fetch(
        "SELECT ca_id FROM compromised_issuers WHERE ca_id = ANY($1::text[]) FOR SHARE", list(ca_ids)
    )
    return {r["ca_id"] for r in rows}


async def revoke_all_of_issuer(conn: asyncpg.Connection, ca_id: str, at: datetime) -> int:
    """Revoke every live certificate of an issuer (cACompromise, revoked at `at`) in one statement;
    returns how many (`revoked_by_compromise` reads them back)."""
    status: str = await conn.execute(
        "UPDATE certificates SET status = 'revoked', revoked_at = $2, reason = 'cACompromise' "
        "WHERE issuer_id = $1 AND status = 'good' AND not_after > $2",
        ca_id,
        at,
    )
    return int(status.split()[-1])


async def revoked_by_compromise(
    conn: asyncpg.Connection, ca_id: str, at: datetime, chunk: int
) -> AsyncIterator[list[asyncpg.Record]]:
    """The (serial, cert_id) of what `revoke_all_of_issuer(ca_id, at)` revoked, in serial order,
    `chunk` at a time through a cursor (in the caller's transaction): never all in memory at once."""
    cursor = await conn.cursor(
        "SELECT serial, cert_id FROM certificates WHERE issuer_id = $1 AND status = 'revoked' "
        "AND reason = 'cACompromise' AND revoked_at = $2 ORDER BY serial",
        ca_id,
        at,
    )
    while rows := await cursor.fetch(chunk):
        yield rows
