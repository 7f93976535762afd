"""The renewal schedule's look for due events (after every batch of issued certificates, and on its
timer) reads what is due through each kind's partial index, whether PostgreSQL has analyzed the
certificates or not, instead of walking the whole table."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from services.enrollment import store

ROWS = 20_000


async def _certificates(conn: asyncpg.Connection, due_every: int) -> None:
    """ROWS live certificates, renewal due for every `due_every`-th, expired for the one after it,
    one superseded and one whose CA was compromised."""
    await conn.execute("ALTER TABLE certificates SET (autovacuum_enabled = false)")  # never analyzed
    await conn.execute(
        "INSERT INTO certificates (cert_id, serial, issuer_id, profile, not_before, not_after, spki_sha256, "
        "fingerprint_sha256, renew_at, issued_seq) SELECT 'c' || g, g::text, 'ca', 'tls-server', "
        "now() - interval '1 day', "
        "CASE WHEN g % $2 = 1 THEN now() - interval '1 s' ELSE now() + interval '90 days' END, "
        "md5(g::text), md5(g::text), "
        "CASE WHEN g % $2 = 0 THEN now() - interval '1 h' ELSE now() + interval '60 days' END, g "
        "FROM generate_series(1, $1) g",
        ROWS,
        due_every,
    )
    await conn.execute("UPDATE certificates SET superseded_by = 'n', superseded_by_id = 'n' WHERE cert_id = 'c7'")
    await conn.execute("UPDATE certificates SET compromise_due = 'ca_compromise' WHERE cert_id = 'c8'")


async def test_due_events_are_found_through_the_partial_indexes_of_a_never_analyzed_table(
    enrollment_schema: asyncpg.Pool,
) -> None:
    async with enrollment_schema.acquire() as conn:
        await _certificates(conn, due_every=1000)
        async with conn.transaction():
            plan = "\n".join(
                row[0]
                for row in await conn.fetch(
                    "EXPLAIN (ANALYZE, FORMAT TEXT) "
                    + store.DUE.replace("$1", f"'{datetime.now(UTC).isoformat()}'::timestamptz").replace("$2", "256")
                )
            )
        for index in (
            "certificates_renewal_due",
            "certificates_expiry_due",
            "certificates_superseded_unsent",
            "certificates_compromise_unsent",
        ):
            assert f"Index Scan using {index}" in plan or f"Bitmap Index Scan on {index}" in plan, plan
        assert "Seq Scan on certificates" not in plan and "Rows Removed by Filter" not in plan, plan

        async with conn.transaction():
            rows = await store.due(conn, datetime.now(UTC), 256)
        by_id = {r.cert_id: r for r in rows}
        renewal = {f"c{g}" for g in range(1000, ROWS + 1, 1000)}
        expired = {f"c{g}" for g in range(1, ROWS + 1, 1000)}
        assert set(by_id) == renewal | expired | {"c7", "c8"}
        assert {i for i, r in by_id.items() if r.renewal_due} == renewal
        assert {i for i, r in by_id.items() if r.expired} == expired
        assert by_id["c7"].superseded and by_id["c8"].compromise_due == "ca_compromise"


async def test_due_takes_at_most_its_limit_and_other_transactions_skip_what_it_locked(
    enrollment_schema: asyncpg.Pool,
) -> None:
    async with enrollment_schema.acquire() as conn:
        await _certificates(conn, due_every=50)  # 400 renewals and 400 expiries due
    now = datetime.now(UTC)
    async with enrollment_schema.acquire() as a, enrollment_schema.acquire() as b:
        async with a.transaction():
            first = await store.due(a, now, 256)
            assert len(first) == 256
            assert [r.cert_id for r in first] == sorted(r.cert_id for r in first)
            async with b.transaction():
                second = await store.due(b, now, 1000)
        assert not {r.cert_id for r in first} & {r.cert_id for r in second}
        assert second  # another replica goes on with what the first did not lock
        async with a.transaction():
            everything = await store.due(a, now, 1000)
        assert len(everything) == 802  # with the superseded one and the one whose CA was compromised
