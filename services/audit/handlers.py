"""Audit's subscriber (archives everything, even malformed events) and its queries."""

from __future__ import annotations

import json

from faststream.nats.annotations import NatsMessage

from services.audit import replay, store
from shared.consumer import Delivery, GroupCommit
from shared.crypto import normalise_serial
from shared.metrics import EVENTS_CONSUMED
from shared.outbox import OutboxEntry
from shared.queries import HistoryAnswer, HistoryEntry, HistoryQuery, ReplayAnswer
from shared.service import Runtime

NAME = "audit"


def register(rt: Runtime) -> None:
    """Attach audit's consumer and queries."""

    async def archive(items: list[tuple[tuple[str, bytes], Delivery]]) -> list[OutboxEntry]:
        async with rt.pool.acquire() as conn, conn.transaction():
            n = await store.archive(conn, [(delivery.seq, subject, data) for (subject, data), delivery in items])
        EVENTS_CONSUMED.labels(NAME, "any").inc(n)
        return []

    archiver: GroupCommit[tuple[str, bytes]] = GroupCommit(archive, rt.publish_pending)

    @rt.consumer("archive", [f"{rt.root}.>"])
    async def on_message(msg: NatsMessage) -> None:
        """Archive every message verbatim, readable or not: the archive is the evidence."""
        raw = msg.raw_message
        await archiver.submit((raw.subject, raw.data), Delivery.of(msg))

    @rt.query("history")
    async def history(query: HistoryQuery) -> HistoryAnswer:
        serial = normalise_serial(query.serial)
        async with rt.pool.acquire() as conn:
            cert_id, rows = await store.history(conn, serial)
        return HistoryAnswer(
            serial=serial,
            cert_id=cert_id,
            events=[
                HistoryEntry(
                    stream_seq=r["stream_seq"],
                    event_type=r["event_type"],
                    subject=r["subject"],
                    producer=r["producer"] or "?",
                    occurred_at=r["occurred_at"],
                    event=json.loads(bytes(r["raw"])),
                )
                for r in rows
            ],
        )

    @rt.query("replay")
    async def run_replay() -> ReplayAnswer:
        return await replay.replay(rt.pool, rt.js, rt.settings.stream, f"{rt.root}.>", NAME)
