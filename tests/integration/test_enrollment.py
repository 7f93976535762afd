"""Enrollment against real NATS JetStream and PostgreSQL: who may enroll, and what is refused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from clock import TestClock
from harness import Harness, eventually
from shared.client.sdk import Rejected
from shared.contract.events import EnrollmentRequested, utcnow
from shared.pki.crypto import build_csr, generate_key
from shared.pki.holder import enrollment_request
from shared.pki.tokens import prove, split_token


async def refused(h: Harness, csr_pem: str, token: str) -> list[str]:
    async with h.client() as c:
        with pytest.raises(Rejected) as info:
            await c.enroll(csr_pem, token)
    return [r.code for r in info.value.reasons]


async def test_a_valid_token_and_csr_yield_a_certificate(stack: Harness) -> None:
    issued = await stack.enroll("api.corp.internal")
    assert issued.dns_names == ["api.corp.internal"]
    assert int(issued.serial, 16).bit_length() > 64


async def test_a_reused_token_is_rejected(stack: Harness) -> None:
    token = stack.token("a.corp.internal")
    key = generate_key("ec-p256")
    async with stack.client() as c:
        await c.enroll(build_csr(key, ["a.corp.internal"]).decode(), token)
    assert await refused(stack, build_csr(key, ["a.corp.internal"]).decode(), token) == ["token_reused"]


async def test_a_token_signed_by_an_unregistered_key_is_rejected_as_forged(stack: Harness) -> None:
    forged = stack.token("b.corp.internal", key=ed25519.Ed25519PrivateKey.generate())
    csr = build_csr(generate_key("ec-p256"), ["b.corp.internal"]).decode()
    assert await refused(stack, csr, forged) == ["token_forged"]


async def test_a_token_of_an_unknown_provisioner_is_rejected(stack: Harness) -> None:
    token = stack.token("b.corp.internal", provisioner_id="nobody")
    csr = build_csr(generate_key("ec-p256"), ["b.corp.internal"]).decode()
    assert await refused(stack, csr, token) == ["provisioner_unknown"]


async def test_a_malformed_csr_is_rejected_with_a_reason(stack: Harness) -> None:
    codes = await refused(
        stack,
        "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
        stack.token("c.corp.internal"),
    )
    assert codes == ["csr_malformed"]


async def test_a_weak_rsa_key_is_rejected(stack: Harness) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    assert await refused(stack, build_csr(weak, ["d.corp.internal"]).decode(), stack.token("d.corp.internal")) == [
        "key_weak"
    ]


async def test_a_name_outside_the_token_is_rejected(stack: Harness) -> None:
    csr = build_csr(generate_key("ec-p256"), ["e.corp.internal", "evil.example.internal"]).decode()
    assert await refused(stack, csr, stack.token("e.corp.internal")) == ["name_not_allowed"]


async def test_the_ocsp_responder_profile_may_be_enrolled_only_with_validations_provisioner(stack: Harness) -> None:
    """A valid token of another provisioner, for a name and key the profile allows, is still refused:
    the profile names `ocsp-validation` as the only provisioner whose tokens may enroll under it."""
    csr = build_csr(generate_key("ec-p256"), ["validation.ocsp.internal"]).decode()
    token = stack.token("validation.ocsp.internal", profile="ocsp-responder")
    async with stack.client() as c:
        with pytest.raises(Rejected) as info:
            await c.enroll(csr, token, "ocsp-responder")
    assert [r.code for r in info.value.reasons] == ["provisioner_not_allowed"]
    assert "ocsp-validation" in info.value.reasons[0].message


async def test_a_token_copied_from_the_log_cannot_enroll_another_csr(stack: Harness) -> None:
    """The log carries the token's JWT but not its holder key: a reader cannot reuse it."""
    jwt_part, holder = split_token(stack.token("f.corp.internal"))
    request_id = str(uuid.uuid4())
    attacker_csr = build_csr(generate_key("ec-p256"), ["f.corp.internal"])
    victim_csr_der = b"some other csr"
    event = EnrollmentRequested(
        aggregate_id=request_id,
        occurred_at=utcnow(),
        correlation_id=request_id,
        producer="requester",
        csr_pem=attacker_csr.decode(),
        token=jwt_part,
        token_proof=prove(holder, request_id, victim_csr_der),
        requester="attacker",
    )
    async with stack.client() as c:
        await c.publish(event)
    pool = await stack.db()

    async def decided() -> object:
        return await pool.fetchrow("SELECT status, reasons FROM enrollment.requests WHERE request_id = $1", request_id)

    row = await eventually(decided)
    assert row["status"] == "rejected"
    assert [r["code"] for r in json.loads(row["reasons"])] == ["token_proof_invalid"]


