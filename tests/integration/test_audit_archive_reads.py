"""Reading the archive in order (`audit verify`, `audit check`): batches come off the primary key
in order even on an archive PostgreSQL has never analyzed (a new one, or one just rebuilt), instead
of the whole table being read and sorted for every batch."""

from __future__ import annotations

import asyncpg

from services.audit import store

ROWS = 20_000


async def test_a_batch_of_a_never_analyzed_archive_is_read_in_order_off_its_primary_key(
    audit_archive: asyncpg.Pool,
) -> None:
    async with audit_archive.acquire() as conn:
        await conn.execute("ALTER TABLE archive SET (autovacuum_enabled = false)")  # never analyzed
        await conn.execute(
            "INSERT INTO archive (stream_seq, subject, raw, event_type) SELECT g, 'pki.cert.c' || g || '.issued', "
            "decode(repeat(md5(g::text), 40), 'hex'), 'CertificateIssued' FROM generate_series(1, $1) g",
            ROWS,
        )
        for after in (0, ROWS // 2):
            # As PostgreSQL plans it for these values (a custom plan: the one that went wrong).
            query = store.ROWS_AFTER.replace("$1", str(after)).replace("$2", "5000")
            plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {query}"))
            assert "Index Scan using archive_pkey" in plan and "Sort" not in plan, plan
        rows = await store.rows_after(conn, ROWS - 3, through=ROWS - 1, limit=5000)
        assert [r.seq for r in rows] == [ROWS - 2, ROWS - 1]  # what lies beyond `through` is left out
