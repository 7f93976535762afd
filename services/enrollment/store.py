"""Enrollment's SQL (schema `enrollment`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.enrollment.domain import Names, Scope
from services.enrollment.renewal import Certified
from shared.contract.reasons import Reason


@dataclass(frozen=True)
class Context:
    """What deciding one request needs from the tables, read in one round trip."""

    provisioner_key_pem: str | None
    provisioner_status: str | None
    profile_body: dict[str, Any] | None
    profile_digest: str | None
    profile_lint_failed: bool
    key_blocked: bool
    scope: Scope = field(default_factory=Scope)
    issued_last_hour: int = 0


@dataclass
class RequestRecord:
    """One enrollment request and its outcome, as `requests show` reports it."""

    request_id: str
    requester: str
    profile: str
    status: str
    requested_at: datetime
    decided_at: datetime
    reasons: list[Reason] = field(default_factory=list)
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    csr_pem: str | None = None
    validity_days: int | None = None
    provisioner_id: str | None = None
    token_id: str | None = None
    profile_digest: str | None = None
    expires_at: datetime | None = None
    decided_by: str | None = None
    renews_serial: str | None = None  # a renewal: the serial of the certificate it renews
    accepted_at: datetime | None = None  # when the ingress stream took it


# --- provisioners -------------------------------------------------------------------------------


async def save_provisioner(
    conn: asyncpg.Connection,
    provisioner_id: str,
    name: str,
    public_key_pem: str,
    registered_at: datetime,
    registered_by: str,
    seq: int,
) -> None:
    """Insert or re-key a provisioner (registering again enables it, unless it was removed);
    ignored if a later event of this provisioner was applied already."""
    await conn.execute(
        "INSERT INTO provisioners (provisioner_id, name, public_key_pem, registered_at, registered_by, last_seq) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (provisioner_id) DO UPDATE "
        "SET name = $2, public_key_pem = $3, registered_at = $4, registered_by = $5, last_seq = $6, "
        "status = CASE WHEN provisioners.status = 'removed' THEN 'removed' ELSE 'active' END "
        "WHERE provisioners.last_seq < $6",
        provisioner_id,
        name,
        public_key_pem,
        registered_at,
        registered_by,
        seq,
    )


async def set_provisioner_status(
    conn: asyncpg.Connection, provisioner_id: str, status: str, reason: str, by: str, at: datetime, seq: int
) -> bool:
    """Disable or remove a provisioner; False if it is unknown, removed, or a later event was applied.

    A disable that arrives before the registration it follows (replicas, redelivery) leaves a
    disabled placeholder, so the late registration cannot enable it."""
    row = await conn.fetchval(
        "INSERT INTO provisioners (provisioner_id, name, public_key_pem, registered_at, registered_by, status, "
        "status_reason, status_by, status_at, last_seq) VALUES ($1, $1, '', $5, $4, $2, $3, $4, $5, $6) "
        "ON CONFLICT (provisioner_id) DO UPDATE SET status = $2, status_reason = $3, status_by = $4, "
        "status_at = $5, last_seq = $6 WHERE provisioners.status <> 'removed' AND provisioners.last_seq < $6 "
        "RETURNING 1",
        provisioner_id,
        status,
        reason,
        by,
        at,
        seq,
    )
    return row is not None


async def provisioners(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every provisioner (public keys only) with its status."""
    rows = await conn.fetch(
        "SELECT provisioner_id, name, public_key_pem, registered_at, registered_by, status, status_reason, "
        "status_by, status_at FROM provisioners ORDER BY provisioner_id"
    )
    return [dict(r) for r in rows]


# --- profiles and blocked keys ------------------------------------------------------------------


