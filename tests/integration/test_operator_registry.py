"""The operators' registry in a service's schema, on a real PostgreSQL: a command at log position S is
judged by the registry as it was just before S, whichever of the service's consumers of operator
commands reads it and however far another consumer of that service has read (signing reads the
ceremony's commands in a consumer of their own, beside its approvals)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from shared.contract.events import OperatorCommand, OperatorRemoved, QuorumSet, RootCaCreated
from shared.pki.crypto import generate_key, spki_der
from shared.trust import operators

NOW = datetime(2026, 12, 1, tzinfo=UTC)
MIGRATIONS = Path(__file__).resolve().parents[2] / "shared" / "runtime" / "migrations"
ALICE, BOB = generate_key("ed25519"), generate_key("ec-p256")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection whose search path is a schema of its own holding the registry's tables."""
    schema = f"registry_{uuid.uuid4().hex[:8]}"
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
        for name in ("000_runtime.sql", "002_operators.sql", "007_operators_history.sql"):
            await connection.execute((MIGRATIONS / name).read_text())
        yield connection
    finally:
        await connection.execute(f"DROP SCHEMA {schema} CASCADE")
        await connection.close()


def _quorum(kind: str, required: int) -> OperatorCommand:
    command = QuorumSet.first(kind, producer="operator", at=NOW, correlation_id="q", required=required, set_by="alice")
    return operators.sign(command, "alice", ALICE)


def _root(*signers: str) -> OperatorCommand:
    command: OperatorCommand = RootCaCreated.first(
        "r00t", producer="operator", at=NOW, correlation_id="c", ca_id="r00t", subject_dn="CN=r", cert_pem="-",
        not_before=NOW, not_after=NOW, spki_sha256="0" * 64, created_by="alice",
    )  # fmt: skip
    for name in signers:
        command = operators.sign(command, name, {"alice": ALICE, "bob": BOB}[name])
    return command


async def _judged(conn: asyncpg.Connection, command: OperatorCommand, seq: int) -> tuple[str, ...] | str:
    """Its signers, or why it is refused (in a transaction rolled back either way: a judgement only)."""
    tx = conn.transaction()
    await tx.start()
    try:
        return await operators.authorise(conn, command, seq)
    except operators.NotAuthorised as refused:
        return str(refused)
    finally:
        await tx.rollback()


async def test_each_consumer_judges_a_command_by_the_registry_just_before_it(conn: asyncpg.Connection) -> None:
    bob = operators.sign(operators.registration("bob", BOB, "alice", NOW), "alice", ALICE)
    removal = operators.sign(
        OperatorRemoved.first("bob", producer="operator", at=NOW, correlation_id="rm", removed_by="alice"),
        "alice",
        ALICE,
    )
    log = [
        (1, operators.registration("alice", ALICE, "alice", NOW)),  # the genesis
        (2, bob),
        (3, _quorum("ca_ceremony", 2)),
        (5, _quorum("ca_ceremony", 1)),
        (6, removal),
    ]
    # The first consumer reads the registry's commands: each is accepted and recorded.
    for seq, command in log:
        async with conn.transaction():
            assert await operators.authorise(conn, command, seq) == ("alice",)
    # A second consumer of the same service reads them again: each is judged as the first judged it
    # (the genesis is still the genesis), and nothing is recorded twice.
    for seq, command in log:
        async with conn.transaction():
            assert await operators.authorise(conn, command, seq) == ("alice",)
    assert await conn.fetchval("SELECT count(*) FROM operators") == 2
    assert await conn.fetchval("SELECT count(*) FROM quorums") == 2

    # Lagging behind, that consumer judges a ceremony command at position 4: bob was registered and
    # two signatures were needed then, whatever the registry says from position 5 on.
    assert await _judged(conn, _root("alice", "bob"), 4) == ("alice", "bob")
    assert "needs 2 distinct operators' signatures, it has 1" in str(await _judged(conn, _root("alice"), 4))
    # At position 7 one signature is enough, and bob's no longer counts.
    assert await _judged(conn, _root("alice"), 7) == ("alice",)
    assert "'bob' is not a registered operator" in str(await _judged(conn, _root("bob"), 7))
    # Before alice's registration there is no operator at all: only a genesis could be accepted.
    assert "is not a registered operator" in str(await _judged(conn, _root("alice"), 1))


async def test_an_operator_registered_again_signs_with_its_new_key_from_that_position_on(
    conn: asyncpg.Connection,
) -> None:
    new_alice = generate_key("ed25519")
    rekey = operators.sign(operators.registration("alice", new_alice, "alice", NOW), "alice", ALICE)
    async with conn.transaction():
        await operators.authorise(conn, operators.registration("alice", ALICE, "alice", NOW), 1)
    async with conn.transaction():
        await operators.authorise(conn, rekey, 2)
    signed_new = operators.sign(_root(), "alice", new_alice)
    assert await _judged(conn, _root("alice"), 2) == ("alice",)  # at 2, the old key still counted
    assert await _judged(conn, signed_new, 3) == ("alice",)
    assert "signature does not verify" in str(await _judged(conn, _root("alice"), 3))


async def test_a_consumer_new_on_a_schema_from_before_the_history_brings_no_removed_operator_back(
    database_url: str,
) -> None:
    """A registry written before migration 007 kept no removed operator: a consumer that reads the
    log from the start after it (signing's ceremony consumer, on an upgrade) must not record their
    registrations again."""
    schema = f"registry_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}; SET search_path TO {schema}")
        await conn.execute((MIGRATIONS / "000_runtime.sql").read_text())
        await conn.execute((MIGRATIONS / "002_operators.sql").read_text())
        genesis = operators.registration("alice", ALICE, "alice", NOW)
        bob = operators.sign(operators.registration("bob", BOB, "alice", NOW), "alice", ALICE)
        # What the one consumer had recorded by position 4: alice (at 1); bob, registered at 2 and
        # removed at 3, left no row.
        await conn.execute(
            "INSERT INTO operators (name, public_key, registered_seq) VALUES ('alice', $1, 1)",
            spki_der(ALICE.public_key()),
        )
        # The consumer that applied them tracked positions 1 to 4; an ingress consumer's positions
        # are another stream's, and say nothing of the registry.
        tracked = [("svc-requests", seq) for seq in (1, 2, 3, 4)] + [("svc-admit", 1), ("svc-admit", 90)]
        await conn.executemany(
            "INSERT INTO tracking (consumer, event_id, stream_seq) VALUES ($1, $2, $3)",
            [(consumer, uuid.uuid4(), seq) for consumer, seq in tracked],
        )
        await conn.execute((MIGRATIONS / "007_operators_history.sql").read_text())
        assert await conn.fetchval("SELECT through FROM registry_position") == 4

        # The new consumer reads the log from the start: it judges each command as before, and
        # records none of them again, so bob never comes back, not even for a moment.
        for seq, command in ((1, genesis), (2, bob)):
            async with conn.transaction():
                assert await operators.authorise(conn, command, seq) == ("alice",)
            assert "'bob' is not a registered operator" in str(await _judged(conn, _root("bob"), 5))
        assert await conn.fetchval("SELECT count(*) FROM operators") == 1
        # A command above that position is recorded as usual.
        carol = operators.sign(operators.registration("carol", generate_key("ed25519"), "alice", NOW), "alice", ALICE)
        async with conn.transaction():
            await operators.authorise(conn, carol, 7)
        assert await conn.fetchval("SELECT through FROM registry_position") == 7
        assert await conn.fetchval("SELECT count(*) FROM operators") == 2
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
