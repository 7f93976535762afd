"""ACME's SQL (schema `acme`): nonces, accounts, orders, authorizations and challenges; EAB
credentials' SQL is `shared.trust.eab`'s."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shared.trust import eab


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
    conn: asyncpg.Connection,
    thumbprint: str,
    jwk: dict[str, Any],
    contact: list[str],
    tos_agreed: bool,
    now: datetime,
    *,
    provisioner_id: str | None = None,
    profile: str | None = None,
) -> tuple[asyncpg.Record, bool]:
    """The account of this key, created unless it exists: (its row, whether it was created now).
    `provisioner_id` and `profile` are what its external account binding named, if any."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO accounts (account_id, thumbprint, jwk, status, contact, tos_agreed, created_at, updated_at, "
        "provisioner_id, profile) VALUES ($1, $2, $3, 'valid', $4, $5, $6, $6, $7, $8) "
        "ON CONFLICT (thumbprint) DO NOTHING RETURNING *",
        new_token(),
        thumbprint,
        jwk,
        contact,
        tos_agreed,
        now,
        provisioner_id,
        profile,
    )
    if row is not None:
        return row, True
    existing = await account_by_thumbprint(conn, thumbprint)
    assert existing is not None  # the conflict was with it, and accounts are never deleted
    return existing, False


class _CredentialTaken(Exception):
    """Rolls back an account whose credential another account bound meanwhile."""


async def create_bound_account(
    conn: asyncpg.Connection,
    thumbprint: str,
    jwk: dict[str, Any],
    contact: list[str],
    tos_agreed: bool,
    now: datetime,
    credential: eab.Credential,
) -> tuple[asyncpg.Record, bool] | None:
    """As `create_account`, the new account bound to `credential` in the same transaction (the
    account of this key if it exists already, unbound): None, and nothing created, if the credential
    was bound or revoked meanwhile."""
    try:
        async with conn.transaction():
            row, created = await create_account(
                conn,
                thumbprint,
                jwk,
                contact,
                tos_agreed,
                now,
                provisioner_id=credential.provisioner_id,
                profile=credential.profile,
            )
            if created and not await eab.bind(conn, credential.kid, row["account_id"], now):
                raise _CredentialTaken
    except _CredentialTaken:
        return None
    return row, created


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


# -- revocation and renewal ---------------------------------------------------------------------------


async def order_by_serial(conn: asyncpg.Connection, serial: str) -> asyncpg.Record | None:
    """The valid order whose certificate has `serial` (lower-case hex, as Certbus writes it)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM orders WHERE serial = $1 AND finalize_status = 'valid'", serial
    )
    return row


async def replacing_order(conn: asyncpg.Connection, serial: str, now: datetime) -> str | None:
    """An order that replaces the certificate `serial` and may still yield its replacement (not
    refused, not expired unfinalized): the id of one, or None."""
    order_id: str | None = await conn.fetchval(
        "SELECT order_id FROM orders WHERE replaces = $1 AND finalize_status IS DISTINCT FROM 'invalid' "
        "AND (finalize_status IS NOT NULL OR expires_at > $2) LIMIT 1",
        serial,
        now,
    )
    return order_id


async def renewable_for(
    conn: asyncpg.Connection, account_id: str, names: list[str], now: datetime
) -> list[asyncpg.Record]:
    """The account's newest certificates (serial, cert_chain) for exactly `names` that no order
    replaces yet, newest first (a few): an order for the same names again renews the newest
    unexpired one (as Let's Encrypt counts renewals)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT o.serial, o.cert_chain FROM orders o WHERE o.account_id = $1 AND o.finalize_status = 'valid' "
        "AND o.identifiers = $2::jsonb "
        "AND NOT EXISTS (SELECT 1 FROM orders r WHERE r.replaces = o.serial "
        "AND r.finalize_status IS DISTINCT FROM 'invalid' AND (r.finalize_status IS NOT NULL OR r.expires_at > $3)) "
        "ORDER BY o.finalized_at DESC LIMIT 5",
        account_id,
        [{"type": "dns", "value": n} for n in names],
        now,
    )
    return rows


async def set_replaces(conn: asyncpg.Connection, order_id: str, serial: str) -> None:
    await conn.execute("UPDATE orders SET replaces = $2 WHERE order_id = $1", order_id, serial)
