"""Hostile and broken enrollment input through the real services: every case is rejected with its
own reason code, nothing is issued for any of them, and every service keeps running."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import hostile
import nats.js.errors
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from harness import Harness, eventually
from shared.client.sdk import SERVICES, Rejected, UnknownRequest
from shared.contract.events import (
    EnrollmentRejected,
    KeyBlocked,
    ProvisionerDisabled,
    ProvisionerRegistered,
    parse_event,
    utcnow,
)
from shared.contract.queries import RequestDetail
from shared.pki.crypto import spki_sha256
from shared.pki.holder import enrollment_request
from shared.pki.tokens import create_token

SUFFIX = "hostile.internal"
NAMES = (f"app.{SUFFIX}",)


@dataclass(frozen=True)
class Case:
    """One hostile request: its CSR, the token it carries, what it asks for, the code expected."""

    name: str
    csr: Callable[[], str]
    expected: str
    token_names: tuple[str, ...] = NAMES
    profile: str = "tls-server"
    token_profile: str = "tls-server"
    validity_days: int | None = None
    token: Callable[[Harness, tuple[str, ...]], str] | None = None


BLOCKED_KEY = ec.generate_private_key(ec.SECP256R1())
ROGUE_KEY = ed25519.Ed25519PrivateKey.generate()


def _good() -> str:
    return hostile.csr_for(hostile.new_key(), NAMES)


def _expired(h: Harness, names: tuple[str, ...]) -> str:
    return create_token(h.provisioner_key, "default", list(names), utcnow() - timedelta(hours=2), timedelta(hours=1))


def _too_long_lived(h: Harness, names: tuple[str, ...]) -> str:
    return create_token(h.provisioner_key, "default", list(names), utcnow(), timedelta(hours=2))


def _rogue_signed(h: Harness, names: tuple[str, ...]) -> str:
    return create_token(ROGUE_KEY, "default", list(names), utcnow(), timedelta(minutes=5))


def _unknown_provisioner(h: Harness, names: tuple[str, ...]) -> str:
    return create_token(ROGUE_KEY, "nobody", list(names), utcnow(), timedelta(minutes=5))


def _disabled_provisioner(h: Harness, names: tuple[str, ...]) -> str:
    return create_token(ROGUE_KEY, "retired", list(names), utcnow(), timedelta(minutes=5))


def _other_names(h: Harness, names: tuple[str, ...]) -> str:
    return h.token(f"other.{SUFFIX}")


CASES = [
    Case("garbage bytes", lambda: hostile.garbage_bytes(), "csr_malformed"),
    Case("truncated PEM", lambda: hostile.truncated_pem(_good()), "csr_malformed"),
    Case("CSR with a bad signature", lambda: hostile.bad_signature(NAMES), "csr_signature_invalid"),
    Case("RSA-1024", lambda: hostile.rsa_1024(NAMES), "key_weak"),
    Case("unsupported curve secp256k1", lambda: hostile.unsupported_curve(NAMES), "key_unsupported"),
    Case("a point not on the curve", lambda: hostile.point_not_on_curve(NAMES), "key_unsupported"),
    Case("an unknown key algorithm", lambda: hostile.unknown_key_algorithm(NAMES), "key_unsupported"),
    Case("a blocked key", lambda: hostile.csr_for(BLOCKED_KEY, NAMES), "key_blocked"),
    Case(
        "a name outside the profile",
        lambda: hostile.csr_for(hostile.new_key(), ["www.example.com"]),
        "name_not_in_profile",
        token_names=("www.example.com",),
    ),
    Case(
        "a wildcard where not allowed",
        lambda: hostile.wildcard([f"*.{SUFFIX}"]),
        "wildcard_not_allowed",
        token_names=(f"*.{SUFFIX}",),
    ),
    Case(
        "an IP SAN where not allowed",
        lambda: hostile.ip_san(NAMES, ["10.0.0.1"]),
        "ip_not_allowed",
        token_names=(*NAMES, "10.0.0.1"),
    ),
    Case(
        "an email where not allowed",
        lambda: hostile.email_san(NAMES, [f"ops@{SUFFIX}"]),
        "email_not_allowed",
        token_names=(*NAMES, f"ops@{SUFFIX}"),
    ),
    # 150 names: over the profile's 100 (a CSR of 1,000 is over the request bound; see below).
    Case("150 SANs", lambda: hostile.many_sans(150, SUFFIX), "too_many_names"),
    Case(
        "a 300-character label",
        lambda: hostile.long_label(300, SUFFIX),
        "name_invalid",
        token_names=("x" * 300 + f".{SUFFIX}",),
    ),
    Case(
        "a NUL in a name",
        lambda: hostile.nul_in_name([f"good.{SUFFIX}\x00.evil.test"]),
        "name_invalid",
        token_names=(f"good.{SUFFIX}\x00.evil.test",),
    ),
    Case(
        "a control character in a name",
        lambda: hostile.control_char_in_name([f"a\tb.{SUFFIX}"]),
        "name_invalid",
        token_names=(f"a\tb.{SUFFIX}",),
    ),
    Case(
        "a Unicode U-label",
        lambda: hostile.u_label([f"bücher.{SUFFIX}"]),
        "name_invalid",
        token_names=(f"bücher.{SUFFIX}",),
    ),
    Case(
        "a name with a trailing dot",
        lambda: hostile.trailing_dot([f"app.{SUFFIX}."]),
        "name_invalid",
        token_names=(f"app.{SUFFIX}.",),
    ),
    Case("a non-UTF-8 name", lambda: hostile.non_utf8_name([f"b\xfccher.{SUFFIX}".encode("latin-1")]), "csr_malformed"),
    Case("no SAN at all", lambda: hostile.empty_san(), "names_missing"),
    Case("a CN not among the SANs", lambda: hostile.cn_not_in_sans(NAMES, f"other.{SUFFIX}"), "cn_not_in_sans"),
    Case("a CA extension requested", lambda: hostile.ca_extension_requested(NAMES), "extension_not_allowed"),
    Case("an unknown extension requested", lambda: hostile.unknown_extension_requested(NAMES), "extension_not_allowed"),
    Case("a bad CSR version", lambda: hostile.bad_version(NAMES), "csr_malformed"),
    Case("a validity over the maximum", _good, "validity_too_long", validity_days=3650),
    Case("an unknown profile", _good, "profile_unknown", profile="no-such-profile", token_profile="no-such-profile"),
    Case("a token for another profile", _good, "profile_not_allowed", token_profile="tls-client"),
    Case("an expired token", _good, "token_expired", token=_expired),
    Case("a token living over an hour", _good, "token_lifetime_too_long", token=_too_long_lived),
    Case("a token for other names", _good, "name_not_allowed", token=_other_names),
    Case("a token signed by an unknown key", _good, "token_forged", token=_rogue_signed),
    Case("a token of an unknown provisioner", _good, "provisioner_unknown", token=_unknown_provisioner),
    Case("a token from a disabled provisioner", _good, "provisioner_disabled", token=_disabled_provisioner),
]


async def _submit(h: Harness, case: Case) -> list[str]:
    if case.token is not None:
        token = case.token(h, case.token_names)
    else:
        token = h.token(*case.token_names, profile=case.token_profile)
    async with h.client() as c:
        try:
            issued = await c.enroll(case.csr(), token, case.profile, timeout=30, validity_days=case.validity_days)
        except Rejected as exc:
            return [r.code for r in exc.reasons]
    return [f"ISSUED {issued.serial}"]


async def _policy(h: Harness) -> None:
    """A blocked key and a disabled provisioner, on the log before the requests."""
    pem = ROGUE_KEY.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    spki = spki_sha256(BLOCKED_KEY.public_key())
    common = {"occurred_at": utcnow(), "correlation_id": "tests", "producer": "operator"}
    async with h.client("operator") as c:
        await c.publish(KeyBlocked(aggregate_id=spki, spki_sha256=spki, reason="test", blocked_by="tests", **common))
        await c.publish(
            ProvisionerRegistered(
                aggregate_id="retired", name="retired", public_key_pem=pem, registered_by="t", **common
            )
        )
        await c.publish(ProvisionerDisabled(aggregate_id="retired", reason="rotated", disabled_by="tests", **common))


async def test_hostile_enrollment_input_is_rejected_with_its_reason(stack: Harness) -> None:
    await _policy(stack)
    outcomes = await asyncio.gather(*(_submit(stack, case) for case in CASES))
    wrong = {
        case.name: (case.expected, codes)
        for case, codes in zip(CASES, outcomes, strict=True)
        if case.expected not in codes or any(c.startswith("ISSUED") for c in codes)
    }
    assert not wrong, f"cases not rejected with their code (expected, got): {wrong}"
    assert len(CASES) >= 30
    # Nothing was issued, and every service still answers.
    assert await stack.stream_messages(f"{stack.root}.cert.*.issued") == []
    async with stack.client() as c:
        for name in SERVICES:
            assert (await c.health(name))["status"] == "ok"
    # The system still issues a good request afterwards.
    assert (await stack.enroll(f"after.{SUFFIX}")).dns_names == [f"after.{SUFFIX}"]


async def test_a_reused_token_is_rejected(stack: Harness) -> None:
    token = stack.token(*NAMES)
    async with stack.client() as c:
        await c.enroll(_good(), token)
        try:
            await c.enroll(_good(), token)
        except Rejected as exc:
            assert [r.code for r in exc.reasons] == ["token_reused"]
        else:
            raise AssertionError("a token was used twice")


async def test_a_token_copied_from_the_log_cannot_be_reused_for_another_csr(stack: Harness) -> None:
    token = stack.token(*NAMES)
    jwt_only = token.rpartition("~")[0] + "~" + stack.token(*NAMES).rpartition("~")[2]  # someone else's holder key
    async with stack.client() as c:
        try:
            await c.enroll(_good(), jwt_only)
        except Rejected as exc:
            assert [r.code for r in exc.reasons] == ["token_proof_invalid"]
        else:
            raise AssertionError("a token without its holder key enrolled")


async def _rejection(h: Harness, request_id: str) -> EnrollmentRejected:
    [msg] = await eventually(lambda: h.stream_messages(f"{h.root}.cert.{request_id}.rejected"), timeout=20)
    rejected = parse_event(msg.data)
    assert isinstance(rejected, EnrollmentRejected)
    return rejected


async def _recorded(h: Harness, request_id: str) -> RequestDetail | None:
    async with h.client() as c:
        try:
            return await c.request(request_id)
        except UnknownRequest:
            return None


async def test_a_request_the_sdk_cannot_build_is_refused_at_admission(stack: Harness) -> None:
    """A CSR of 1,000 names is over the 32 KiB a request's CSR may have: the SDK refuses to build
    it; put raw on the requester's own ingress subject, admission refuses it (`request_malformed`)
    with a rejection on the log, and nothing reaches enrollment's judgement or signing."""
    huge = hostile.many_sans(1000, SUFFIX)
    assert len(huge) > 32 * 1024
    token = stack.token(*NAMES)
    with pytest.raises(ValidationError):
        enrollment_request(huge, token, "tests")

    body = json.loads(enrollment_request(_good(), token, "tests").model_dump_json())
    request_id = body["aggregate_id"]
    body.update(csr_pem=huge, requester="someone-else")
    await stack.publish_raw(f"{stack.common['ingress_root']}.tests.enroll", json.dumps(body).encode())
    rejected = await _rejection(stack, request_id)
    assert [r.code for r in rejected.reasons] == ["request_malformed"]
    assert "csr_pem" in rejected.reasons[0].message
    assert (rejected.requester, rejected.producer) == ("tests", "enrollment")  # who sent it, as NATS said
    detail = await eventually(lambda: _recorded(stack, request_id))  # enrollment keeps the refusal
    assert (detail.status, detail.requester) == ("rejected", "tests")
    assert await stack.stream_messages(f"{stack.root}.cert.{request_id}.requested") == []

    # Over the 64 KiB a request may have at all: the ingress stream itself refuses to take it.
    oversize = dict(body, aggregate_id=str(uuid.uuid4()), csr_pem=huge + huge)
    with pytest.raises(nats.js.errors.APIError):
        await stack.publish_raw(f"{stack.common['ingress_root']}.tests.enroll", json.dumps(oversize).encode())
    assert await stack.stream_messages(f"{stack.root}.cert.{oversize['aggregate_id']}.>") == []
    # Nothing was issued, and enrollment still admits and answers a good request.
    assert await stack.stream_messages(f"{stack.root}.cert.*.issued") == []
    assert (await stack.enroll(f"after.{SUFFIX}")).dns_names == [f"after.{SUFFIX}"]


