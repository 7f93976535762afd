"""Validation's SQL (schema `validation`). Revoked wins: status never returns to good."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from shared.contract.events import (
    CaCreated,
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateRevoked,
    CertificateSuperseded,
)

# Appended to a statement whose CTE `changed` returns (serial, issuer_id) of the rows whose OCSP status
# it may have changed: the change is recorded in the same transaction, for every replica's poll.
_CHANGED = "INSERT INTO status_changes (serial, ca_id) SELECT serial, issuer_id FROM changed"


async def apply_issued(conn: asyncpg.Connection, issued: Sequence[tuple[CertificateIssued, bytes]]) -> None:
    """Record issued certificates (each with its DER), in log order, in one pipelined statement; a
    revocation that arrived first keeps its status, and the body of a destroyed certificate is never
    stored again."""
    await conn.executemany(
        "INSERT INTO certificates (serial, cert_id, issuer_id, status, not_before, not_after, dns_names, "
        "fingerprint, cert_der) VALUES ($1, $2, $3, 'good', $4, $5, $6, $7, $8) "
        "ON CONFLICT (serial) DO UPDATE SET cert_id = $2, issuer_id = $3, not_before = $4, "
        "not_after = $5, dns_names = $6, fingerprint = $7, "
        "cert_der = CASE WHEN certificates.destroyed_at IS NULL THEN $8 END",
        [
            (e.serial, e.aggregate_id, e.issuer_id, e.not_before, e.not_after, e.dns_names, e.fingerprint_sha256, der)
            for e, der in issued
        ],
    )


async def apply_revoked(conn: asyncpg.Connection, e: CertificateRevoked) -> None:
    """Mark a serial revoked (the earliest revocation time is kept)."""
    await conn.execute(
        "WITH changed AS (INSERT INTO certificates (serial, cert_id, issuer_id, status, revoked_at, reason) "
        "VALUES ($1, $2, $3, 'revoked', $4, $5) ON CONFLICT (serial) DO UPDATE SET status = 'revoked', "
        "revoked_at = LEAST(COALESCE(certificates.revoked_at, $4), $4), "
        "reason = COALESCE(certificates.reason, $5) RETURNING serial, issuer_id) "
        f"{_CHANGED}",
        e.serial,
        e.aggregate_id,
        e.issuer_id,
        e.revoked_at,
        e.reason,
    )


async def apply_superseded(conn: asyncpg.Connection, e: CertificateSuperseded) -> None:
    """Record which certificate replaced this one (it stays good until it expires or is revoked)."""
    await conn.execute(
        "UPDATE certificates SET superseded_by = $2, superseded_by_id = $3 WHERE serial = $1",
        e.serial,
        e.superseded_by,
        e.superseded_by_id,
    )


async def apply_expired(conn: asyncpg.Connection, e: CertificateExpired) -> None:
    """Record that a certificate reached its notAfter."""
    await conn.execute(
        "UPDATE certificates SET expired_at = $2 WHERE serial = $1 AND expired_at IS NULL", e.serial, e.not_after
    )


async def apply_destroyed(conn: asyncpg.Connection, e: CertificateDestroyed) -> None:
    """Mark a certificate destroyed and purge its body (it stays revoked for OCSP and CRLs)."""
    await conn.execute(
        "WITH changed AS (INSERT INTO certificates (serial, cert_id, issuer_id, status, fingerprint, destroyed_at) "
        "VALUES ($1, $2, $3, 'revoked', NULLIF($4, ''), $5) ON CONFLICT (serial) DO UPDATE SET cert_der = NULL, "
        "destroyed_at = COALESCE(certificates.destroyed_at, $5) RETURNING serial, issuer_id) "
        f"{_CHANGED}",
        e.serial,
        e.aggregate_id,
        e.issuer_id,
        e.fingerprint_sha256,
        e.destroyed_at,
    )


async def apply_ca(conn: asyncpg.Connection, e: CaCreated, cert_der: bytes) -> None:
    """Record a CA certificate."""
    await conn.execute(
        "INSERT INTO cas VALUES ($1, $2, $3, $4, $5) ON CONFLICT (ca_id) DO NOTHING",
        e.ca_id,
        e.role,
        e.parent_id,
        cert_der,
        e.not_after,
    )


UNSHARDED = -1  # the shard column's value for an unsharded CA's only CRL


async def apply_crl(
    conn: asyncpg.Connection,
    ca_id: str,
    number: int,
    *,
    shard: int | None,
    this_update: datetime,
    next_update: datetime,
    der: bytes,
) -> None:
    """Keep the newest CRL of an issuer's shard (an older one arriving late changes nothing)."""
    await conn.execute(
        "INSERT INTO crls (ca_id, crl_number, this_update, next_update, der, shard) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (ca_id, shard) DO UPDATE SET "
        "crl_number = $2, this_update = $3, next_update = $4, der = $5 WHERE crls.crl_number < $2",
        ca_id,
        number,
        this_update,
        next_update,
        der,
        UNSHARDED if shard is None else shard,
    )


