"""Where the consistency checks keep what they know of each certificate: PostgreSQL, not the process.

A Checker's `Facts` (a request's approvals, an issuer's serials, a serial's key and destruction) and
the revocations it has seen grow with the log; kept in memory they held 400-500 bytes a certificate.
The scheduled check keeps them in audit's tables (`SCHEDULED`); an on-demand check of the whole log
(`certbus audit check`) in temporary copies of them on its one connection (`TEMPORARY`), so that it
neither touches the scheduled check's nor grows the process. For each batch of the log, `load` reads
the rows its events name (`checks.wanted`), the Checker applies the batch to them, and `save` writes
them back with the cursor, in the batch's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg

from services.audit import domain
from services.audit.checks import Approvals, Facts, Key, Revoked, Wanted, key_of, text_of

TABLES = ("check_approvals", "check_issued", "check_serials", "check_revocations", "check_cursor")
PAGE = 5_000  # revocations read at a time to judge a CRL by


class Cursor(NamedTuple):
    """How far the stored facts go (the chain's hash there), whose run they are, and what that run's
    Checker knew besides them there (`Checker.state`; None until a run that records its findings
    as it goes stores it: only then can another go on from it)."""

    through: int
    hash: bytes
    run: uuid.UUID | None
    state: dict[str, Any] | None


class Loaded(NamedTuple):
    """What `load` read, as it was: `save` writes only what a batch changed or added."""

    approvals: dict[Key, tuple[int, int, str | None, Key | None]]
    issued: set[tuple[str, Key]]
    serials: dict[Key, tuple[Key | None, int | None]]


class StoredRevocation(NamedTuple):
    """A revocation as it is stored: its issuer, itself, and the CRL that must list it."""

    issuer: str
    revoked: Revoked
    crl_key: str
    shard: int | None


@dataclass(frozen=True)
class CheckStore:
    """A set of the checks' tables: audit's own (no prefix) or a connection's temporary copies."""

    prefix: str = ""

    def _t(self, table: str) -> str:
        return f"{self.prefix}{table}"

    async def cursor(self, conn: asyncpg.Connection) -> Cursor:
        """Where the stored facts stand, and whose they are (locked for the caller's transaction)."""
        row = await conn.fetchrow(f"SELECT through, hash, run, state FROM {self._t('check_cursor')} FOR UPDATE")
        assert row is not None  # the migration (or `create_temporary`) inserts it
        return Cursor(row["through"], bytes(row["hash"]), row["run"], row["state"])

    async def claim(self, conn: asyncpg.Connection, run: uuid.UUID) -> None:
        """Empty the tables for `run`, a checker starting from the beginning of the log."""
        await conn.execute(f"TRUNCATE {', '.join(self._t(t) for t in TABLES[:-1])}")
        await conn.execute(
            f"UPDATE {self._t('check_cursor')} SET through = 0, hash = $1, run = $2, state = NULL", domain.GENESIS, run
        )

    async def take_over(self, conn: asyncpg.Connection, run: uuid.UUID) -> None:
        """Make the stored facts `run`'s, to go on from where they stand."""
        await conn.execute(f"UPDATE {self._t('check_cursor')} SET run = $1", run)

    async def advance(
        self, conn: asyncpg.Connection, through: int, chain_hash: bytes, state: dict[str, Any] | None
    ) -> None:
        """Move the cursor to `through` (the chain's hash there), with the Checker's `state` if it changed."""
        if state is None:
            await conn.execute(f"UPDATE {self._t('check_cursor')} SET through = $1, hash = $2", through, chain_hash)
        else:
            await conn.execute(
                f"UPDATE {self._t('check_cursor')} SET through = $1, hash = $2, state = $3",
                through,
                chain_hash,
                state,
            )

    async def load(self, conn: asyncpg.Connection, want: Wanted) -> tuple[Facts, Loaded]:
        """The facts stored under the keys `want` names (a key with none is a certificate not seen yet),
        and a copy of them for `save`."""
        facts = Facts()
        if want.requests:
            for r in await conn.fetch(
                _by_key(self._t("check_approvals"), "request", "approvals, first_seq, digest, supersedes"),
                [text_of(k) for k in want.requests],
            ):
                supersedes = key_of(r["supersedes"]) if r["supersedes"] is not None else None
                facts.approvals[key_of(r["request"])] = Approvals(
                    r["approvals"], r["first_seq"], r["digest"], supersedes
                )
        if want.issued:
            issuers, serials = zip(*((i, text_of(s)) for i, s in want.issued), strict=True)
            for r in await conn.fetch(
                f"SELECT w.issuer, w.serial, t.first_seq FROM unnest($1::text[], $2::text[]) AS w (issuer, serial) "
                f"CROSS JOIN LATERAL (SELECT first_seq FROM {self._t('check_issued')} "
                "WHERE issuer = w.issuer AND serial = w.serial OFFSET 0) t",
                list(issuers),
                list(serials),
            ):
                facts.issued[(r["issuer"], key_of(r["serial"]))] = r["first_seq"]
        if want.serials:
            for r in await conn.fetch(
                _by_key(self._t("check_serials"), "serial", "spki_sha256, destroyed_seq"),
                [text_of(k) for k in want.serials],
            ):
                serial = key_of(r["serial"])
                if r["spki_sha256"] is not None:
                    facts.spki_of[serial] = key_of(r["spki_sha256"])
                if r["destroyed_seq"] is not None:
                    facts.destroyed[serial] = r["destroyed_seq"]
        return facts, Loaded(
            {k: (a.count, a.first_seq, a.digest, a.supersedes) for k, a in facts.approvals.items()},
            set(facts.issued),
            {s: (facts.spki_of.get(s), facts.destroyed.get(s)) for s in facts.spki_of.keys() | facts.destroyed.keys()},
        )

    async def save(
        self, conn: asyncpg.Connection, facts: Facts, loaded: Loaded, revocations: list[StoredRevocation]
    ) -> None:
        """Store what a batch changed in `facts` (`loaded` by `load`, then applied to) and its revocations."""
        approvals = {
            k: a
            for k, a in facts.approvals.items()
            if loaded.approvals.get(k) != (a.count, a.first_seq, a.digest, a.supersedes)
        }
        if approvals:
            await conn.execute(
                f"INSERT INTO {self._t('check_approvals')} AS a "
                "SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[]) "
                "ON CONFLICT (request) DO UPDATE SET approvals = EXCLUDED.approvals, digest = EXCLUDED.digest, "
                "supersedes = EXCLUDED.supersedes",
                *_columns(
                    (text_of(k), a.count, a.first_seq, a.digest, text_of(a.supersedes)) for k, a in approvals.items()
                ),
            )
        issued = [
            (issuer, text_of(serial), seq)
            for (issuer, serial), seq in facts.issued.items()
            if (issuer, serial) not in loaded.issued
        ]
        if issued:
            await conn.execute(
                f"INSERT INTO {self._t('check_issued')} SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) "
                "ON CONFLICT DO NOTHING",
                *_columns(issued),
            )
        serials = [
            s
            for s in facts.spki_of.keys() | facts.destroyed.keys()
            if loaded.serials.get(s) != (facts.spki_of.get(s), facts.destroyed.get(s))
        ]
        if serials:
            await conn.execute(
                f"INSERT INTO {self._t('check_serials')} SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) "
                "ON CONFLICT (serial) DO UPDATE SET spki_sha256 = EXCLUDED.spki_sha256, "
                "destroyed_seq = EXCLUDED.destroyed_seq",
                *_columns((text_of(s), text_of(facts.spki_of.get(s)), facts.destroyed.get(s)) for s in serials),
            )
        if revocations:
            await conn.execute(
                f"INSERT INTO {self._t('check_revocations')} "
                "SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::int[]) "
                "ON CONFLICT DO NOTHING",
                *_columns(
                    (s.revoked.stream_seq, s.issuer, s.revoked.serial, s.revoked.revoked_at, s.crl_key, s.shard)
                    for s in revocations
                ),
            )

    async def due_crls(self, conn: asyncpg.Connection) -> list[tuple[str, str, int | None]]:
        """Each CRL some revocation must be in: (its `crl_key`, its issuer, its shard), by key."""
        rows = await conn.fetch(f"SELECT DISTINCT crl_key, issuer, shard FROM {self._t('check_revocations')}")
        return sorted((r["crl_key"], r["issuer"], r["shard"]) for r in rows)

    async def revocations(self, conn: asyncpg.Connection, crl_key: str, after: int) -> list[Revoked]:
        """The next page of revocations that CRL `crl_key` must list, after position `after`, in log order."""
        rows = await conn.fetch(
            f"SELECT stream_seq, serial, revoked_at FROM {self._t('check_revocations')} "
            "WHERE crl_key = $1 AND stream_seq > $2 ORDER BY stream_seq LIMIT $3",
            crl_key,
            after,
            PAGE,
        )
        return [Revoked(r["serial"], r["stream_seq"], r["revoked_at"]) for r in rows]


SCHEDULED = CheckStore()
TEMPORARY = CheckStore("pg_temp.")


async def create_temporary(conn: asyncpg.Connection) -> None:
    """Temporary copies of the tables on `conn`, for `TEMPORARY` (until `drop_temporary`)."""
    await drop_temporary(conn)
    for table in TABLES:  # with no temporary table of that name, `LIKE` names audit's own
        await conn.execute(f"CREATE TEMPORARY TABLE {table} (LIKE {table} INCLUDING ALL)")
    await conn.execute("INSERT INTO pg_temp.check_cursor (through, hash) VALUES (0, $1)", domain.GENESIS)


async def drop_temporary(conn: asyncpg.Connection) -> None:
    await conn.execute(f"DROP TABLE IF EXISTS {', '.join(f'pg_temp.{t}' for t in TABLES)}")


def _by_key(table: str, key: str, columns: str) -> str:
    """The rows of `table` whose `key` is one of $1: a primary-key lookup for each key, in a nested loop.
    As `key = ANY($1)` or a join, a plan made while the table was small (or without statistics: a
    temporary table never has any, and the plan is kept with the prepared statement) read the whole
    table for every batch, a little longer each time."""
    return (
        f"SELECT w.{key}, t.* FROM unnest($1::text[]) AS w ({key}) "
        f"CROSS JOIN LATERAL (SELECT {columns} FROM {table} WHERE {key} = w.{key} OFFSET 0) t"
    )


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as columns, for `unnest`."""
    return [list(c) for c in zip(*rows, strict=True)]
