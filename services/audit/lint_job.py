"""Post-issuance pkilint as a background job over the archive, never on issuance's path.

Signing checks every certificate against its profile's pkilint-clean template before it releases
it, and a `lint = "full"` profile runs pkilint on each certificate before release too. After
issuance audit runs pkilint again, as defence in depth against a template check that let something
through. pkilint costs about 8 ms a certificate, several times all of issuance's own work, so it
must not be paid per certificate on the hot path: this job walks the archive's `CertificateIssued`
events in log order, in batches, at most `per_s` a second, in a worker process at nice 19 (it takes
CPU that issuance leaves idle). When issuance outruns it for long, it keeps at most `backlog_max`
certificates waiting and passes over the oldest beyond that, recording each stretch it passed over.

Its coverage is therefore stated, not assumed: `coverage()` (the `lint` query, `certbus audit lint`)
counts the certificates issued, linted clean, linted failing, passed over and still waiting. A
certificate that fails is an `AuditFindingRaised` (check `pkilint`), raised once, as before.

One job runs at a time across audit's replicas: each batch holds the cursor's row lock
(`FOR UPDATE SKIP LOCKED`; a replica that finds it locked does nothing this turn).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from services.audit import checks
from services.audit.linter import Linter
from shared.contract.binding import Unbound, bind
from shared.contract.events import CertificateIssued, LintResult
from shared.contract.queries import LintCoverage
from shared.runtime.outbox import OutboxEntry
from shared.runtime.service import Runtime

log = logging.getLogger("certbus.audit.lint")
LINTED = Counter(
    "certbus_certificates_linted_total",
    "Issued certificates after issuance, by outcome (clean, error, passed_over)",
    ["outcome"],
)
BACKLOG = Gauge("certbus_lint_backlog", "Issued certificates waiting for post-issuance pkilint")

# Raises findings for failing certificates in the caller's transaction: services.audit.handlers.enqueue_findings.
Enqueue = Callable[
    [asyncpg.Connection, list[checks.Finding], CertificateIssued, list[LintResult]], Awaitable[list[OutboxEntry]]
]


@dataclass(frozen=True)
class Batch:
    """What one turn did: certificates linted, passed over, the findings' events to publish, and
    whether more may wait behind it (it took a whole batch)."""

    linted: int
    passed_over: int
    entries: list[OutboxEntry]
    more: bool = False


class LintJob:
    """Lints the archive's issued certificates behind the chained head, at a capped rate."""

    def __init__(
        self,
        rt: Runtime,
        enqueue: Enqueue,
        *,
        per_s: float,
        backlog_max: int,
        batch: int = 32,
        linter: Linter | None = None,
    ) -> None:
        if per_s <= 0 or backlog_max < batch or batch < 1:
            raise ValueError("lint needs per_s > 0 and backlog_max >= batch >= 1")
        self._rt = rt
        self._enqueue = enqueue
        self._per_s = per_s
        self._backlog_max = backlog_max
        self._batch = batch
        self._linter = linter or Linter()

    async def step(self) -> int:
        """Lint until caught up with the chained head, pacing each batch to at most `per_s` a second;
        returns how many certificates were linted."""
        total = 0
        while True:
            started = time.monotonic()
            done = await self.run_batch()
            await self._rt.publish_pending(done.entries)
            total += done.linted
            if not done.more:
                return total
            await asyncio.sleep(max(0.0, done.linted / self._per_s - (time.monotonic() - started)))

    async def run_batch(self) -> Batch:
        """One transaction: bound the backlog, lint the next batch, record results and findings, move
        the cursor. Nothing is recorded for a batch whose lint failed (it is tried again)."""
        async with self._rt.pool.acquire() as conn, conn.transaction():
            cursor = await conn.fetchval("SELECT through FROM lint_cursor FOR UPDATE SKIP LOCKED")
            if cursor is None:
                return Batch(0, 0, [])  # another replica's turn
            head = await conn.fetchval("SELECT seq FROM chain_head WHERE id = 1")
            cursor, passed_over = await self._bound_backlog(conn, cursor, head)
            rows = await conn.fetch(
                "SELECT stream_seq, subject, raw FROM archive WHERE event_type = 'CertificateIssued' "
                "AND stream_seq > $1 AND stream_seq <= $2 ORDER BY stream_seq LIMIT $3",
                cursor,
                head,
                self._batch,
            )
            issued = _readable(rows, self._rt.root)
            verdicts = await self._linter.lint({key: event.cert_pem for key, (_, event) in issued.items()})
            now = self._rt.clock.now()
            await conn.executemany(
                "INSERT INTO lint_results (stream_seq, profile, failed, linted_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT DO NOTHING",
                [(seq, event.profile, bool(verdicts[key]), now) for key, (seq, event) in issued.items()],
            )
            entries: list[OutboxEntry] = []
            for key, (seq, event) in issued.items():
                found = verdicts[key]
                LINTED.labels("error" if found else "clean").inc()
                if found:
                    entries += await self._enqueue(conn, [_finding(seq, event, found)], event, found)
            more = len(rows) == self._batch
            through = max(cursor, rows[-1]["stream_seq"] if more else head)
            await conn.execute("UPDATE lint_cursor SET through = $1", through)
            BACKLOG.set(await _waiting(conn, through, head))
        return Batch(len(issued), passed_over, entries, more)

    async def _bound_backlog(self, conn: asyncpg.Connection, cursor: int, head: int) -> tuple[int, int]:
        """If more than `backlog_max` certificates wait, pass over the oldest (recorded): the cursor to
        lint from and how many were passed over."""
        cut = await conn.fetchval(
            "SELECT stream_seq FROM archive WHERE event_type = 'CertificateIssued' AND stream_seq > $1 "
            "AND stream_seq <= $2 ORDER BY stream_seq DESC OFFSET $3 LIMIT 1",
            cursor,
            head,
            self._backlog_max,
        )
        if cut is None:
            return cursor, 0
        count = await conn.fetchval(
            "SELECT count(*) FROM archive WHERE event_type = 'CertificateIssued' AND stream_seq > $1 "
            "AND stream_seq <= $2",
            cursor,
            cut,
        )
        await conn.execute(
            "INSERT INTO lint_passed_over (after_seq, through_seq, certificates, at) VALUES ($1, $2, $3, $4)",
            cursor,
            cut,
            count,
            self._rt.clock.now(),
        )
        LINTED.labels("passed_over").inc(count)
        log.warning(
            "post-issuance lint passed over certificates: its backlog reached its bound",
            extra={"after_seq": cursor, "through_seq": cut, "certificates": count, "bound": self._backlog_max},
        )
        return cut, count

    def close(self) -> None:
        """Stop the lint worker process."""
        self._linter.close()