async def status(conn: asyncpg.Connection, serial: str) -> asyncpg.Record | None:
    """The status row of a serial."""
    # A certificate of a CA declared compromised is revoked from the declaration on, whether or not
    # revocation's own event for it has arrived yet.
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT c.serial, c.cert_id, c.issuer_id, c.not_before, c.not_after, c.dns_names, c.fingerprint, "
        "c.superseded_by, c.superseded_by_id, c.expired_at, c.destroyed_at, "
        "CASE WHEN a.compromised_at IS NOT NULL THEN 'revoked' ELSE c.status END AS status, "
        "CASE WHEN c.status = 'revoked' THEN c.revoked_at ELSE a.compromised_at END AS revoked_at, "
        "CASE WHEN c.status = 'revoked' THEN c.reason WHEN a.compromised_at IS NOT NULL THEN 'cACompromise' END "
        "AS reason FROM certificates c LEFT JOIN cas a ON a.ca_id = c.issuer_id WHERE c.serial = $1",
        serial,
    )
    return row


async def apply_compromise(conn: asyncpg.Connection, ca_id: str, at: datetime) -> None:
    """Record a CA as compromised (the first declaration's time is kept)."""
    await conn.execute(
        "WITH changed AS (UPDATE cas SET compromised_at = LEAST(COALESCE(compromised_at, $2), $2) WHERE ca_id = $1 "
        "RETURNING NULL::text AS serial, ca_id AS issuer_id) "
        f"{_CHANGED}",
        ca_id,
        at,
    )


async def cas(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every CA known from the log."""
    rows: list[asyncpg.Record] = await conn.fetch("SELECT ca_id, role, parent_id, cert_der, not_after FROM cas")
    return rows


async def crl(conn: asyncpg.Connection, ca_id: str, shard: int | None = None) -> asyncpg.Record | None:
    """The newest CRL of an issuer's shard (shard None: of an unsharded issuer)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT ca_id, crl_number, this_update, next_update, der, NULLIF(shard, -1) AS shard FROM crls "
        "WHERE ca_id = $1 AND shard = $2",
        ca_id,
        UNSHARDED if shard is None else shard,
    )
    return row


async def crl_shard_count(conn: asyncpg.Connection, ca_id: str) -> int:
    """How many shards of an issuer have a CRL here (0: none, or the issuer is unsharded)."""
    value: int = await conn.fetchval("SELECT count(*) FROM crls WHERE ca_id = $1 AND shard >= 0", ca_id)
    return value


async def ca_der(conn: asyncpg.Connection, ca_id: str) -> bytes | None:
    """A CA certificate's DER."""
    value: bytes | None = await conn.fetchval("SELECT cert_der FROM cas WHERE ca_id = $1", ca_id)
    return value


async def issuing_cas(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The issuing CAs known from the log, the one that expires last (the newest) first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT ca_id, cert_der, not_after FROM cas WHERE role = 'issuing' ORDER BY not_after DESC"
    )
    return rows


async def live_issuing_cas(conn: asyncpg.Connection, now: datetime) -> list[tuple[str, datetime]]:
    """The issuing CAs known from the log that are neither expired nor compromised: id and notAfter."""
    rows = await conn.fetch(
        "SELECT ca_id, not_after FROM cas WHERE role = 'issuing' AND compromised_at IS NULL AND not_after > $1 "
        "ORDER BY not_after DESC",
        now,
    )
    return [(r["ca_id"], r["not_after"]) for r in rows]


class Snapshot(NamedTuple):
    """A PostgreSQL snapshot (pg_snapshot): transactions below `xmin` had finished, those at or above
    `xmax` had not begun, those in `xip` were in progress."""

    xmin: int
    xmax: int
    xip: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """From pg_snapshot's text form, `xmin:xmax:xip,...`."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(int(x) for x in xip.split(",") if x))


async def status_changes_since(conn: asyncpg.Connection, seen: Snapshot) -> tuple[Snapshot, list[asyncpg.Record]]:
    """The status changes committed since the snapshot `seen` (those its transactions could not see:
    begun at or after its xmax, or in progress then), and the snapshot they were read in."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT pg_current_snapshot()::text AS snapshot, c.id, c.serial, c.ca_id "
        "FROM (SELECT 1) AS one LEFT JOIN status_changes c "
        "ON c.xid >= $1::text::xid8 OR c.xid = ANY($2::text[]::xid8[])",
        str(seen.xmax),
        [str(x) for x in seen.xip],
    )
    return Snapshot.parse(rows[0]["snapshot"]), [r for r in rows if r["id"] is not None]


async def snapshot(conn: asyncpg.Connection) -> Snapshot:
    """A snapshot taken now."""
    return Snapshot.parse(await conn.fetchval("SELECT pg_current_snapshot()::text"))


async def prune_status_changes(conn: asyncpg.Connection, floor: int) -> int:
    """Delete the status changes of the transactions below `floor` (a snapshot's xmin seen long enough
    ago that every replica has polled since, or forgotten everything); how many were deleted."""
    result: str = await conn.execute("DELETE FROM status_changes WHERE xid < $1::text::xid8", str(floor))
    return int(result.rsplit(" ", 1)[-1])
