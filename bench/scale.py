"""Issuance with a large history: each service's per-certificate tables seeded as if `n` certificates
had been issued before, then a round of issuance measured as the others.

What issuance reads and writes per certificate lives in these tables (enrollment's requests,
admission claims, token uses, certificates and certified keys; signing's issuances; validation's
and revocation's certificates). A statement that reads a whole table, or an index range that grows
with it, costs nothing at a thousand certificates and everything at a million: this round shows
it, as the rate and as the rows PostgreSQL read by sequential scans per certificate issued.

After seeding, the tables are analyzed, as autovacuum does after a bulk load (and as a restore's
instructions say to): PostgreSQL re-plans the services' prepared statements then. Without that a
service keeps the plans it chose while its tables were small (a sequential scan and a hash join
suit a table of a few thousand rows), and they read the whole table on every batch however large
it grows: with 50,000 certificates of history and no ANALYZE, 5,100 rows of signing's issuances,
4,000 of enrollment's admission claims and 1,400 of its requests were read per certificate, and
issuance ran at 0.65 of its rate without history. (This machine's PostgreSQL runs without
autovacuum; a service warns at start when it finds it off.)

Not seeded: the tracking tables (one row per consumer and event; reached by primary key only),
audit's archive (hash-chained: a seeded archive would be a broken chain) and the log itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import asyncpg

# One statement per table, with the values it takes (`seed` names them): n, the number of
# certificates; the requester; the provisioner; the issuing CA; when they were requested (two days
# ago: outside every hourly window); their notAfter. Keys and serials are distinct per row and are
# never those of a new certificate.
_SEED: dict[str, tuple[str, tuple[str, ...]]] = {
    "enrollment.requests": (
        "INSERT INTO enrollment.requests (request_id, requester, profile, status, requested_at, decided_at, "
        "dns_names, validity_days, provisioner_id, token_id, decided_by, serial, issuer_id, not_after, accepted_at) "
        "SELECT 'seed-' || g, $2, 'tls-server', 'issued', $5, $5, ARRAY['seed' || g || '.bench.internal'], 30, $3, "
        "'seed-token-' || g, 'enrollment', md5(g::text), $4, $6, $5 FROM generate_series(1, $1) g",
        ("n", "requester", "provisioner", "issuer", "requested", "not_after"),
    ),
    "enrollment.admission_claims": (
        "INSERT INTO enrollment.admission_claims (aggregate, aggregate_id, identity, outcome, claimed_at) "
        "SELECT 'cert', 'seed-' || g, $2, 'admitted', $3 FROM generate_series(1, $1) g",
        ("n", "requester", "requested"),
    ),
    "enrollment.token_uses": (
        "INSERT INTO enrollment.token_uses (token_id, provisioner_id, request_id, used_at) "
        "SELECT 'seed-token-' || g, $2, 'seed-' || g, $3 FROM generate_series(1, $1) g",
        ("n", "provisioner", "requested"),
    ),
    "enrollment.certificates": (
        "INSERT INTO enrollment.certificates (cert_id, serial, issuer_id, profile, not_before, not_after, "
        "spki_sha256, fingerprint_sha256, spki_der, dns_names, provisioner_id, renew_at, issued_seq) "
        "SELECT 'seed-' || g, md5(g::text), $2, 'tls-server', $4, $5, md5('k' || g) || md5('l' || g), "
        "md5('f' || g) || md5('g' || g), decode(md5('k' || g) || md5('l' || g), 'hex'), "
        "ARRAY['seed' || g || '.bench.internal'], $3, $5::timestamptz - interval '10 days', g "
        "FROM generate_series(1, $1) g",
        ("n", "issuer", "provisioner", "requested", "not_after"),
    ),
    "enrollment.certified_keys": (
        "INSERT INTO enrollment.certified_keys (spki_sha256, cert_id, serial) "
        "SELECT md5('k' || g) || md5('l' || g), 'seed-' || g, md5(g::text) FROM generate_series(1, $1) g",
        ("n",),
    ),
    "signing.issuances": (
        "INSERT INTO signing.issuances (request_id, issuer_id, serial, not_before, not_after, spki_sha256, "
        "issued_event_id, approval_event_id, intended_at, cert_der, tbs_sha256, signed_at) "
        "SELECT 'seed-' || g, $2, g::numeric, $3, $4, md5('k' || g) || md5('l' || g), gen_random_uuid(), "
        "gen_random_uuid(), $3, decode(repeat(md5(g::text), 22), 'hex'), md5('t' || g), $3 "
        "FROM generate_series(1, $1) g",
        ("n", "issuer", "requested", "not_after"),
    ),
    "validation.certificates": (
        "INSERT INTO validation.certificates (serial, cert_id, issuer_id, status, not_before, not_after, "
        "dns_names, fingerprint, cert_der) SELECT md5(g::text), 'seed-' || g, $2, 'good', $3, $4, "
        "ARRAY['seed' || g || '.bench.internal'], md5('f' || g) || md5('g' || g), "
        "decode(repeat(md5(g::text), 22), 'hex') FROM generate_series(1, $1) g",
        ("n", "issuer", "requested", "not_after"),
    ),
    "revocation.certificates": (
        "INSERT INTO revocation.certificates (serial, cert_id, issuer_id, not_after, status, spki_sha256, "
        "spki_der, fingerprint_sha256, requester) SELECT md5(g::text), 'seed-' || g, $2, $3, 'good', "
        "md5('k' || g) || md5('l' || g), decode(md5('k' || g) || md5('l' || g), 'hex'), "
        "md5('f' || g) || md5('g' || g), $4 FROM generate_series(1, $1) g",
        ("n", "issuer", "not_after", "requester"),
    ),
}


async def seed(pool: asyncpg.Pool, n: int, *, requester: str, provisioner: str) -> float:
    """Seed every table above with `n` issued certificates of the running issuing CA, then analyze
    them; returns seconds."""
    started = time.perf_counter()
    issuer = await pool.fetchval(
        "SELECT ca_id FROM signing.cas WHERE role = 'issuing' AND status = 'active' ORDER BY created_at DESC LIMIT 1"
    )
    if issuer is None:
        raise RuntimeError("no active issuing CA to seed certificates of")
    requested = datetime.now(UTC) - timedelta(days=2)
    not_after = requested + timedelta(days=30)
    values = {
        "n": n,
        "requester": requester,
        "provisioner": provisioner,
        "issuer": issuer,
        "requested": requested,
        "not_after": not_after,
    }
    for sql, names in _SEED.values():
        await pool.execute(sql, *(values[name] for name in names), timeout=1800)
    for table in _SEED:
        await pool.execute(f"ANALYZE {table}", timeout=600)
    return time.perf_counter() - started


async def seq_reads(pool: asyncpg.Pool) -> dict[str, int]:
    """Rows read by sequential scans so far, per table of the services' schemas (PostgreSQL's
    statistics, which a backend reports when its transaction ends, within a second or so)."""
    rows = await pool.fetch(
        "SELECT schemaname || '.' || relname AS t, seq_tup_read FROM pg_stat_user_tables "
        "WHERE schemaname IN ('enrollment', 'signing', 'validation', 'revocation', 'audit')"
    )
    return {r["t"]: r["seq_tup_read"] for r in rows}


def seq_reads_per_certificate(before: dict[str, int], after: dict[str, int], certificates: int) -> dict[str, float]:
    """The tables sequential scans read rows of during a round, per certificate issued, largest first."""
    read = {t: round((after.get(t, 0) - before.get(t, 0)) / certificates, 1) for t in after}
    return {t: n for t, n in sorted(read.items(), key=lambda kv: -kv[1]) if n > 0}