async def save_profile(
    conn: asyncpg.Connection, name: str, digest: str, body: dict[str, Any], at: datetime, by: str, seq: int
) -> None:
    """Make this version the current one of profile `name` (a new version clears lint findings),
    unless a later version was applied already."""
    await conn.execute(
        "INSERT INTO profiles (name, digest, body, applied_at, applied_by, applied_seq) "
        "VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (name) DO UPDATE SET digest = $2, body = $3, applied_at = $4, applied_by = $5, applied_seq = $6, "
        "lint_failed = CASE WHEN profiles.digest = $2 THEN profiles.lint_failed ELSE false END, "
        "lint_findings = CASE WHEN profiles.digest = $2 THEN profiles.lint_findings ELSE '[]'::jsonb END "
        "WHERE profiles.applied_seq < $6",
        name,
        digest,
        body,
        at,
        by,
        seq,
    )


async def record_lint(conn: asyncpg.Connection, digest: str, usable: bool, findings: list[dict[str, Any]]) -> None:
    """Remember signing's lint verdict on a profile version (ignored for versions no longer current)."""
    await conn.execute(
        "UPDATE profiles SET lint_failed = $2, lint_findings = $3 WHERE digest = $1", digest, not usable, findings
    )


async def profiles(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every current profile."""
    rows = await conn.fetch(
        "SELECT name, digest, body, applied_at, applied_by, lint_failed, lint_findings FROM profiles ORDER BY name"
    )
    return [dict(r) for r in rows]


async def profile_counts(conn: asyncpg.Connection) -> tuple[int, int]:
    """How many profiles are applied, and how many of them did not fail lint."""
    row = await conn.fetchrow(
        "SELECT count(*) AS applied, count(*) FILTER (WHERE NOT lint_failed) AS usable FROM profiles"
    )
    assert row is not None
    return int(row["applied"]), int(row["usable"])


async def block_key(conn: asyncpg.Connection, spki_sha256: str, reason: str, by: str, at: datetime) -> None:
    """Add a public key to the blocklist."""
    await conn.execute(
        "INSERT INTO blocked_keys VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING", spki_sha256, reason, by, at
    )


async def blocked(conn: asyncpg.Connection, spki_sha256: str) -> bool:
    """Whether a public key is blocked."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = $1)", spki_sha256))


# --- deciding requests --------------------------------------------------------------------------


async def context(
    conn: asyncpg.Connection, provisioner_id: str, profile: str, spki: str | None, at: datetime
) -> Context:
    """The provisioner (with its scope and how many requests it enrolled in the hour before `at`,
    counted up to its hourly limit), the profile and whether the key is blocked, in one round trip."""
    return (await contexts(conn, [(provisioner_id, profile, spki, at)]))[0]


async def contexts(conn: asyncpg.Connection, wanted: Sequence[tuple[str, str, str | None, datetime]]) -> list[Context]:
    """`context` for several requests (provisioner id, profile, key, time), in their order, in one
    round trip."""
    if not wanted:
        return []
    provisioners, profiles, spkis, ats = (list(col) for col in zip(*wanted, strict=True))
    rows = await conn.fetch(
        "SELECT p.public_key_pem, p.status, p.scope_profiles, p.scope_name_suffixes, p.scope_requesters, "
        "p.max_per_hour, f.body, f.digest, coalesce(f.lint_failed, false) AS lint_failed, "
        "EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = t.spki) AS blocked, "
        # Counted up to the limit only: what decides is whether the limit is reached, and a count
        # of everything in the hour would read every request of a busy provisioner, for each request.
        "CASE WHEN p.max_per_hour IS NULL THEN 0 ELSE (SELECT count(*) FROM (SELECT 1 FROM requests r "
        "WHERE r.provisioner_id = t.prov AND r.status IN ('approved', 'pending', 'issued') "
        "AND r.accepted_at > t.at - interval '1 hour' AND r.accepted_at <= t.at LIMIT p.max_per_hour) AS hour) "
        "END AS last_hour "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) "
        "WITH ORDINALITY AS t(prov, profile, spki, at, i) "
        "LEFT JOIN provisioners p ON p.provisioner_id = t.prov "
        "LEFT JOIN profiles f ON f.name = t.profile "
        "ORDER BY t.i",
        provisioners,
        profiles,
        spkis,
        ats,
    )
    return [_context(row) for row in rows]


