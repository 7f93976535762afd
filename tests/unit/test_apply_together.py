"""`apply_events` hands a run of consecutive events of a `Together` type to its projection at once,
in log order, and every other event to its own projection one by one; a duplicate is never applied."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.contract.events import CertificateDestroyed, CertificateExpired, Event
from shared.runtime.consumer import Delivery, Together, apply_events, dispatching

NOW = datetime(2026, 12, 5, tzinfo=UTC)


class Claims:
    """A connection whose tracking table already holds `applied` (those are duplicates)."""

    def __init__(self, applied: set[uuid.UUID]) -> None:
        self.applied = applied

    async def fetch(self, sql: str, consumer: str, ids: list[uuid.UUID], seqs: list[int]) -> list[dict[str, Any]]:
        assert sql.startswith("INSERT INTO tracking")
        claimed, rows = set(self.applied), []
        for event_id in ids:
            if event_id not in claimed:
                claimed.add(event_id)
                rows.append({"event_id": event_id})
        return rows


def _expired(n: int) -> CertificateExpired:
    return CertificateExpired.first(
        f"cert-{n}", serial=f"{n:x}", issuer_id="i", not_after=NOW - timedelta(days=1), producer="enrollment", at=NOW
    )


def _destroyed(n: int) -> CertificateDestroyed:
    return CertificateDestroyed.first(
        f"cert-{n}",
        serial=f"{n:x}",
        issuer_id="i",
        fingerprint_sha256="",
        destroyed_at=NOW,
        destruction_request_id=f"d-{n}",
        ordered_by="holder",
        producer="revocation",
        at=NOW,
    )


async def test_runs_of_a_together_type_are_applied_at_once_and_the_rest_one_by_one() -> None:
    calls: list[tuple[str, list[int]]] = []

    async def expired_run(conn: Any, run: list[tuple[Event, Delivery]]) -> None:
        calls.append(("run", [d.seq for _, d in run]))

    async def destroyed(conn: Any, event: Event, delivery: Delivery) -> None:
        calls.append(("one", [delivery.seq]))

    apply = dispatching("test", {CertificateExpired: Together(expired_run), CertificateDestroyed: destroyed})
    events: list[Event] = [_expired(1), _expired(2), _destroyed(3), _destroyed(4), _expired(5), _expired(6)]
    items = [(e, Delivery(seq, NOW)) for seq, e in enumerate(events, start=1)]
    items.insert(2, items[1])  # a redelivered copy inside the group
    await apply_events(Claims({events[5].event_id}), "test", items, apply)  # type: ignore[arg-type]
    assert calls == [("run", [1, 2]), ("one", [3]), ("one", [4]), ("run", [5])]


async def test_a_together_projection_applies_a_lone_event_as_a_run_of_one() -> None:
    runs: list[int] = []

    async def expired_run(conn: Any, run: list[tuple[Event, Delivery]]) -> None:
        runs.append(len(run))

    apply = dispatching("test", {CertificateExpired: Together(expired_run)})
    await apply(None, _expired(1), Delivery(1, NOW))  # type: ignore[arg-type]
    assert runs == [1]
