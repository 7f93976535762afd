"""Enrollment's SQL (schema `enrollment`)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.events import Reason


async def save_provisioner(
    conn: asyncpg.Connection,
    provisioner_id: str,
    name: str,
    public_key_pem: str,
    registered_at: datetime,
    registered_by: str,
) -> None:
    """Insert or replace a provisioner's public key."""
    await conn.execute(
        "INSERT INTO provisioners VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provisioner_id) DO UPDATE "
        "SET name = $2, public_key_pem = $3, registered_at = $4, registered_by = $5",
        provisioner_id,
        name,
        public_key_pem,
        registered_at,
        registered_by,
    )


async def provisioner_key(conn: asyncpg.Connection, provisioner_id: str) -> str | None:
    """The PEM public key of a registered provisioner."""
    value: str | None = await conn.fetchval(
        "SELECT public_key_pem FROM provisioners WHERE provisioner_id = $1", provisioner_id
    )
    return value


async def spend_token(
    conn: asyncpg.Connection, token_id: str, provisioner_id: str, request_id: str, at: datetime
) -> bool:
    """Mark a token used by `request_id`; False if it had been used already."""
    row = await conn.fetchval(
        "INSERT INTO token_uses VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
        token_id,
        provisioner_id,
        request_id,
        at,
    )
    return row is not None


async def record_decision(
    conn: asyncpg.Connection,
    request_id: str,
    requester: str,
    profile: str,
    reasons: list[Reason],
    dns_names: list[str],
    requested_at: datetime,
    decided_at: datetime,
) -> None:
    """Keep the outcome of a request."""
    await conn.execute(
        "INSERT INTO requests (request_id, requester, profile, status, reasons, dns_names, "
        "requested_at, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (request_id) DO NOTHING",
        request_id,
        requester,
        profile,
        "rejected" if reasons else "approved",
        [r.model_dump() for r in reasons],
        dns_names,
        requested_at,
        decided_at,
    )
