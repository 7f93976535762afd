"""Revocation, validation, CRLs, parking of bad events and requests, and audit replay, over real NATS
and Postgres. Requesters revoke with their certificate's key; the operator revokes by order and asks
audit (history, replay)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import nats
import pytest
from cryptography import x509

from harness import CRL_SHARDS, Harness, eventually
from shared.client.sdk import CertbusClient, CertbusError, Rejected
from shared.contract.events import CertificateIssued
from shared.pki.crypto import PrivateKey, build_csr, generate_key
from shared.runtime.db import create_pool, drop_schema
from signals import audit_caught_up

EnrollWithKey = Callable[..., Awaitable[tuple[PrivateKey, CertificateIssued]]]  # the `enroll_with_key` fixture


async def test_a_revocation_is_visible_to_status_validate_and_the_next_crl(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, issued = await enroll_with_key("gone.corp.internal")
    async with stack.client() as c:
        assert (await c.validate(issued.cert_pem)).status == "good"
        revoked = await c.revoke(issued.serial, "keyCompromise", key=key)
        assert revoked.serial == issued.serial
        assert (await c.status(issued.serial)).status == "revoked"
        verdict = await c.validate(issued.cert_pem)
        assert (verdict.status, verdict.reason) == ("revoked", "keyCompromise")

        await eventually(lambda: _crl_lists(c, issued.serial), timeout=5)


async def test_revoking_twice_or_an_unknown_serial_is_rejected(stack: Harness) -> None:
    issued = await stack.enroll("twice.corp.internal")
    async with stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "superseded", "tests")
        with pytest.raises(Rejected) as again:
            await c.revoke_as_operator(issued.serial, "superseded", "tests")
        with pytest.raises(Rejected) as unknown:
            await c.revoke_as_operator("abcdef0123", "superseded", "tests")
        with pytest.raises(Rejected) as hold:
            await c.revoke_as_operator(issued.serial, "certificateHold", "tests")
    assert again.value.reasons[0].code == "already_revoked"
    assert unknown.value.reasons[0].code == "serial_unknown"
    assert hold.value.reasons[0].code == "reason_invalid"


async def test_a_late_issued_event_never_turns_a_revoked_certificate_good(stack: Harness) -> None:
    issued = await stack.enroll("late.corp.internal")
    async with stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "tests")
        # Signing's issued event again, under a new id (a late redelivery from signing's outbox).
        stale = issued.model_copy(update={"event_id": uuid.uuid4()})
        await stack.publish_raw(stale.subject(stack.root), stale.model_dump_json().encode())
        pool = await stack.db()
        await eventually(lambda: pool.fetchval("SELECT 1 FROM validation.tracking WHERE event_id = $1", stale.event_id))
        assert (await c.status(issued.serial)).status == "revoked"


async def test_a_malformed_event_is_parked_with_its_reason_and_the_consumer_goes_on(stack: Harness) -> None:
    """A requester cannot put junk on the log at all (the server refuses it); junk from the one
    identity that may publish there (enrollment, gone wrong) is parked by its consumer with the
    reason, and the consumer goes on."""
    nc = await stack.connect("mallory")
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await stack.js(nc, "mallory").publish(
                f"{stack.root}.cert.bogus.requested", b"{not json", stream=stack.common["stream"], timeout=1
            )
    finally:
        await nc.close()
    assert await stack.stream_messages(f"{stack.root}.cert.bogus.requested") == []
    await stack.publish_raw(f"{stack.root}.cert.bogus.requested", b"{not json")
    await stack.publish_raw(
        f"{stack.root}.cert.bogus2.requested", b'{"event_type": "EnrollmentRequested", "aggregate_id": "bogus2"}'
    )
    pool = await stack.db()

    rows = await eventually(lambda: _parked(pool, "enrollment-requests", 2))
    reasons = {r["subject"].rsplit(".", 2)[1]: r["reason"] for r in rows}
    assert reasons.keys() == {"bogus", "bogus2"}
    assert reasons["bogus"].startswith("malformed: not JSON"), reasons
    assert "ValidationError" in reasons["bogus2"], reasons
    issued = await stack.enroll("after.corp.internal")  # the consumer is not blocked
    assert issued.serial
    archived = await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM audit.archive WHERE event_type = 'malformed'")
    )
    assert archived == 1  # audit keeps even what nobody else can read


async def test_a_malformed_request_is_refused_at_admission_with_its_reason_and_admission_goes_on(
    stack: Harness,
) -> None:
    """A requester's junk never reaches the log: enrollment refuses it at admission, parks it with the
    reason, answers a request whose id it can read with `request_malformed`, and admits what follows."""
    ingress = stack.common["ingress_root"]
    await stack.publish_raw(f"{ingress}.tests.enroll", b"{not json")
    await stack.publish_raw(
        f"{ingress}.tests.enroll", b'{"event_type": "EnrollmentRequested", "aggregate_id": "bogus3"}'
    )
    pool = await stack.db()

    rows = await eventually(lambda: _parked(pool, "enrollment-admit", 2))
    assert [r["subject"] for r in rows] == [f"{ingress}.tests.enroll"] * 2
    assert all(r["reason"].startswith("request_malformed: ") for r in rows), rows
    rejected = await eventually(lambda: stack.stream_messages(f"{stack.root}.cert.bogus3.rejected"))
    rejection = json.loads(rejected[0].data)
    assert [r["code"] for r in rejection["reasons"]] == ["request_malformed"]
    assert (rejection["requester"], rejection["producer"]) == ("tests", "enrollment")
    assert await stack.stream_messages(f"{stack.root}.cert.*.requested") == [], "junk was admitted onto the log"
    issued = await stack.enroll("after-junk.corp.internal")  # admission is not blocked
    assert issued.serial


async def test_a_requester_fetches_the_certificate_issued_for_its_request_and_nothing_else(stack: Harness) -> None:
    issued = await stack.enroll("fetch.corp.internal")
    async with stack.client() as c:
        fetched = await eventually(lambda: c.issued_certificate(issued.aggregate_id))
        assert fetched == issued
        assert await c.issued_certificate(str(uuid.uuid4())) is None


async def test_audit_history_lists_the_lifecycle_in_log_order(stack: Harness, enroll_with_key: EnrollWithKey) -> None:
    key, issued = await enroll_with_key("hist.corp.internal")
    async with stack.client() as holder:
        await holder.revoke(issued.serial, "cessationOfOperation", key=key)
    async with stack.client("operator") as c:

        async def history() -> list[str]:
            types = [e.event_type for e in (await c.history(issued.serial)).events]
            return types if "CertificateRevoked" in types else []

        assert await eventually(history) == [
            "EnrollmentRequested",
            "EnrollmentApproved",
            "CertificateIssued",
            "RevocationRequested",
            "CertificateRevoked",
        ]


async def test_dropping_the_audit_tables_and_replaying_gives_the_same_history(stack: Harness) -> None:
    issued = await stack.enroll("replay.corp.internal")
    async with stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "superseded", "tests")
        await eventually(lambda: _crl_lists(c, issued.serial))  # the last event this test causes
        await audit_caught_up(stack)  # archived, and nothing left to sign: the log stands still
        before = await c.history(issued.serial)
        head_before = await (await stack.db()).fetchrow("SELECT seq, hash FROM audit.chain_head")
    await stack.stop("audit")
    pool = await create_pool(stack.database_url, "audit")
    try:
        await drop_schema(pool, "audit")
    finally:
        await pool.close()
    await stack.start("audit")
    async with stack.client("operator") as c:
        assert (await c.history(issued.serial)).events == []
        answer = await c.replay()
        after = await c.history(issued.serial)
    assert not answer.equal and answer.previous_events == 0
    assert answer.events == head_before["seq"]
    assert answer.head_hash == bytes(head_before["hash"]).hex()
    assert after == before


async def test_replay_of_an_intact_archive_reports_equal(stack: Harness) -> None:
    await stack.enroll("intact.corp.internal")
    await eventually(lambda: _archived_all(stack))
    async with stack.client("operator") as c:
        answer = await c.replay()
    assert answer.equal
    assert answer.previous_head_hash == answer.head_hash


async def test_replay_of_a_tampered_archive_adopts_every_row_indexed(stack: Harness) -> None:
    """A replay of an archive that reaches the log's end compares without indexing; when that finds
    a change it replays again indexing, so the rows it adopts serve histories as before."""
    issued = await stack.enroll("tampered.corp.internal")
    await audit_caught_up(stack)
    pool = await stack.db()
    async with stack.client("operator") as c:
        before = await c.history(issued.serial)
        changed = before.events[-1].stream_seq
        await pool.execute("UPDATE audit.archive SET raw = raw || '\\x20'::bytea WHERE stream_seq = $1", changed)
        answer = await c.replay()
        after = await c.history(issued.serial)
    assert not answer.equal and answer.events == answer.last_seq
    assert after == before
    assert await pool.fetchval("SELECT count(*) FROM audit.archive WHERE event_type = ''") == 0


async def test_replay_of_a_log_with_a_gap_rebuilds_it_indexed(stack: Harness) -> None:
    """A message deleted from the stream leaves a gap that a replay confirming the archive cannot
    stand for: it replays indexing instead, and the chain stops before the gap, as it always has."""
    await stack.enroll("gap.corp.internal")
    await audit_caught_up(stack)
    admin = await stack.connect("admin")
    try:
        js = stack.js(admin)
        gone = (await js.stream_info(stack.common["stream"])).state.last_seq // 2
        await js.delete_msg(stack.common["stream"], gone)
    finally:
        await admin.close()
    async with stack.client("operator") as c:
        answer = await c.replay()
    assert not answer.equal and answer.last_seq == gone - 1
    pool = await stack.db()
    assert await pool.fetchval("SELECT count(*) FROM audit.archive WHERE stream_seq = $1", gone) == 0
    assert await pool.fetchval("SELECT count(*) FROM audit.archive WHERE event_type = ''") == 0


async def _archived_all(h: Harness) -> bool:
    nc = await h.connect("admin")
    try:
        last = (await h.js(nc).stream_info(h.common["stream"])).state.last_seq
    finally:
        await nc.close()
    pool = await h.db()
    return bool(await pool.fetchval("SELECT seq FROM audit.chain_head") == last)


async def _crl_lists(c: CertbusClient, serial: str) -> bool:
    try:
        der = base64.b64decode((await c.crl(shard=int(serial, 16) % CRL_SHARDS)).der_b64)
    except CertbusError:  # no CRL yet
        return False
    return x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


async def test_history_finds_a_revocation_requested_with_an_upper_case_serial(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, issued = await enroll_with_key("upper.corp.internal")
    async with stack.client() as holder:
        await holder.revoke("0x" + issued.serial.upper(), "superseded", key=key)
    async with stack.client("operator") as c:

        async def history() -> list[str]:
            types = [e.event_type for e in (await c.history(issued.serial.upper())).events]
            return types if "CertificateRevoked" in types else []

        assert "RevocationRequested" in await eventually(history)


async def test_a_key_compromise_revocation_blocks_the_key_for_future_enrollments(stack: Harness) -> None:
    key = generate_key("ec-p256")
    csr = build_csr(key, ["leak.corp.internal"]).decode()
    async with stack.client() as c:
        issued = await c.enroll(csr, stack.token("leak.corp.internal"))
        await c.revoke(issued.serial, "keyCompromise", key=key)

        # The revocation is on the log before this request, and enrollment applies the log in order
        # (the revocation blocks the key in its tables): refused the first time, without waiting.
        with pytest.raises(Rejected) as refused:
            await c.enroll(csr, stack.token("leak.corp.internal"))
        assert [r.code for r in refused.value.reasons] == ["key_blocked"]
        pool = await stack.db()
        reason = await pool.fetchval(
            "SELECT reason FROM enrollment.blocked_keys WHERE spki_sha256 = $1", issued.spki_sha256
        )
        assert reason is not None and issued.serial in reason
        # Enrollment blocks the key itself: no one publishes a KeyBlocked for a revocation anymore.
        assert await stack.stream_messages(f"{stack.root}.key.*.blocked") == []
        # Another reason does not block the key.
        other = generate_key("ec-p256")
        again = await c.enroll(build_csr(other, ["ok.corp.internal"]).decode(), stack.token("ok.corp.internal"))
        await c.revoke(again.serial, "superseded", key=other)
        await c.enroll(build_csr(other, ["ok.corp.internal"]).decode(), stack.token("ok.corp.internal"))


async def _parked(pool: asyncpg.Pool, consumer: str, count: int) -> list[asyncpg.Record]:
    """What enrollment's `consumer` parked, once it parked `count` messages (else nothing yet)."""
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT subject, reason FROM enrollment.parked WHERE consumer = $1 ORDER BY id", consumer
    )
    return rows if len(rows) == count else []