def _readable(rows: list[asyncpg.Record], root: str) -> dict[uuid.UUID, tuple[int, CertificateIssued]]:
    """The rows that are a valid CertificateIssued on their own subject, by event id (the archive
    raised its own finding for any that is not; they are not certificates to lint)."""
    issued = {}
    for row in rows:
        try:
            event = CertificateIssued.model_validate(
                bind(row["subject"], root, bytes(row["raw"]), (CertificateIssued,))
            )
        except (Unbound, ValidationError):
            continue
        issued[event.event_id] = (row["stream_seq"], event)
    return issued


def _finding(seq: int, event: CertificateIssued, found: list[LintResult]) -> checks.Finding:
    codes = sorted({f.code for f in found})
    log.error(
        "an issued certificate fails pkilint", extra={"serial": event.serial, "profile": event.profile, "codes": codes}
    )
    return checks.Finding(
        "pkilint", seq, f"certificate {event.serial} ({event.profile}) fails pkilint: {', '.join(codes)}"
    )


async def _waiting(conn: asyncpg.Connection, cursor: int, head: int) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM archive WHERE event_type = 'CertificateIssued' AND stream_seq > $1 AND stream_seq <= $2",
        cursor,
        head,
    )
    return count


async def coverage(conn: asyncpg.Connection) -> LintCoverage:
    """Issued, linted (clean / failing), passed over and waiting, over the whole archive; by profile
    for what was linted."""
    head = await conn.fetchval("SELECT seq FROM chain_head WHERE id = 1")
    cursor = await conn.fetchval("SELECT through FROM lint_cursor")
    issued = await conn.fetchval(
        "SELECT count(*) FROM archive WHERE event_type = 'CertificateIssued' AND stream_seq <= $1", head
    )
    linted = await conn.fetch(
        "SELECT profile, count(*) FILTER (WHERE NOT failed) AS clean, count(*) FILTER (WHERE failed) AS failed "
        "FROM lint_results GROUP BY profile ORDER BY profile"
    )
    passed_over = await conn.fetchval("SELECT coalesce(sum(certificates), 0) FROM lint_passed_over")
    return LintCoverage(
        issued=issued,
        clean=sum(r["clean"] for r in linted),
        failed=sum(r["failed"] for r in linted),
        passed_over=passed_over,
        waiting=await _waiting(conn, cursor, head),
        through_seq=cursor,
        by_profile={r["profile"]: {"clean": r["clean"], "failed": r["failed"]} for r in linted},
    )
