"""ACME external account binding credentials (RFC 8555 §7.3.4), in ACME's schema: their SQL, once.

An operator creates a credential for a Certbus provisioner (`certbus acme eab create`); ACME reads it
to verify a newAccount's binding and binds it to that one account, once. Both sides use these
functions, on a connection whose search path starts with ACME's schema: the CLI may not import the
ACME service, and the SQL is defined here only.

The HMAC key is stored in the table, as step-ca stores its EAB keys: ACME must read it to verify.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

SCHEMA = "acme"
TABLE = "eab_credentials"
HMAC_KEY_BYTES = 32
KID_BYTES = 16


@dataclass(frozen=True)
class Credential:
    """A credential as the operator sees it (never with its key)."""

    kid: str
    provisioner_id: str
    profile: str | None
    created_at: datetime
    created_by: str
    account_id: str | None
    bound_at: datetime | None
    revoked_at: datetime | None


def _credential(row: asyncpg.Record) -> Credential:
    return Credential(
        kid=row["kid"],
        provisioner_id=row["provisioner_id"],
        profile=row["profile"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        account_id=row["account_id"],
        bound_at=row["bound_at"],
        revoked_at=row["revoked_at"],
    )


async def migrated(conn: asyncpg.Connection) -> bool:
    """Whether the connection sees ACME's credentials table (its migrations ran)."""
    found = await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.{TABLE}")
    return found is not None


def new_kid() -> str:
    """A new key id: 128 random bits in lowercase hex.

    Hex, not base64url: a base64url id begins with `-` one time in 64, and a command line then reads
    it as an option (`certbus acme eab revoke -y4a...`), and so does a user's shell script.
    """
    return secrets.token_hex(KID_BYTES)


async def create(
    conn: asyncpg.Connection, provisioner_id: str, profile: str | None, created_by: str, now: datetime
) -> tuple[str, bytes]:
    """A new credential for `provisioner_id`: its key id and its HMAC key (shown once, to the operator)."""
    kid, key = new_kid(), secrets.token_bytes(HMAC_KEY_BYTES)
    await conn.execute(
        "INSERT INTO eab_credentials (kid, hmac_key, provisioner_id, profile, created_at, created_by) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        kid,
        key,
        provisioner_id,
        profile,
        now,
        created_by,
    )
    return kid, key


async def listed(conn: asyncpg.Connection) -> list[Credential]:
    """Every credential, oldest first."""
    rows = await conn.fetch(
        "SELECT kid, provisioner_id, profile, created_at, created_by, account_id, bound_at, revoked_at "
        "FROM eab_credentials ORDER BY created_at, kid"
    )
    return [_credential(r) for r in rows]


async def revoke(conn: asyncpg.Connection, kid: str, now: datetime) -> Credential | None:
    """Revoke a credential (it binds no account from now on; a revoked one keeps its first revocation
    time): the credential, or None if there is none with that key id."""
    row = await conn.fetchrow(
        "UPDATE eab_credentials SET revoked_at = COALESCE(revoked_at, $2) WHERE kid = $1 "
        "RETURNING kid, provisioner_id, profile, created_at, created_by, account_id, bound_at, revoked_at",
        kid,
        now,
    )
    return None if row is None else _credential(row)


async def key_of(conn: asyncpg.Connection, kid: str) -> tuple[bytes, Credential] | None:
    """A credential with its HMAC key, for ACME to verify a binding with; None if unknown."""
    row = await conn.fetchrow("SELECT * FROM eab_credentials WHERE kid = $1", kid)
    return None if row is None else (bytes(row["hmac_key"]), _credential(row))


async def bind(conn: asyncpg.Connection, kid: str, account_id: str, now: datetime) -> bool:
    """Bind an unused, unrevoked credential to an account: whether this call did (of two concurrent
    bindings of one credential, the row lock lets one through)."""
    result: str = await conn.execute(
        "UPDATE eab_credentials SET account_id = $2, bound_at = $3 "
        "WHERE kid = $1 AND account_id IS NULL AND revoked_at IS NULL",
        kid,
        account_id,
        now,
    )
    return result.endswith(" 1")
