"""OCSP statuses kept in memory by each validation replica, polled from `status_changes` on real
PostgreSQL: a change committed before a request is never missed, whichever replica made it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from services.validation import store
from services.validation.ocsp import GOOD, UNKNOWN
from services.validation.statuses import StatusView
from shared.contract.events import CaCreated, CertificateRevoked
from shared.runtime import db

MIGRATIONS = Path(store.__file__).parent / "migrations"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, "validation", 1, 10)
    await db.migrate(pool, "validation", [MIGRATIONS])
    yield pool
    await pool.close()


async def _issue(pool: asyncpg.Pool, serial: str, ca_id: str = "ca1") -> None:
    await pool.execute(
        "INSERT INTO certificates (serial, cert_id, issuer_id, status, not_before, not_after) "
        "VALUES ($1, $1, $2, 'good', $3, $4)",
        serial,
        ca_id,
        NOW,
        NOW + timedelta(days=30),
    )


def _revoked(serial: str, ca_id: str = "ca1") -> CertificateRevoked:
    return CertificateRevoked.model_construct(
        serial=serial, aggregate_id=serial, issuer_id=ca_id, revoked_at=NOW, reason="keyCompromise"
    )


async def _revoke(pool: asyncpg.Pool, serial: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store.apply_revoked(conn, _revoked(serial))


@pytest.fixture
async def new_view(pool: asyncpg.Pool) -> AsyncIterator[Callable[..., StatusView]]:
    """Make StatusViews on the pool (each a replica), stopped at the end (each holds a connection)."""
    made: list[StatusView] = []

    def make(**options: Any) -> StatusView:
        made.append(StatusView(lambda: pool, **options))
        return made[-1]

    yield make
    for view in made:
        await view.stop()


@pytest.fixture
def replicas(new_view: Callable[..., StatusView]) -> tuple[StatusView, StatusView]:
    return new_view(), new_view()


async def test_a_revocation_committed_before_a_request_is_answered_revoked_by_a_replica_holding_good(
    pool: asyncpg.Pool, replicas: tuple[StatusView, StatusView]
) -> None:
    await _issue(pool, "a1")
    for view in replicas:
        assert await view.status("ca1", "a1") == GOOD
        assert await view.status("ca1", "a1") == GOOD  # now from memory
    reads = [view.reads for view in replicas]
    await _revoke(pool, "a1")  # as whichever replica consumed the event: neither view is told
    for view, before in zip(replicas, reads, strict=True):
        status = await view.status("ca1", "a1")
        assert status.kind == "revoked"
        assert view.reads == before + 1  # dropped by the poll, read again


async def test_requests_racing_revocations_never_get_good_after_the_commit(
    pool: asyncpg.Pool, replicas: tuple[StatusView, StatusView]
) -> None:
    serials = [f"b{i}" for i in range(30)]
    for serial in serials:
        await _issue(pool, serial)
    for view in replicas:
        for serial in serials:
            assert await view.status("ca1", serial) == GOOD
    committed: set[str] = set()
    stale: list[str] = []
    stop = asyncio.Event()

    async def ask(view: StatusView) -> None:
        while not stop.is_set():
            for serial in serials:
                was_committed = serial in committed  # before the request is sent
                if (await view.status("ca1", serial)).kind != "revoked" and was_committed:
                    stale.append(serial)

    askers = [asyncio.create_task(ask(view)) for view in replicas for _ in range(4)]
    for serial in serials:
        await _revoke(pool, serial)
        committed.add(serial)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*askers)
    assert stale == []


async def test_one_poll_serves_every_request_waiting_on_it(
    pool: asyncpg.Pool, new_view: Callable[..., StatusView]
) -> None:
    view = new_view()
    await _issue(pool, "c1")
    await view.status("ca1", "c1")
    polls = view.polls
    await asyncio.gather(*(view.status("ca1", "c1") for _ in range(200)))
    assert view.polls - polls <= 2  # the one under way when they arrived, then one for all of them


async def test_a_ca_compromise_answers_revoked_for_every_certificate_held(
    pool: asyncpg.Pool, replicas: tuple[StatusView, StatusView]
) -> None:
    await pool.execute(
        "INSERT INTO cas (ca_id, role, cert_der, not_after) VALUES ('ca1', 'issuing', '\\x00', $1)",
        NOW + timedelta(days=365),
    )
    await _issue(pool, "d1")
    view, _ = replicas
    assert await view.status("ca1", "d1") == GOOD
    async with pool.acquire() as conn, conn.transaction():
        await store.apply_compromise(conn, "ca1", NOW)
    status = await view.status("ca1", "d1")
    assert (status.kind, status.reason and status.reason.name) == ("revoked", "ca_compromise")


async def test_unknown_serials_and_other_issuers_are_unknown_and_not_kept(
    pool: asyncpg.Pool, new_view: Callable[..., StatusView]
) -> None:
    view = new_view()
    await _issue(pool, "e1")
    assert await view.status("ca1", "ffff") == UNKNOWN
    assert await view.status("ca2", "e1") == UNKNOWN
    assert len(view) == 1  # e1 only


async def test_changes_are_pruned_once_every_replica_has_had_time_to_see_them(
    pool: asyncpg.Pool, new_view: Callable[..., StatusView]
) -> None:
    view = new_view(keep=timedelta(seconds=0.2))
    await _issue(pool, "f1")
    await view.status("ca1", "f1")
    await _revoke(pool, "f1")
    await view.fresh()  # the poll that sees the revocation's transaction finished
    assert await pool.fetchval("SELECT count(*) FROM status_changes") == 1
    assert await view.prune() == 0  # no poll saw it finished `keep` ago
    pruned = 0
    for _ in range(40):  # a transaction left open anywhere on the server (other tests) delays it
        await asyncio.sleep(0.1)
        await view.fresh()
        pruned += await view.prune()
        if pruned:
            break
    assert pruned == 1
    assert await pool.fetchval("SELECT count(*) FROM status_changes") == 0
    assert (await view.status("ca1", "f1")).kind == "revoked"


async def test_a_replica_that_could_not_poll_for_half_the_keep_time_forgets_what_it_held(
    pool: asyncpg.Pool, new_view: Callable[..., StatusView]
) -> None:
    view = new_view(keep=timedelta(seconds=0.2))
    await _issue(pool, "g1")
    await view.status("ca1", "g1")
    assert len(view) == 1
    await asyncio.sleep(0.15)  # no poll meanwhile (no idle loop started): changes may be pruned unseen
    await view.fresh()
    assert len(view) == 0


async def test_a_ca_created_is_not_a_status_change(pool: asyncpg.Pool) -> None:
    event = CaCreated.model_construct(ca_id="ca9", role="issuing", parent_id=None, not_after=NOW)
    async with pool.acquire() as conn, conn.transaction():
        await store.apply_ca(conn, event, b"\x00")
    assert await pool.fetchval("SELECT count(*) FROM status_changes") == 0


async def test_a_revocation_in_progress_during_a_poll_is_seen_once_committed(
    pool: asyncpg.Pool, replicas: tuple[StatusView, StatusView]
) -> None:
    await _issue(pool, "h1")
    view, _ = replicas
    assert await view.status("ca1", "h1") == GOOD
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await store.apply_revoked(conn, _revoked("h1"))
        await asyncio.sleep(0.01)  # a later transaction commits first, and a poll runs meanwhile
        await _issue(pool, "h2")
        await _revoke(pool, "h2")
        assert (await view.status("ca1", "h2")).kind == "revoked"
        assert await view.status("ca1", "h1") == GOOD  # not committed yet
        await transaction.commit()
    assert (await view.status("ca1", "h1")).kind == "revoked"


async def test_a_failed_poll_fails_the_requests_waiting_on_it_and_the_next_one_polls_again(
    pool: asyncpg.Pool, new_view: Callable[..., StatusView]
) -> None:
    await _issue(pool, "i1")
    broken = {"on": True}

    class FlakyPool:
        def acquire(self) -> Any:
            if broken["on"]:
                raise ConnectionRefusedError("the database is down")
            return pool.acquire()

        async def release(self, conn: Any, timeout: float) -> None:
            await pool.release(conn, timeout=timeout)

    view = new_view()
    view._pool = lambda: FlakyPool()  # type: ignore[assignment,return-value]
    with pytest.raises(ConnectionRefusedError):
        await view.status("ca1", "i1")
    broken["on"] = False
    assert await view.status("ca1", "i1") == GOOD


async def test_stopping_fails_the_requests_still_waiting(pool: asyncpg.Pool) -> None:
    view = StatusView(lambda: pool)
    gate = asyncio.Event()
    original = view._poll

    async def slow_poll() -> None:
        await gate.wait()
        await original()

    view._poll = slow_poll  # type: ignore[method-assign]
    waiting = asyncio.create_task(view.fresh())
    await asyncio.sleep(0.01)
    later = asyncio.create_task(view.fresh())  # waits for the next poll
    await asyncio.sleep(0.01)
    await view.stop()
    for task in (waiting, later):
        with pytest.raises(RuntimeError, match="stopped"):
            await task
