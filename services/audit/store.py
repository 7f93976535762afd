"""Audit's SQL (schema `audit`, or a fresh schema during replay)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
from cryptography.hazmat.primitives import serialization

from services.audit import domain


@dataclass(frozen=True)
class Archived:
    """What one `archive` call added: how many messages were new, and the problem of each new one
    that is not a valid event on its subject (by stream sequence, in order)."""

    count: int
    problems: list[tuple[int, domain.Problem]] = field(default_factory=list)


class ArchivedRow(NamedTuple):
    """One archived message as the chain covers it: position, exact subject, bytes, stored hash."""

    seq: int
    subject: str
    raw: bytes
    hash: bytes | None


async def archive(conn: asyncpg.Connection, messages: Sequence[tuple[int, str, bytes]], root: str) -> Archived:
    """Archive raw messages (seq, subject, bytes) verbatim and extend the hash chain; returns what was new.

    Whatever a message holds, its row is written: what is indexed of it is bounded (`domain.describe`).
    In the usual case the batch continues the chain exactly (it starts at head + 1, without gaps),
    so the hashes are computed here and written with the rows. Otherwise (a redelivery arriving
    out of order) the rows wait unhashed and the chain is extended over what is contiguous.
    """
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
    assert head is not None
    ordered = sorted({seq: (seq, subject, raw) for seq, subject, raw in messages}.values())
    ordered = [m for m in ordered if m[0] > head["seq"]]  # already archived and chained
    contiguous = [m[0] for m in ordered] == list(range(head["seq"] + 1, head["seq"] + 1 + len(ordered)))
    batch = rows_of(ordered, root, bytes(head["hash"]) if contiguous else None)
    rows, refs, current = batch.rows, batch.refs, batch.head
    if not rows:
        return Archived(0)
    inserted = await conn.fetch(
        f"INSERT INTO archive ({', '.join(ARCHIVE_COLUMNS)}) SELECT * FROM unnest($1::bigint[], $2::text[], "
        "$3::bytea[], $4::uuid[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::bytea[], $10::bytea[]) "
        "ON CONFLICT DO NOTHING RETURNING stream_seq",
        *[list(col) for col in zip(*rows, strict=True)],
    )
    new = sorted(r["stream_seq"] for r in inserted)
    if refs:
        await conn.execute(
            "INSERT INTO serial_refs SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) ON CONFLICT DO NOTHING",
            *[list(col) for col in zip(*refs, strict=True)],
        )
    if contiguous and len(inserted) == len(rows):
        await conn.execute(
            "UPDATE chain_head SET seq = $1, hash = $2, events = events + $3 WHERE id = 1",
            ordered[-1][0],
            current,
            len(rows),
        )
        if await conn.fetchval("SELECT 1 FROM archive WHERE stream_seq = $1", ordered[-1][0] + 1):
            await advance_chain(conn)  # this batch filled a gap before rows that arrived early
    else:
        if contiguous:  # some rows existed unhashed already: recompute from the head
            await conn.execute("UPDATE archive SET hash = NULL WHERE stream_seq > $1", head["seq"])
        await advance_chain(conn)
    problems = batch.problems
    return Archived(len(new), [(seq, problems[seq]) for seq in new if seq in problems])


# The archive's columns in the order `rows_of` fills them.
ARCHIVE_COLUMNS = (
    "stream_seq",
    "subject",
    "raw",
    "event_id",
    "event_type",
    "aggregate_id",
    "producer",
    "occurred_at",
    "hash",
    "subject_exact",
)
SERIAL_REF_COLUMNS = ("serial", "stream_seq", "cert_id")


@dataclass
class Rows:
    """Archive rows (in `ARCHIVE_COLUMNS` order) and serial references for messages in sequence order,
    the chain's hash after the last one (None if not chained), and each invalid message's problem."""

    rows: list[tuple[Any, ...]]
    refs: list[tuple[str, int, str | None]]
    head: bytes | None
    problems: dict[int, domain.Problem]


def rows_of(
    messages: Sequence[tuple[int, str, bytes]], root: str, chained_from: bytes | None, *, validate: bool = True
) -> Rows:
    """The rows of `messages`, which are in sequence order: hash-chained from `chained_from` if given
    (they continue the chain without a gap), unhashed otherwise. Without `validate`, problems hold
    only the messages that do not bind (what is indexed is the same; see `domain.describe`)."""
    current = chained_from
    rows: list[tuple[Any, ...]] = []
    refs: list[tuple[str, int, str | None]] = []
    problems: dict[int, domain.Problem] = {}
    for seq, subject, raw in messages:
        d = domain.describe(subject, raw, root=root, validate=validate)
        if current is not None:
            current = domain.link(current, seq, subject, raw)
        rows.append(
            (
                seq,
                d.subject,
                raw,
                d.event_id,
                d.event_type,
                d.aggregate_id,
                d.producer,
                d.occurred_at,
                current,
                d.subject_exact,
            )
        )
        if d.serial:
            refs.append((d.serial, seq, d.cert_id))
        # Never with a cert id: `history` takes a serial's certificate id from its own events only.
        refs.extend((related, seq, None) for related in d.related_serials)
        if d.problem is not None:
            problems[seq] = d.problem
    return Rows(rows, refs, current, problems)


def digest_rows(messages: Sequence[tuple[int, str, bytes]], chained_from: bytes) -> Rows:
    """The rows of `messages` (in sequence order, continuing the chain from `chained_from`) with only
    what a confirming replay compares: position, subject, hash, and in the `raw` column the bytes'
    SHA-256 (compared with the live archive's `sha256(raw)`); nothing indexed (`event_type` empty).
    Never rows to adopt into the live archive."""
    current = chained_from
    rows: list[tuple[Any, ...]] = []
    link, stored_subject, sha256 = domain.link, domain.stored_subject, hashlib.sha256
    for seq, subject, raw in messages:
        current = link(current, seq, subject, raw)
        shown, exact = stored_subject(subject)
        rows.append((seq, shown, sha256(raw).digest(), None, "", None, None, None, current, exact))
    return Rows(rows, [], current, {})


async def copy_rows(conn: asyncpg.Connection, schema: str, rows: Rows) -> None:
    """Write rows into an archive being rebuilt, which holds none of them (COPY: no conflict to skip)."""
    await conn.copy_records_to_table("archive", schema_name=schema, records=rows.rows, columns=ARCHIVE_COLUMNS)
    if rows.refs:
        await conn.copy_records_to_table(
            "serial_refs", schema_name=schema, records=rows.refs, columns=SERIAL_REF_COLUMNS
        )


async def advance_chain(conn: asyncpg.Connection) -> None:
    """Extend the hash chain over every newly contiguous archived event."""
    head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
    assert head is not None
    seq, current = head["seq"], bytes(head["hash"])
    chained = 0
    while True:
        rows = await conn.fetch(
            "SELECT stream_seq, subject, subject_exact, raw FROM archive WHERE stream_seq > $1 "
            "ORDER BY stream_seq LIMIT 5000",
            seq,
        )
        updates = []
        for row in rows:
            if row["stream_seq"] != seq + 1:
                break
            seq = row["stream_seq"]
            current = domain.link(current, seq, _subject(row), bytes(row["raw"]))
            updates.append((seq, current))
        if updates:
            await conn.executemany("UPDATE archive SET hash = $2 WHERE stream_seq = $1", updates)
            chained += len(updates)
        if len(updates) < 5000:
            break
    await conn.execute(
        "UPDATE chain_head SET seq = $1, hash = $2, events = events + $3 WHERE id = 1", seq, current, chained
    )


def _subject(row: asyncpg.Record) -> str:
    exact = row["subject_exact"]
    return domain.exact_subject(row["subject"], bytes(exact) if exact is not None else None)


async def head(conn: asyncpg.Connection) -> tuple[int, bytes, int]:
    """The chained head (seq, hash) and how many events the chain covers (kept as it advances:
    counting the archive here cost the scheduled check and every page of revocations a read of
    the whole archive)."""
    row = await conn.fetchrow("SELECT seq, hash, events FROM chain_head WHERE id = 1")
    assert row is not None
    return row["seq"], bytes(row["hash"]), row["events"]


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


async def issued_events(conn: asyncpg.Connection, request_id: str, limit: int = 10) -> list[bytes]:
    """The first archived `CertificateIssued` messages of a request, in log order (redeliveries carry
    the same event; only messages on their own subject are indexed as one)."""
    rows = await conn.fetch(
        "SELECT raw FROM archive WHERE aggregate_id = $1 AND event_type = 'CertificateIssued' "
        "ORDER BY stream_seq LIMIT $2",
        request_id,
        limit,
    )
    return [bytes(r["raw"]) for r in rows]


async def revocations(
    conn: asyncpg.Connection, after: int, since: datetime | None, limit: int
) -> list[tuple[int, bytes]]:
    """Archived `CertificateRevoked` messages after stream sequence `after` (revoked at or after
    `since`), in log order; only messages on their own subject are indexed as one."""
    rows = await conn.fetch(
        "SELECT stream_seq, raw FROM archive WHERE event_type = 'CertificateRevoked' AND stream_seq > $1 "
        "AND ($2::timestamptz IS NULL OR occurred_at >= $2) ORDER BY stream_seq LIMIT $3",
        after,
        since,
        limit,
    )
    return [(r["stream_seq"], bytes(r["raw"])) for r in rows]


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
        "SELECT h.seq, h.hash, h.events, (SELECT coalesce(max(stream_seq), 0) FROM checkpoints) AS last "
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
    return row["seq"], bytes(row["hash"]), row["events"]


async def save_checkpoint(
    conn: asyncpg.Connection, seq: int, *, chain_hash: bytes, signed_at: datetime, signature: bytes, public_key: Any
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


async def archive_rows(
    conn: asyncpg.Connection, batch: int = 5000, through: int | None = None
) -> AsyncIterator[ArchivedRow]:
    """Every archived message (seq, exact subject, raw, hash) in sequence order, read in batches;
    with `through`, only up to that sequence (the chained head: what lies beyond it waits for a
    gap to be filled, so it is not yet the log in order)."""
    after = 0
    while records := await _records_after(conn, after, through, batch):
        for record in records:
            yield _row(record)
        after = records[-1]["stream_seq"]


async def rows_after(conn: asyncpg.Connection, after: int, *, through: int | None, limit: int) -> list[ArchivedRow]:
    """At most `limit` archived messages after sequence `after` (and up to `through`), in sequence order."""
    return [_row(record) for record in await _records_after(conn, after, through, limit)]


# The archived messages after $1, at most $2, in order. `through` is applied after it, not in it:
# this reads the primary key in order whatever the planner knows of the table, while with an upper
# bound too, an archive never analyzed yet (new, or just rebuilt) was read whole and sorted on disk
# for every batch (about 150 ms a batch of 5,000 at 100,000 events, and growing with the archive).
ROWS_AFTER = (
    "SELECT stream_seq, subject, subject_exact, raw, hash FROM archive WHERE stream_seq > $1 "
    "ORDER BY stream_seq LIMIT $2"
)


async def _records_after(conn: asyncpg.Connection, after: int, through: int | None, limit: int) -> list[asyncpg.Record]:
    records: list[asyncpg.Record] = await conn.fetch(ROWS_AFTER, after, limit)
    if through is not None and records and records[-1]["stream_seq"] > through:
        records = [record for record in records if record["stream_seq"] <= through]
    return records


async def rows_at(conn: asyncpg.Connection, seqs: Sequence[int], *, through: int) -> list[ArchivedRow]:
    """The archived messages at positions `seqs` (those up to `through`), in sequence order."""
    records = await conn.fetch(
        "SELECT stream_seq, subject, subject_exact, raw, hash FROM archive WHERE stream_seq = ANY($1::bigint[]) "
        "AND stream_seq <= $2 ORDER BY stream_seq",
        list(seqs),
        through,
    )
    return [_row(record) for record in records]


def _row(record: asyncpg.Record) -> ArchivedRow:
    stored = record["hash"]
    return ArchivedRow(
        record["stream_seq"], _subject(record), bytes(record["raw"]), bytes(stored) if stored is not None else None
    )


async def hash_at(conn: asyncpg.Connection, seq: int) -> bytes | None:
    """The chain's hash at `seq` (the genesis hash at 0), which stands for everything up to it; None if
    that message is not archived or not chained."""
    if seq == 0:
        return domain.GENESIS
    stored = await conn.fetchval("SELECT hash FROM archive WHERE stream_seq = $1", seq)
    return bytes(stored) if stored is not None else None


async def new_findings(
    conn: asyncpg.Connection, found: Sequence[tuple[str, int, str]], at: datetime
) -> set[tuple[str, int]]:
    """Remember findings (check, stream seq, detail); returns the (check, seq) of those not raised before."""
    if not found:
        return set()
    checks, seqs, details = (list(col) for col in zip(*found, strict=True))
    rows = await conn.fetch(
        "INSERT INTO findings SELECT c, s, d, $4 FROM unnest($1::text[], $2::bigint[], $3::text[]) AS t(c, s, d) "
        "ON CONFLICT DO NOTHING RETURNING check_name, stream_seq",
        checks,
        seqs,
        details,
        at,
    )
    return {(r["check_name"], r["stream_seq"]) for r in rows}
