"""Revocation's SQL (schema `revocation`)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.revocation.domain import Known
from shared.events import CertificateIssued


async def add_certificate(conn: asyncpg.Connection, e: CertificateIssued) -> None:
    """Learn of an issued certificate."""
    await conn.execute(
        "INSERT INTO certificates (serial, cert_id, issuer_id, not_after, spki_sha256) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (serial) DO NOTHING",
        e.serial,
        e.aggregate_id,
        e.issuer_id,
        e.not_after,
        e.spki_sha256,
    )


async def find(conn: asyncpg.Connection, serial: str) -> Known | None:
    """A certificate by serial, locked for this transaction."""
    row = await conn.fetchrow(
        "SELECT serial, cert_id, issuer_id, status, spki_sha256 FROM certificates WHERE serial = $1 FOR UPDATE", serial
    )
    if row is None:
        return None
    return Known(row["serial"], row["cert_id"], row["issuer_id"], row["status"], row["spki_sha256"])


async def mark_revoked(conn: asyncpg.Connection, serial: str, at: datetime, reason: str) -> None:
    """Set a certificate revoked."""
    await conn.execute(
        "UPDATE certificates SET status = 'revoked', revoked_at = $2, reason = $3 WHERE serial = $1",
        serial,
        at,
        reason,
    )


async def record_request(
    conn: asyncpg.Connection, request_id: str, serial: str, reason: str, by: str, outcome: str, at: datetime
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