def _context(row: asyncpg.Record) -> Context:
    def tupled(values: list[str] | None) -> tuple[str, ...] | None:
        return tuple(values) if values is not None else None

    return Context(
        provisioner_key_pem=row["public_key_pem"],
        provisioner_status=row["status"],
        profile_body=row["body"],
        profile_digest=row["digest"],
        profile_lint_failed=row["lint_failed"],
        key_blocked=row["blocked"],
        scope=Scope(
            tupled(row["scope_profiles"]),
            tupled(row["scope_name_suffixes"]),
            tupled(row["scope_requesters"]),
            row["max_per_hour"],
        ),
        issued_last_hour=row["last_hour"],
    )


async def save_scope(conn: asyncpg.Connection, provisioner_id: str, scope: Scope) -> None:
    """A provisioner's scope, as its latest registration gave it."""
    await conn.execute(
        "UPDATE provisioners SET scope_profiles = $2, scope_name_suffixes = $3, scope_requesters = $4, "
        "max_per_hour = $5 WHERE provisioner_id = $1",
        provisioner_id,
        list(scope.profiles) if scope.profiles is not None else None,
        list(scope.name_suffixes) if scope.name_suffixes is not None else None,
        list(scope.requesters) if scope.requesters is not None else None,
        scope.max_per_hour,
    )


async def current_profile(conn: asyncpg.Connection, name: str) -> tuple[dict[str, Any], str, bool] | None:
    """The current version of a profile: (body, digest, lint failed)."""
    row = await conn.fetchrow("SELECT body, digest, lint_failed FROM profiles WHERE name = $1", name)
    return None if row is None else (row["body"], row["digest"], row["lint_failed"])


async def current_profiles(
    conn: asyncpg.Connection, names: Sequence[str]
) -> dict[str, tuple[dict[str, Any], str, bool]]:
    """`current_profile` of several names in one round trip (the names not applied are absent)."""
    rows = await conn.fetch("SELECT name, body, digest, lint_failed FROM profiles WHERE name = ANY($1::text[])", names)
    return {r["name"]: (r["body"], r["digest"], r["lint_failed"]) for r in rows}


async def spend_token(
    conn: asyncpg.Connection, token_id: str, provisioner_id: str, request_id: str, at: datetime
) -> bool:
    """Mark a token used by `request_id`; False if it had been used already."""
    return bool(await spend_tokens(conn, [(token_id, provisioner_id, request_id, at)]))


async def spend_tokens(conn: asyncpg.Connection, uses: Sequence[tuple[str, str, str, datetime]]) -> set[str]:
    """Mark tokens used (token id, provisioner, request id, time; each token once) in one statement;
    returns the requests whose token had not been used before."""
    if not uses:
        return set()
    tokens, provisioners, requests, ats = (list(col) for col in zip(*uses, strict=True))
    rows = await conn.fetch(
        "INSERT INTO token_uses SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) "
        "ON CONFLICT DO NOTHING RETURNING request_id",
        tokens,
        provisioners,
        requests,
        ats,
    )
    return {r["request_id"] for r in rows}


_COLUMNS = (
    "request_id, requester, profile, status, requested_at, decided_at, reasons, dns_names, ip_addresses, emails, "
    "csr_pem, validity_days, provisioner_id, token_id, profile_digest, expires_at, decided_by"
)
_RECORD_COLUMNS = f"{_COLUMNS}, renews_serial, accepted_at"


async def record_request(conn: asyncpg.Connection, r: RequestRecord) -> None:
    """Keep a request and its first outcome (a redelivered request changes nothing)."""
    await record_requests(conn, [r])


