"""Replicas of one service (same name, identity and schema): each writes its own health report to
the service's `replicas` table every HEARTBEAT_S seconds, so that whichever replica answers the
health query can list them all. Times are the database's, the one clock every replica shares."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from shared.runtime.loops import WakeableLoop

log = logging.getLogger("certbus.replicas")

HEARTBEAT_S = 2.0
SILENT_AFTER_S = 6.0  # a replica not seen for longer is listed as silent (crashed, hung or cut off)
FORGET_AFTER_S = 600.0  # and its row is deleted after this long
MAX_LISTED = 16  # replicas a health answer lists (the most recently seen), to keep it well under NATS's max_payload
DB_TIMEOUT_S = 2.0

_BEAT = """
INSERT INTO replicas (instance, pid, started, seen, report)
VALUES ($1, $2, coalesce($3, now()), now(), $4)
ON CONFLICT (instance) DO UPDATE
SET pid = EXCLUDED.pid, started = EXCLUDED.started, seen = EXCLUDED.seen, report = EXCLUDED.report
RETURNING started
"""
_FORGET = "DELETE FROM replicas WHERE seen < now() - make_interval(secs => $1)"
_OTHERS = """
SELECT instance, pid, started, seen, report, extract(epoch FROM now() - seen)::float8 AS seen_s,
       count(*) OVER () AS total
FROM replicas
WHERE instance <> $1 AND seen >= now() - make_interval(secs => $2)
ORDER BY seen DESC, instance
LIMIT $3
"""


class Heartbeat:
    """Writes this replica's health report (`report()`) every HEARTBEAT_S seconds, forgets replicas
    silent for FORGET_AFTER_S, and deletes this replica's row when stopped. A failed beat is logged
    and retried (the replica turns silent to the others meanwhile); it never stops the service."""

    def __init__(
        self, pool: Callable[[], asyncpg.Pool], instance: str, report: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        self._pool = pool
        self.instance = instance
        self._report = report
        self.started: datetime | None = None  # the database's time of this process's first beat
        self.loop = WakeableLoop(f"heartbeat-{instance}", self.beat, idle_s=HEARTBEAT_S, max_backoff_s=HEARTBEAT_S)

    def start(self) -> None:
        """Beat now, then every HEARTBEAT_S seconds."""
        self.loop.start()
        self.loop.wake()

    async def beat(self) -> None:
        """Write this replica's report now, and forget long-silent replicas."""
        report = await self._report()
        async with asyncio.timeout(DB_TIMEOUT_S), self._pool().acquire() as conn, conn.transaction():
            self.started = await conn.fetchval(_BEAT, self.instance, os.getpid(), self.started, report)
            await conn.execute(_FORGET, FORGET_AFTER_S)

    async def stop(self) -> None:
        """Stop beating and delete this replica's row (a failure is logged: the row turns silent)."""
        await self.loop.stop()
        try:
            async with asyncio.timeout(DB_TIMEOUT_S), self._pool().acquire() as conn:
                await conn.execute("DELETE FROM replicas WHERE instance = $1", self.instance)
        except Exception as exc:  # noqa: BLE001 - stopping goes on; the row is forgotten later
            log.warning("could not delete this replica's row", extra={"instance": self.instance, "error": repr(exc)})


async def others(pool: asyncpg.Pool, instance: str) -> tuple[list[dict[str, Any]], int]:
    """The latest reports of the service's other replicas not yet forgotten (at most MAX_LISTED - 1,
    the most recently seen), each with `instance`, `seen`, `seen_s` and `silent`; and how many more
    there are."""
    async with asyncio.timeout(DB_TIMEOUT_S), pool.acquire() as conn:
        rows = await conn.fetch(_OTHERS, instance, FORGET_AFTER_S, MAX_LISTED - 1)
    listed = [
        {
            **row["report"],
            "instance": row["instance"],
            "pid": row["pid"],
            "started": row["started"].isoformat(),
            "seen": row["seen"].isoformat(),
            "seen_s": round(row["seen_s"], 1),
            "silent": row["seen_s"] > SILENT_AFTER_S,
        }
        for row in rows
    ]
    total = rows[0]["total"] if rows else 0
    return listed, total - len(listed)
