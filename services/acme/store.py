"""ACME's SQL (schema `acme`): nonces, accounts, orders, authorizations and challenges."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
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


async def change_key(
    conn: asyncpg.Connection, account_id: str, old_thumbprint: str, thumbprint: str, jwk: dict[str, Any], now: datetime
) -> asyncpg.Record | None:
    """Bind the account to a new key, if it still has the old one (a concurrent change wins once);
    the account using the new key already, if another does (RFC 8555 §7.3.5: 409)."""
    async with conn.transaction():
        taken: asyncpg.Record | None = await conn.fetchrow(
            "SELECT * FROM accounts WHERE thumbprint = $1 AND account_id <> $2", thumbprint, account_id
        )
        if taken is not None:
            return taken
        await conn.execute(
            "UPDATE accounts SET thumbprint = $3, jwk = $4, updated_at = $5 WHERE account_id = $1 AND thumbprint = $2",
            account_id,
            old_thumbprint,
            thumbprint,
            jwk,
            now,
        )
    return None


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


# -- orders, authorizations, challenges ---------------------------------------------------------------


async def create_order(
    conn: asyncpg.Connection,
    account_id: str,
    names: list[str],
    challenge_types: Callable[[str], Sequence[str]],
    now: datetime,
    expires_at: datetime,
) -> str:
    """An order for `names` (dns identifiers), with one pending authorization per name (for a
    wildcard `*.base`, an authorization of `base` marked wildcard) and one challenge of each of the
    name's `challenge_types` per authorization, in one transaction: its id."""
    order_id = new_token()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO orders (order_id, account_id, identifiers, expires_at, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            order_id,
            account_id,
            [{"type": "dns", "value": n} for n in names],
            expires_at,
            now,
        )
        authz = [(new_token(), n) for n in names]
        await conn.executemany(
            "INSERT INTO authorizations (authz_id, order_id, account_id, name, wildcard, status, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
            [(a, order_id, account_id, n.removeprefix("*."), n.startswith("*."), expires_at) for a, n in authz],
        )
        await conn.executemany(
            "INSERT INTO challenges (challenge_id, authz_id, type, token, status) VALUES ($1, $2, $3, $4, 'pending')",
            [(new_token(), a, t, secrets.token_urlsafe(32)) for a, n in authz for t in challenge_types(n)],
        )
    return order_id


async def orders_since(conn: asyncpg.Connection, account_id: str, since: datetime) -> tuple[int, datetime | None]:
    """How many orders the account created since `since`, and the oldest of them's time. Taken under
    a transaction-scoped lock on the account, so that concurrent orders are counted one after another."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('acme-orders:' || $1, 0))", account_id)
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(created_at) AS oldest FROM orders WHERE account_id = $1 AND created_at > $2",
        account_id,
        since,
    )
    assert row is not None
    return int(row["n"]), row["oldest"]


async def failed_validations_since(
    conn: asyncpg.Connection, account_id: str, name: str, since: datetime
) -> tuple[int, datetime | None]:
    """How many of the account's validations for `name` failed after starting since `since`, and
    when the oldest of them started."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(c.started_at) AS oldest FROM challenges c JOIN authorizations a USING (authz_id) "
        "WHERE a.account_id = $1 AND a.name = $2 AND c.status = 'invalid' AND c.started_at > $3",
        account_id,
        name,
        since,
    )
    assert row is not None
    return int(row["n"]), row["oldest"]