async def record_requests(conn: asyncpg.Connection, records: Sequence[RequestRecord]) -> None:
    """`record_request` for several, in order, in one pipelined statement."""
    await conn.executemany(
        f"INSERT INTO requests ({_RECORD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
        "$14, $15, $16, $17, $18, $19) ON CONFLICT (request_id) DO NOTHING",
        [
            (
                r.request_id,
                r.requester,
                r.profile,
                r.status,
                r.requested_at,
                r.decided_at,
                [x.model_dump() for x in r.reasons],
                r.dns_names,
                r.ip_addresses,
                r.emails,
                r.csr_pem,
                r.validity_days,
                r.provisioner_id,
                r.token_id,
                r.profile_digest,
                r.expires_at,
                r.decided_by,
                r.renews_serial,
                r.accepted_at,
            )
            for r in records
        ],
    )


def _record(row: asyncpg.Record) -> RequestRecord:
    data = {k: row[k] for k in _RECORD_COLUMNS.split(", ")}
    data["reasons"] = [Reason(**x) for x in data["reasons"]]
    return RequestRecord(**data)


async def request(conn: asyncpg.Connection, request_id: str, lock: bool = False) -> RequestRecord | None:
    """One request (locked for this transaction when `lock`)."""
    row = await conn.fetchrow(
        f"SELECT {_RECORD_COLUMNS} FROM requests WHERE request_id = $1" + (" FOR UPDATE" if lock else ""), request_id
    )
    return None if row is None else _record(row)


async def request_detail(conn: asyncpg.Connection, request_id: str) -> dict[str, Any] | None:
    """One request with what became of it (serial, issuer, expiry of the certificate)."""
    row = await conn.fetchrow(
        f"SELECT {_RECORD_COLUMNS}, serial, issuer_id, not_after FROM requests WHERE request_id = $1", request_id
    )
    return None if row is None else dict(row)


async def list_requests(conn: asyncpg.Connection, status: str | None, limit: int) -> list[dict[str, Any]]:
    """The newest requests, optionally only those in `status`."""
    rows = await conn.fetch(
        "SELECT request_id, requester, profile, status, dns_names, ip_addresses, emails, requested_at, decided_at, "
        "expires_at, decided_by, serial, reasons FROM requests WHERE ($1::text IS NULL OR status = $1) "
        "ORDER BY requested_at DESC LIMIT $2",
        status,
        limit,
    )
    return [dict(r) for r in rows]


async def decide(
    conn: asyncpg.Connection,
    request_id: str,
    status: str,
    reasons: list[Reason],
    *,
    decided_by: str,
    at: datetime,
    profile_digest: str | None = None,
) -> None:
    """Record the outcome of a pending request."""
    await conn.execute(
        "UPDATE requests SET status = $2, reasons = $3, decided_by = $4, decided_at = $5, "
        "profile_digest = coalesce($6, profile_digest) WHERE request_id = $1",
        request_id,
        status,
        [r.model_dump() for r in reasons],
        decided_by,
        at,
        profile_digest,
    )


async def mark_issued_many(
    conn: asyncpg.Connection, issued: Sequence[tuple[str, str, str, datetime]]
) -> dict[str, str | None]:
    """`mark_issued` for several requests (request id, serial, issuer, not after; each request once)
    in one statement; returns the renewed serial of each request found (None: a first enrollment)."""
    ids, serials, issuers, not_afters = (list(col) for col in zip(*issued, strict=True))
    rows = await conn.fetch(
        "UPDATE requests r SET status = 'issued', serial = t.serial, issuer_id = t.issuer, not_after = t.not_after "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS t(id, serial, issuer, not_after) "
        "WHERE r.request_id = t.id RETURNING r.request_id, r.renews_serial",
        ids,
        serials,
        issuers,
        not_afters,
    )
    return {r["request_id"]: r["renews_serial"] for r in rows}


async def mark_rejected_by_signing(conn: asyncpg.Connection, request_id: str, reasons: list[Reason]) -> None:
    """Signing refused an approved request (policy or pre-release check)."""
    await conn.execute(
        "UPDATE requests SET status = 'rejected', reasons = $2, decided_by = 'signing' "
        "WHERE request_id = $1 AND status = 'approved'",
        request_id,
        [r.model_dump() for r in reasons],
    )


