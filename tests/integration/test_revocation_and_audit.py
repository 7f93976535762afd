"""Revocation, validation, CRLs, parking of bad events and audit replay, over real NATS and Postgres."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import nats
import pytest
from cryptography import x509

from harness import Harness, eventually
from shared.client import CertbusClient, CertbusError, Rejected
from shared.crypto import PrivateKey, build_csr, generate_key
from shared.db import create_pool, drop_schema
from shared.events import CertificateIssued

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
    async with stack.client() as c:
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
    async with stack.client() as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "tests")
        stale = issued.model_copy(update={"event_id": uuid.uuid4()})
        await stack.publish_raw(stale.subject(stack.root), stale.model_dump_json().encode())
        pool = await stack.db()
        await eventually(lambda: pool.fetchval("SELECT 1 FROM validation.tracking WHERE event_id = $1", stale.event_id))
        assert (await c.status(issued.serial)).status == "revoked"


async def test_a_malformed_event_is_parked_with_its_reason_and_the_consumer_goes_on(stack: Harness) -> None:
    await stack.publish_raw(f"{stack.root}.cert.bogus.requested", b"{not json")
    await stack.publish_raw(f"{stack.root}.cert.bogus2.requested", b'{"event_type": "EnrollmentRequested"}')
    pool = await stack.db()

    async def parked() -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await pool.fetch("SELECT subject, reason FROM enrollment.parked ORDER BY id")
        return rows if len(rows) == 2 else []

    rows = await eventually(parked)
    assert sorted(r["subject"].rsplit(".", 2)[1] for r in rows) == ["bogus", "bogus2"]
    assert all("ValidationError" in r["reason"] for r in rows)
    issued = await stack.enroll("after.corp.internal")  # the consumer is not blocked
    assert issued.serial
    archived = await eventually(
        lambda: pool.fetchval("SELECT count(*) FROM audit.archive WHERE event_type = 'malformed'")
    )
    assert archived == 1  # audit keeps even what nobody else can read


async def test_a_requester_fetches_the_certificate_issued_for_its_request_and_nothing_else(stack: Harness) -> None:
    issued = await stack.enroll("fetch.corp.internal")
    async with stack.client() as c:
        fetched = await eventually(lambda: c.issued_certificate(issued.aggregate_id))
        assert fetched == issued
        assert await c.issued_certificate(str(uuid.uuid4())) is None


async def test_audit_history_lists_the_lifecycle_in_log_order(stack: Harness, enroll_with_key: EnrollWithKey) -> None:
    key, issued = await enroll_with_key("hist.corp.internal")
    async with stack.client() as c:
        await c.revoke(issued.serial, "cessationOfOperation", key=key)

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
    async with stack.client() as c:
        await c.revoke_as_operator(issued.serial, "superseded", "tests")
        await eventually(lambda: _crl_lists(c, issued.serial))  # the last event this test causes
        await eventually(lambda: _archived_all(stack))
        before = await c.history(issued.serial)
        head_before = await (await stack.db()).fetchrow("SELECT seq, hash FROM audit.chain_head")
    await stack.stop("audit")
    pool = await create_pool(stack.database_url, "audit")
    try:
        await drop_schema(pool, "audit")
    finally:
        await pool.close()
    await stack.start("audit")
    async with stack.client() as c:
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
    async with stack.client() as c:
        answer = await c.replay()
    assert answer.equal
    assert answer.previous_head_hash == answer.head_hash


async def _archived_all(h: Harness) -> bool:
    nc = await nats.connect(h.nats_url)
    try:
        last = (await nc.jetstream().stream_info(h.common["stream"])).state.last_seq
    finally:
        await nc.close()
    pool = await h.db()
    return bool(await pool.fetchval("SELECT seq FROM audit.chain_head") == last)


async def _crl_lists(c: CertbusClient, serial: str) -> bool:
    try:
        der = base64.b64decode((await c.crl()).der_b64)
    except CertbusError:  # no CRL yet
        return False
    return x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


async def test_history_finds_a_revocation_requested_with_an_upper_case_serial(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, issued = await enroll_with_key("upper.corp.internal")
    async with stack.client() as c:
        await c.revoke("0x" + issued.serial.upper(), "superseded", key=key)

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
        blocked = await eventually(lambda: stack.stream_messages(f"{stack.root}.key.*.blocked"))
        assert json.loads(blocked[0].data)["spki_sha256"] == issued.spki_sha256
        assert json.loads(blocked[0].data)["producer"] == "revocation"

        # The block is on the log before this request (same transaction as the revocation), and
        # enrollment applies the log in order: refused the first time.
        with pytest.raises(Rejected) as refused:
            await c.enroll(csr, stack.token("leak.corp.internal"))
        assert [r.code for r in refused.value.reasons] == ["key_blocked"]
        # Another reason does not block the key.
        other = generate_key("ec-p256")
        again = await c.enroll(build_csr(other, ["ok.corp.internal"]).decode(), stack.token("ok.corp.internal"))
        await c.revoke(again.serial, "superseded", key=other)
        await c.enroll(build_csr(other, ["ok.corp.internal"]).decode(), stack.token("ok.corp.internal"))