async def test_junk_on_the_ingress_subject_is_refused_at_admission_with_its_reason(stack: Harness) -> None:
    """What only a hand-made message can be: another event type on the enroll subject, a body that is
    not an event, or not JSON at all. Each is refused (`request_malformed`), never admitted."""
    ingress = f"{stack.common['ingress_root']}.tests.enroll"
    renewal_id, junk_id = str(uuid.uuid4()), str(uuid.uuid4())
    wrong_type = json.loads(enrollment_request(_good(), stack.token(*NAMES), "tests").model_dump_json())
    wrong_type.update(aggregate_id=renewal_id, event_type="CertificateIssued")
    await stack.publish_raw(ingress, json.dumps(wrong_type).encode())
    await stack.publish_raw(ingress, json.dumps({"aggregate_id": junk_id, "csr_pem": 42}).encode())
    await stack.publish_raw(ingress, b"\xff\x00 not json {")
    for request_id in (renewal_id, junk_id):
        rejected = await _rejection(stack, request_id)
        assert [r.code for r in rejected.reasons] == ["request_malformed"], rejected.reasons
        assert await stack.stream_messages(f"{stack.root}.cert.{request_id}.requested") == []
    pool = await stack.db()

    async def parked() -> bool:
        n = await pool.fetchval("SELECT count(*) FROM enrollment.parked WHERE consumer = 'enrollment-admit'")
        return bool(n >= 3)

    await eventually(parked)
    assert await stack.stream_messages(f"{stack.root}.cert.*.issued") == []
    assert (await stack.enroll(f"after.{SUFFIX}")).dns_names == [f"after.{SUFFIX}"]


async def test_a_token_sent_twice_in_one_burst_is_spent_once(stack: Harness) -> None:
    """Requests that arrive together are decided together (one statement per table for the group):
    a token used by two of them is still spent by exactly one, as it would be one by one."""
    token = stack.token(*NAMES)

    async def enroll(t: str) -> str:
        async with stack.client() as c:
            try:
                await c.enroll(_good(), t)
            except Rejected as exc:
                return ",".join(r.code for r in exc.reasons)
            return "issued"

    tokens = [token, *(stack.token(*NAMES) for _ in range(10)), token]
    outcomes = await asyncio.gather(*(enroll(t) for t in tokens))
    assert sorted(outcomes) == ["issued"] * 11 + ["token_reused"], outcomes