async def approve(conn: asyncpg.Connection, request_id: str, operators: list[str], at: datetime) -> list[str]:
    """Record operators' approvals of a pending request; returns every operator who approved it."""
    await conn.executemany(
        "INSERT INTO approvals (request_id, operator, approved_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(request_id, operator, at) for operator in operators],
    )
    rows = await conn.fetch(
        "SELECT operator FROM approvals WHERE request_id = $1 ORDER BY approved_at, operator", request_id
    )
    return [r["operator"] for r in rows]


async def approvals_required(conn: asyncpg.Connection, profile: str) -> int:
    """How many distinct operators must approve a request of `profile` (as the profile is now)."""
    body = await conn.fetchval("SELECT body FROM profiles WHERE name = $1", profile)
    return int(body.get("approvals_required", 1)) if isinstance(body, dict) else 1


async def overdue_pending(conn: asyncpg.Connection, now: datetime, limit: int) -> list[RequestRecord]:
    """Pending requests whose approval window has closed (locked; other replicas skip them)."""
    rows = await conn.fetch(
        f"SELECT {_RECORD_COLUMNS} FROM requests WHERE status = 'pending' AND expires_at <= $1 "
        "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    return [_record(r) for r in rows]


# --- certificates and their renewal schedule ----------------------------------------------------


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate as the projection keeps it (from CertificateIssued and the certificate itself)."""

    cert_id: str
    serial: str
    issuer_id: str
    profile: str
    not_before: datetime
    not_after: datetime
    spki_sha256: str
    fingerprint_sha256: str
    spki_der: bytes
    dns_names: list[str]
    ip_addresses: list[str]
    emails: list[str]
    renew_at: datetime | None
    seq: int


@dataclass(frozen=True)
class Due:
    """A certificate with a scheduled event to send, and which."""

    cert_id: str
    serial: str
    issuer_id: str
    not_after: datetime
    renew_at: datetime | None
    superseded_by: str | None
    superseded_by_id: str | None
    renewal_due: bool
    expired: bool
    superseded: bool
    compromise_due: str | None = None  # a renewal-due to send now: its CA (or key) was compromised


async def save_certificates(conn: asyncpg.Connection, certs: Sequence[IssuedCertificate]) -> None:
    """Keep issued certificates (each with its request's provisioner) and remember their keys as
    certified: two pipelined statements (`executemany`) whatever their number."""
    await conn.executemany(
        "INSERT INTO certificates (cert_id, serial, issuer_id, profile, not_before, not_after, spki_sha256, "
        "fingerprint_sha256, spki_der, dns_names, ip_addresses, emails, renew_at, issued_seq, provisioner_id) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, "
        "(SELECT provisioner_id FROM requests WHERE request_id = $1)) ON CONFLICT (cert_id) DO NOTHING",
        [
            (
                c.cert_id,
                c.serial,
                c.issuer_id,
                c.profile,
                c.not_before,
                c.not_after,
                c.spki_sha256,
                c.fingerprint_sha256,
                c.spki_der,
                c.dns_names,
                c.ip_addresses,
                c.emails,
                c.renew_at,
                c.seq,
            )
            for c in certs
        ],
    )
    await conn.executemany(
        "INSERT INTO certified_keys VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(c.spki_sha256, c.cert_id, c.serial) for c in certs],
    )


async def supersede(conn: asyncpg.Connection, old_serial: str, new_serial: str, new_cert_id: str) -> bool:
    """Record that `new_serial` renewed the certificate `old_serial`; False if unknown or already done."""
    row = await conn.fetchval(
        "UPDATE certificates SET superseded_by = $2, superseded_by_id = $3, "
        "state = CASE WHEN state = 'live' THEN 'superseded' ELSE state END "
        "WHERE cert_id = (SELECT cert_id FROM certificates WHERE serial = $1 ORDER BY issued_seq DESC LIMIT 1) "
        "AND superseded_by IS NULL RETURNING 1",
        old_serial,
        new_serial,
        new_cert_id,
    )
    return row is not None


async def mark_revoked(
    conn: asyncpg.Connection, cert_id: str, reason: str, authorised_by: str | None, compromise: str | None
) -> str | None:
    """A certificate was revoked (the first revocation's reason is kept); `compromise` (a cause of
    renewal-due) marks the holder to be told to renew. Returns the certificate's SPKI SHA-256."""
    spki: str | None = await conn.fetchval(
        "UPDATE certificates SET revoked_by = CASE WHEN revoked_reason IS NULL THEN $3 ELSE revoked_by END, "
        "revoked_reason = coalesce(revoked_reason, $2), "
        "compromise_due = coalesce(compromise_due, $4), "
        "state = CASE WHEN state = 'destroyed' THEN state ELSE 'revoked' END WHERE cert_id = $1 "
        "RETURNING spki_sha256",
        cert_id,
        reason,
        authorised_by,
        compromise,
    )
    return spki


async def mark_destroyed(conn: asyncpg.Connection, cert_id: str) -> None:
    """A certificate was destroyed: purge its body (public key, names, CSR); keep serial, hashes, history."""
    await conn.execute(
        "UPDATE certificates SET destroyed = true, state = 'destroyed', spki_der = NULL, dns_names = '{}', "
        "ip_addresses = '{}', emails = '{}' WHERE cert_id = $1",
        cert_id,
    )
    await conn.execute("UPDATE requests SET csr_pem = NULL WHERE request_id = $1", cert_id)


_SENT = {
    "renewal_due": "renewal_due_sent = true",
    "compromise_due": "compromise_due_sent = true",
    "expired": "expired_sent = true, state = CASE WHEN state = 'live' THEN 'expired' ELSE state END",
    "superseded": "superseded_sent = true",
}


async def mark_sent(conn: asyncpg.Connection, kind: str, cert_ids: list[str]) -> None:
    """Record that enrollment's `kind` event (renewal_due, expired, superseded) of these certificates is sent."""
    if cert_ids:
        await conn.execute(f"UPDATE certificates SET {_SENT[kind]} WHERE cert_id = ANY($1::text[])", cert_ids)


_RENEWAL_DUE = "(state = 'live' AND NOT renewal_due_sent AND renew_at <= $1)"
_EXPIRED = "(NOT destroyed AND NOT expired_sent AND not_after < $1)"  # notAfter is still valid (RFC 5280)
_SUPERSEDED = "(superseded_by IS NOT NULL AND NOT superseded_sent)"
_COMPROMISE_DUE = "(compromise_due IS NOT NULL AND NOT compromise_due_sent AND NOT destroyed)"


_DUE_COLUMNS = (
    "cert_id, serial, issuer_id, not_after, renew_at, superseded_by, superseded_by_id, "
    f"{_RENEWAL_DUE} AS renewal_due, {_EXPIRED} AS expired, {_SUPERSEDED} AS superseded, "
    f"CASE WHEN {_COMPROMISE_DUE} THEN compromise_due END AS compromise_due"
)
# The schedule's look for due events (see `due`): each kind through its own partial index.
DUE = (
    f"WITH renewal AS (SELECT {_DUE_COLUMNS} FROM certificates WHERE {_RENEWAL_DUE} "
    "ORDER BY renew_at LIMIT $2 FOR UPDATE SKIP LOCKED), "
    f"expiry AS (SELECT {_DUE_COLUMNS} FROM certificates WHERE {_EXPIRED} "
    "ORDER BY not_after LIMIT $2 FOR UPDATE SKIP LOCKED), "
    f"superseded AS (SELECT {_DUE_COLUMNS} FROM certificates WHERE {_SUPERSEDED} "
    "ORDER BY cert_id LIMIT $2 FOR UPDATE SKIP LOCKED), "
    f"compromise AS (SELECT {_DUE_COLUMNS} FROM certificates WHERE {_COMPROMISE_DUE} "
    "ORDER BY cert_id LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "SELECT DISTINCT ON (cert_id) * FROM (SELECT * FROM renewal UNION ALL SELECT * FROM expiry "
    "UNION ALL SELECT * FROM superseded UNION ALL SELECT * FROM compromise) AS due "
    "ORDER BY cert_id LIMIT $2"
)


async def due(conn: asyncpg.Connection, now: datetime, limit: int) -> list[Due]:
    """Certificates with a scheduled event to send at `now` (locked; other replicas skip them).

    Each kind is looked for through its own partial index, the most overdue first, so a call
    reads what is due and not the table, whether PostgreSQL has analyzed it or not. (One `WHERE`
    of the four conditions `OR`ed, ordered by `cert_id`, was planned on a never-analyzed table as
    a walk of the whole primary key: 0.35-0.47 s at 500,000 certificates, after every batch of
    issued ones.) Rows locked here beyond `limit` stay locked until the caller's transaction
    ends, and the caller's next batch takes them."""
    rows = await conn.fetch(DUE, now, limit)
    return [Due(**dict(r)) for r in rows]


async def requester_of(conn: asyncpg.Connection, request_id: str) -> str | None:
    """Who asked for the request `request_id` (the identity NATS authenticated)."""
    requester: str | None = await conn.fetchval("SELECT requester FROM requests WHERE request_id = $1", request_id)
    return requester


async def certificate_by_serial(conn: asyncpg.Connection, serial: str) -> Certified | None:
    """The certificate a renewal names, with the renewal of it already pending or approved, if any."""
    row = await conn.fetchrow(
        "SELECT c.*, (SELECT r.request_id FROM requests r WHERE r.renews_serial = c.serial "
        "AND r.status IN ('pending', 'approved') ORDER BY r.requested_at LIMIT 1) AS in_flight "
        "FROM certificates c WHERE c.serial = $1 ORDER BY c.issued_seq DESC LIMIT 1",
        serial,
    )
    if row is None:
        return None
    return Certified(
        cert_id=row["cert_id"],
        serial=row["serial"],
        profile=row["profile"],
        not_after=row["not_after"],
        spki_sha256=row["spki_sha256"],
        spki_der=row["spki_der"],
        names=Names(list(row["dns_names"]), list(row["ip_addresses"]), list(row["emails"])),
        destroyed=row["destroyed"],
        revoked_reason=row["revoked_reason"],
        revoked_by=row["revoked_by"],
        superseded_by=row["superseded_by"],
        renewal_in_flight=row["in_flight"],
        provisioner_id=row["provisioner_id"],
    )


@dataclass(frozen=True)
class RenewalPolicy:
    """The profile a renewal asks for and what is known of its new key, read in one round trip."""

    profile_body: dict[str, Any] | None
    profile_digest: str | None
    profile_lint_failed: bool
    key_blocked: bool
    key_certified_as: str | None
    provisioner_status: str | None  # of the provisioner that enrolled the certificate (None: not registered)


async def renewal_policy(
    conn: asyncpg.Connection, profile: str, spki: str | None, provisioner_id: str | None
) -> RenewalPolicy:
    """The current version of `profile`, whether the new key is blocked or was ever certified, and the
    status of the provisioner that enrolled the certificate."""
    row = await conn.fetchrow(
        "SELECT f.body, f.digest, coalesce(f.lint_failed, false) AS lint_failed, "
        "EXISTS (SELECT 1 FROM blocked_keys WHERE spki_sha256 = $2) AS blocked, "
        "(SELECT serial FROM certified_keys WHERE spki_sha256 = $2) AS certified_as, "
        "(SELECT status FROM provisioners WHERE provisioner_id = $3) AS provisioner_status "
        "FROM (SELECT 1) one LEFT JOIN profiles f ON f.name = $1",
        profile,
        spki,
        provisioner_id,
    )
    assert row is not None
    return RenewalPolicy(
        row["body"], row["digest"], row["lint_failed"], row["blocked"], row["certified_as"], row["provisioner_status"]
    )