async def test_rejections_change_nothing_else(stack: Harness) -> None:
    token = stack.token("g.corp.internal")
    await refused(stack, build_csr(generate_key("ec-p256"), ["other.corp.internal"]).decode(), token)
    pool = await stack.db()
    assert await pool.fetchval("SELECT count(*) FROM signing.issuances") == 0
    assert await pool.fetchval("SELECT count(*) FROM validation.certificates") == 0
    assert await stack.stream_messages(f"{stack.root}.cert.*.issued") == []


async def test_a_token_is_judged_when_the_log_accepted_the_request_not_when_enrollment_got_to_it(
    stack: Harness,
) -> None:
    await stack.stop("enrollment")
    token = stack.token("late.corp.internal", ttl=timedelta(seconds=2))
    request = enrollment_request(build_csr(generate_key("ec-p256"), ["late.corp.internal"]).decode(), token, "tests")
    async with stack.client() as c:
        await c.publish(request)  # accepted while the token is valid; enrollment is down
    late = TestClock()
    late.advance(timedelta(minutes=1))  # the token has expired when enrollment is back
    stack.clocks["enrollment"] = late
    await stack.start("enrollment")
    msgs = await eventually(lambda: stack.stream_messages(f"{stack.root}.cert.{request.aggregate_id}.issued"))
    assert len(msgs) == 1


async def test_a_late_older_policy_event_never_undoes_a_newer_one(stack: Harness) -> None:
    """Replicas and redeliveries can apply events out of log order: the stream sequence decides."""
    from services.enrollment import store

    pool = await stack.db()
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        await conn.execute("SET search_path TO enrollment")
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        await store.set_provisioner_status(conn, "late", "disabled", "rotated", "tests", now, seq=10)
        await store.save_provisioner(conn, "late", "late", "PEM", now, "tests", seq=5)  # the older registration
        row = await conn.fetchrow("SELECT status, public_key_pem FROM provisioners WHERE provisioner_id = 'late'")
        assert row["status"] == "disabled"
        await store.save_provisioner(conn, "late", "late", "PEM2", now, "tests", seq=11)  # a newer one enables
        assert await conn.fetchval("SELECT status FROM provisioners WHERE provisioner_id = 'late'") == "active"
        body = {"name": "p"}
        await store.save_profile(conn, "p", "d2", body, now, "tests", seq=20)
        await store.save_profile(conn, "p", "d1", body, now, "tests", seq=15)
        assert await conn.fetchval("SELECT digest FROM profiles WHERE name = 'p'") == "d2"


async def test_a_request_replaces_only_a_certificate_its_own_requester_obtained(stack: Harness) -> None:
    """`replaces` (ACME's ARI) is authority over another certificate's record: enrollment takes it
    only from the requester NATS authenticated for that certificate, once, for a shared name."""
    old = await stack.enroll("replaced.corp.internal")
    assert old.requester == "tests"

    def request(requester: str, *names: str) -> EnrollmentRequested:
        csr = build_csr(generate_key("ec-p256"), list(names)).decode()
        return enrollment_request(csr, stack.token(*names), requester, replaces=old.serial)

    await stack.identity("other")
    async with stack.client("other") as c:
        with pytest.raises(Rejected) as info:
            await c.submit(request("other", "replaced.corp.internal"), timeout=15)
    assert [r.code for r in info.value.reasons] == ["replaces_not_authorised"]
    async with stack.client() as c:
        with pytest.raises(Rejected) as info:
            await c.submit(request("tests", "unrelated.corp.internal"), timeout=15)
        assert [r.code for r in info.value.reasons] == ["replaces_no_shared_name"]
        issued = await c.submit(request("tests", "replaced.corp.internal", "www.replaced.corp.internal"), timeout=15)
        assert (issued.supersedes, issued.requester) == (old.serial, "tests")

        async def superseded() -> str | None:
            return (await c.status(old.serial)).superseded_by

        assert await eventually(superseded) == issued.serial
        with pytest.raises(Rejected) as info:
            await c.submit(request("tests", "replaced.corp.internal"), timeout=15)
    assert [r.code for r in info.value.reasons] == ["replaces_already_replaced"]
