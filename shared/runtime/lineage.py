"""A service that lost its database refuses to start instead of deciding on empty tables.

The durable consumers live on the log, not in the database: a service whose whole database (or
schema) is gone starts with empty tables while its durables stay where they were, at the end of
the log. Nothing would be replayed, and it would decide on empty tables: signing would create a
new CA beside the one it has keys for, enrollment and revocation would refuse or park what the
operators registered, validation would answer `unknown` for revoked certificates, and an empty
operator registry would accept a new genesis. So when a start creates the schema new (the runtime
migrations ran in it) and a durable of the service has already acknowledged events, the service
records that in `lost_database` and refuses to start, now and on every start after, until the
database is restored. (A service whose durable is new, or was deleted to rebuild, replays the log
from its start as before.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

log = logging.getLogger("certbus.runtime")
FRESH_SCHEMA = "runtime/000_runtime.sql"  # applied by a start that created the schema


class DatabaseLost(RuntimeError):
    """The service's database is newer than its durable consumers' progress on the log."""


async def acknowledged(js: JetStreamContext, stream: str, durables: Iterable[str]) -> dict[str, int]:
    """Each existing durable's acknowledgement floor (a stream sequence), for those past 0."""
    floors = {}
    for durable in durables:
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            continue
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        if floor:
            floors[durable] = int(floor)
    return floors


async def refuse_a_lost_database(
    pool: asyncpg.Pool, js: JetStreamContext, service: str, stream: str, durables: Iterable[str], fresh: bool
) -> None:
    """Raise DatabaseLost if this start created the schema while the durables had consumed events,
    or an earlier start found that and the database was not restored since."""
    if fresh:
        floors = await acknowledged(js, stream, durables)
        if floors:
            await pool.executemany(
                "INSERT INTO lost_database (durable, ack_floor) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                sorted(floors.items()),
            )
    rows = await pool.fetch("SELECT durable, ack_floor FROM lost_database ORDER BY durable")
    if rows:
        where = ", ".join(f"{r['durable']} at {r['ack_floor']}" for r in rows)
        message = (
            f"{service} refuses to start: its database is new, but its consumers of {stream} had already "
            f"acknowledged events ({where}): the database was lost. Restore it from a backup; "
            f"starting on empty tables would decide on nothing (see docs/deploying.md#losing-a-database)"
        )
        log.error("database lost", extra={"service": service, "durables": where})
        raise DatabaseLost(message)
