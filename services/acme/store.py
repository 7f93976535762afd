"""ACME's SQL (schema `acme`): nonces and accounts."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

import asyncpg


def new_token() -> str:
    """128 random bits, base64url: a nonce or an object's id."""
    return secrets.token_urlsafe(16)


async def issue_nonce(conn: asyncpg.Connection, now: datetime, ttl: timedelta) -> str:
    """A fresh nonce, usable once until now + ttl by any replica."""
    nonce = new_token()
    await conn.execute("INSERT INTO nonces (nonce, expires_at) VALUES ($1, $2)", nonce, now + ttl)
    return nonce


async def use_nonce(conn: asyncpg.Connection, nonce: str, now: datetime) -> bool:
    """Spend a nonce: True once for a nonce issued here and not expired, False ever after."""
    row = await conn.fetchrow("DELETE FROM nonces WHERE nonce = $1 RETURNING expires_at", nonce)
    return row is not None and row["expires_at"] > now


async def prune_nonces(conn: asyncpg.Connection, now: datetime) -> int:
    """Forget expired nonces; how many."""
    result: str = await conn.execute("DELETE FROM nonces WHERE expires_at <= $1", now)
    return int(result.split()[-1])


async def account_by_thumbprint(conn: asyncpg.Connection, thumbprint: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM accounts WHERE thumbprint = $1", thumbprint)
    return row


async def account(conn: asyncpg.Connection, account_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM accounts WHERE account_id = $1", account_id)
    return row


async def create_account(
    conn: asyncpg.Connection, thumbprint: str, jwk: dict[str, Any], contact: list[str], tos_agreed: bool, now: datetime
) -> tuple[asyncpg.Record, bool]:
    """The account of this key, created unless it exists: (its row, whether it was created now)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO accounts (account_id, thumbprint, jwk, status, contact, tos_agreed, created_at, updated_at) "
        "VALUES ($1, $2, $3, 'valid', $4, $5, $6, $6) ON CONFLICT (thumbprint) DO NOTHING RETURNING *",
        new_token(),
        thumbprint,
        jwk,
        contact,
        tos_agreed,
        now,
    )
    if row is not None:
        return row, True
    existing = await account_by_thumbprint(conn, thumbprint)
    assert existing is not None  # the conflict was with it, and accounts are never deleted
    return existing, False


async def update_account(
    conn: asyncpg.Connection, account_id: str, now: datetime, *, contact: list[str] | None, deactivate: bool
) -> asyncpg.Record:
    """Replace a valid account's contacts and/or deactivate it (for good, RFC 8555 §7.3.6)."""
    row: asyncpg.Record = await conn.fetchrow(
        "UPDATE accounts SET contact = COALESCE($2, contact), "
        "status = CASE WHEN $3 THEN 'deactivated' ELSE status END, updated_at = $4 "
        "WHERE account_id = $1 RETURNING *",
        account_id,
        contact,
        deactivate,
        now,
    )
    return row