async def order(conn: asyncpg.Connection, order_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM orders WHERE order_id = $1", order_id)
    return row


async def order_ids(conn: asyncpg.Connection, account_id: str, limit: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT order_id FROM orders WHERE account_id = $1 ORDER BY created_at DESC, order_id LIMIT $2",
        account_id,
        limit,
    )
    return [r["order_id"] for r in rows]


async def authorizations_of(conn: asyncpg.Connection, order_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM authorizations WHERE order_id = $1 ORDER BY name, wildcard", order_id
    )
    return rows


async def authorization(conn: asyncpg.Connection, authz_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow("SELECT * FROM authorizations WHERE authz_id = $1", authz_id)
    return row


async def deactivate_authorization(conn: asyncpg.Connection, authz_id: str) -> None:
    """RFC 8555 §7.5.2: a pending or valid authorization is deactivated, for good."""
    await conn.execute(
        "UPDATE authorizations SET status = 'deactivated' WHERE authz_id = $1 AND status IN ('pending', 'valid')",
        authz_id,
    )


async def challenges_of(conn: asyncpg.Connection, authz_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM challenges WHERE authz_id = $1 ORDER BY type", authz_id
    )
    return rows


async def challenge(conn: asyncpg.Connection, challenge_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT c.*, a.name, a.account_id, a.status AS authz_status, a.expires_at "
        "FROM challenges c JOIN authorizations a USING (authz_id) WHERE c.challenge_id = $1",
        challenge_id,
    )
    return row


async def start_validation(conn: asyncpg.Connection, challenge_id: str, now: datetime, stale: timedelta) -> bool:
    """Mark a challenge processing if its authorization is still pending and it is pending (or was
    left processing longer than `stale` ago by a replica that stopped): whether this caller won."""
    started: str = await conn.execute(
        "UPDATE challenges c SET status = 'processing', started_at = $2 FROM authorizations a "
        "WHERE c.challenge_id = $1 AND a.authz_id = c.authz_id AND a.status = 'pending' AND a.expires_at > $2 "
        "AND (c.status = 'pending' OR (c.status = 'processing' AND c.started_at < $2 - $3::interval))",
        challenge_id,
        now,
        stale,
    )
    return started.endswith(" 1")


async def finish_validation(
    conn: asyncpg.Connection, challenge_id: str, now: datetime, error: dict[str, Any] | None
) -> None:
    """Record a validation's outcome on the challenge and its authorization (valid, or invalid with
    the problem), unless the authorization was settled meanwhile."""
    async with conn.transaction():
        authz_id = await conn.fetchval(
            "UPDATE challenges SET status = $2, error = $3, "
            "validated_at = CASE WHEN $3::jsonb IS NULL THEN $4::timestamptz END "
            "WHERE challenge_id = $1 AND status = 'processing' RETURNING authz_id",
            challenge_id,
            "valid" if error is None else "invalid",
            error,
            now,
        )
        if authz_id is not None:
            await conn.execute(
                "UPDATE authorizations SET status = $2 WHERE authz_id = $1 AND status = 'pending'",
                authz_id,
                "valid" if error is None else "invalid",
            )


# -- finalize -----------------------------------------------------------------------------------------


async def begin_finalize(
    conn: asyncpg.Connection, order_id: str, request_id: str, request: dict[str, Any], now: datetime
) -> bool:
    """Record the enrollment request an order became, once: whether this call did (a second
    finalize of the same order finds it taken)."""
    result: str = await conn.execute(
        "UPDATE orders SET finalize_status = 'processing', request_id = $2, request = $3, finalized_at = $4 "
        "WHERE order_id = $1 AND finalize_status IS NULL",
        order_id,
        request_id,
        request,
        now,
    )
    return result.endswith(" 1")


async def finish_finalize(
    conn: asyncpg.Connection,
    order_id: str,
    *,
    serial: str | None = None,
    cert_chain: str | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    """An order's certificate (valid) or the problem that ended it (invalid), once."""
    await conn.execute(
        "UPDATE orders SET finalize_status = CASE WHEN $4::jsonb IS NULL THEN 'valid' ELSE 'invalid' END, "
        "serial = $2, cert_chain = $3, error = $4 WHERE order_id = $1 AND finalize_status = 'processing'",
        order_id,
        serial,
        cert_chain,
        error,
    )


async def processing_orders(conn: asyncpg.Connection, older_than: datetime, limit: int) -> list[asyncpg.Record]:
    """Orders still being finalized since before `older_than` (their replica may have stopped)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT order_id, request_id, request FROM orders WHERE finalize_status = 'processing' "
        "AND finalized_at < $1 ORDER BY finalized_at LIMIT $2",
        older_than,
        limit,
    )
    return rows
