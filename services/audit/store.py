"""Audit's SQL (schema `audit`, or a fresh schema during replay)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import serialization

from services.audit import domain


async def archive(conn: asyncpg.Connection, messages: Sequence[tuple[int, str, bytes]]) -> int:
    """Archive raw messages (seq, subject, bytes) and extend the hash chain; returns how many were new.

    In the usual case the batch continues the chain exactly (it starts at head + 1, without gaps),
    so the hashes are computed here and written with the rows. Otherwise (a redelivery arriving
    out of order) the rows wait unhashed and the chain is extended over what is contiguous.
    """
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
    assert head is not None
    ordered = sorted({seq: (seq, subject, raw) for seq, subject, raw in messages}.values())
    ordered = [m for m in ordered if m[0] > head["seq"]]  # already archived and chained
    contiguous = [m[0] for m in ordered] == list(range(head["seq"] + 1, head["seq"] + 1 + len(ordered)))
    current = bytes(head["hash"])
    rows, refs = [], []
    for seq, subject, raw in ordered:
        d = domain.describe(subject, raw)
        try:
            event_id = uuid.UUID(d.event_id) if d.event_id else None
        except ValueError:
            event_id = None
        digest = None
        if contiguous:
            current = domain.link(current, seq, subject, raw)
            digest = current
        rows.append((seq, subject, raw, event_id, d.event_type, d.aggregate_id, d.producer, d.occurred_at, digest))
        if d.serial:
            refs.append((d.serial, seq, d.cert_id))
        # Never with a cert id: `history` takes a serial's certificate id from its own events only.
        refs.extend((related, seq, None) for related in d.related_serials if related != d.serial)
    if not rows:
        return 0
    inserted = await conn.fetch(
        "INSERT INTO archive (stream_seq, subject, raw, event_id, event_type, aggregate_id, producer, occurred_at, "
        "hash) SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::uuid[], $5::text[], $6::text[], "
        "$7::text[], $8::timestamptz[], $9::bytea[]) ON CONFLICT DO NOTHING RETURNING stream_seq",
        *[list(col) for col in zip(*rows, strict=True)],
    )
    if refs:
        await conn.executemany("INSERT INTO serial_refs VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", refs)
    if contiguous and len(inserted) == len(rows):
        await conn.execute("UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1", ordered[-1][0], current)
        if await conn.fetchval("SELECT 1 FROM archive WHERE stream_seq = $1", ordered[-1][0] + 1):
            await advance_chain(conn)  # this batch filled a gap before rows that arrived early
    else:
        if contiguous:  # some rows existed unhashed already: recompute from the head
            await conn.execute("UPDATE archive SET hash = NULL WHERE stream_seq > $1", head["seq"])
        await advance_chain(conn)
    return len(inserted)


async def advance_chain(conn: asyncpg.Connection) -> None:
    """Extend the hash chain over every newly contiguous archived event."""
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
    assert head is not None
    seq, current = head["seq"], bytes(head["hash"])
    while True:
        rows = await conn.fetch(
            "SELECT stream_seq, subject, raw FROM archive WHERE stream_seq > $1 ORDER BY stream_seq LIMIT 5000",
            seq,
        )
        updates = []
        for row in rows:
            if row["stream_seq"] != seq + 1:
                break
            seq = row["stream_seq"]
            current = domain.link(current, seq, row["subject"], bytes(row["raw"]))
            updates.append((seq, current))
        if updates:
            await conn.executemany("UPDATE archive SET hash = $2 WHERE stream_seq = $1", updates)
        if len(updates) < 5000:
            break
    await conn.execute("UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1", seq, current)


async def head(conn: asyncpg.Connection) -> tuple[int, bytes, int]:
    """The chained head (seq, hash) and how many events are archived."""
    row = await conn.fetchrow("SELECT seq, hash, (SELECT count(*) FROM archive) AS n FROM chain_head WHERE id = 1")
    assert row is not None
    return row["seq"], bytes(row["hash"]), row["n"]


async def history(conn: asyncpg.Connection, serial: str) -> tuple[str | None, list[asyncpg.Record]]:
    """A certificate's id and every archived event of it, in log order."""
    cert_id = await conn.fetchval(
        "SELECT cert_id FROM serial_refs WHERE serial = $1 AND cert_id IS NOT NULL LIMIT 1", serial
    )
    rows = await conn.fetch(
        "SELECT stream_seq, subject, event_type, producer, occurred_at, raw FROM archive "
        "WHERE aggregate_id = $1 OR stream_seq IN (SELECT stream_seq FROM serial_refs WHERE serial = $2) "
        "ORDER BY stream_seq",
        cert_id or serial,
        serial,
    )
    return cert_id, rows


async def issued_event(conn: asyncpg.Connection, request_id: str) -> bytes | None:
    """The archived `CertificateIssued` of a request, if any (the first: redeliveries carry the same event)."""
    raw: bytes | None = await conn.fetchval(
        "SELECT raw FROM archive WHERE aggregate_id = $1 AND event_type = 'CertificateIssued' "
        "ORDER BY stream_seq LIMIT 1",
        request_id,
    )
    return raw


async def events_of_types(conn: asyncpg.Connection, event_types: list[str], limit: int) -> list[asyncpg.Record]:
    """The newest archived events of the given types."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT stream_seq, subject, event_type, producer, occurred_at, raw FROM archive "
        "WHERE event_type = ANY($1::text[]) ORDER BY stream_seq DESC LIMIT $2",
        event_types,
        limit,
    )
    return rows


async def checkpoint_due(conn: asyncpg.Connection, checkpoint_type: str) -> tuple[int, bytes, int] | None:
    """(head seq, head hash, archived events) if anything but checkpoints was chained since the last
    checkpoint; None otherwise."""
    row = await conn.fetchrow(
        "SELECT h.seq, h.hash, (SELECT coalesce(max(stream_seq), 0) FROM checkpoints) AS last "
        "FROM chain_head h WHERE h.id = 1"
    )
    assert row is not None
    if row["seq"] <= row["last"]:
        return None
    fresh = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM archive WHERE stream_seq > $1 AND stream_seq <= $2 AND event_type <> $3)",
        row["last"],
        row["seq"],
        checkpoint_type,
    )
    if not fresh:
        return None
    count = await conn.fetchval("SELECT count(*) FROM archive WHERE stream_seq <= $1", row["seq"])
    return row["seq"], bytes(row["hash"]), count


async def save_checkpoint(
    conn: asyncpg.Connection, seq: int, chain_hash: bytes, signed_at: datetime, signature: bytes, public_key: Any
) -> bool:
    """Keep a signed checkpoint; False if one for this position exists (another replica signed it)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    row = await conn.fetchval(
        "INSERT INTO checkpoints VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
        seq,
        chain_hash,
        signed_at,
        signature,
        raw,
    )
    return row is not None


async def archive_rows(conn: asyncpg.Connection, batch: int = 5000) -> AsyncIterator[asyncpg.Record]:
    """Every archived row (seq, subject, raw, hash) in sequence order, read in batches."""
    after = 0
    while rows := await conn.fetch(
        "SELECT stream_seq, subject, raw, hash FROM archive WHERE stream_seq > $1 ORDER BY stream_seq LIMIT $2",
        after,
        batch,
    ):
        for row in rows:
            yield row
        after = rows[-1]["stream_seq"]


async def new_finding(conn: asyncpg.Connection, check: str, seq: int, detail: str, at: datetime) -> bool:
    """Remember a finding; False if it was raised before."""
    row = await conn.fetchval(
        "INSERT INTO findings VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1", check, seq, detail, at
    )
    return row is not None
