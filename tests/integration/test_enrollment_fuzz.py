"""Random and mutated CSRs and event payloads fed to the running enrollment service (hypothesis).

Properties: the services never crash or stall (every request gets an answer, and a good request
is still issued afterwards); nothing is ever issued outside the profile. The examples share one
deployment, so the properties also hold for a service that has already seen hostile input.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import hostile
import nats.js.errors
import pytest
from cryptography import x509
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harness import Harness, eventually
from shared.client.sdk import SERVICES, Rejected
from shared.contract.bounds import MAX_REQUEST_BYTES
from shared.contract.events import EnrollmentRejected, parse_event
from shared.contract.profiles import Profile, dns_problem, email_problem, ip_problem, key_problem
from shared.pki.holder import enrollment_request

PROFILE = Profile(
    name="fuzz",
    usage="both",
    dns_suffixes=[hostile.SUFFIX],
    allow_ip_sans=True,
    ip_ranges=["10.0.0.0/8", "::/1"],
    allow_emails=True,
    max_sans=8,
    max_validity_days=30,
    default_validity_days=7,
)
BASE = hostile.csr_for(hostile.process_key(), [f"base.{hostile.SUFFIX}"])
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


def _names(csr_pem: str) -> list[str]:
    """Every name the CSR asks for, if it can be read (so the token allows exactly those)."""
    try:
        san = x509.load_pem_x509_csr(csr_pem.encode()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return [str(getattr(n, "value", n)) for n in san.value] or [f"x.{hostile.SUFFIX}"]
    except Exception:  # hostile input: anything may fail here
        return [f"x.{hostile.SUFFIX}"]


async def _check_outcome(h: Harness, csr_pem: str) -> None:
    token = h.token(*_names(csr_pem), profile="fuzz")
    try:
        request = enrollment_request(csr_pem, token, "tests", "fuzz")
    except ValidationError:
        # Over a request's bounds (a CSR over 32 KiB, a token naming so many names it is over 8 KiB):
        # the SDK cannot even build it, so it is sent by hand, and admission must refuse it.
        await _refused_at_admission(h, csr_pem, token)
        return
    async with h.client() as c:
        try:
            issued = await c.submit(request, timeout=20)
        except Rejected as exc:
            assert exc.reasons and all(r.code and r.message for r in exc.reasons)
            return
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert key_problem(PROFILE, cert.public_key()) is None
    assert len(issued.dns_names) + len(issued.ip_addresses) + len(issued.emails) <= PROFILE.max_sans
    assert all(dns_problem(PROFILE, n) is None for n in issued.dns_names)
    assert all(ip_problem(PROFILE, ip) is None for ip in issued.ip_addresses)
    assert all(email_problem(PROFILE, e) is None for e in issued.emails)
    assert (issued.not_after - issued.not_before).days <= PROFILE.max_validity_days


async def test_random_and_mutated_csrs_never_break_enrollment_nor_issue_outside_the_profile(stack: Harness) -> None:
    await stack.apply_profiles(PROFILE)
    loop = asyncio.get_running_loop()

    @FUZZ
    @given(csr=st.one_of(hostile.mutated_csrs(BASE), hostile.random_name_csrs()))
    @example(csr=hostile.many_sans(300))  # its token is over 8 KiB: refused at admission
    @example(csr=hostile.many_sans(2000))  # over 64 KiB with its token: the ingress stream refuses it
    def prop(csr: str) -> None:
        asyncio.run_coroutine_threadsafe(_check_outcome(stack, csr), loop).result(timeout=60)

    await asyncio.to_thread(prop)  # hypothesis drives from a thread; the services run in this loop
    await _still_serving(stack)


async def _refused_at_admission(h: Harness, csr_pem: str, token: str) -> None:
    """Put a request over the bounds on the requester's ingress subject: the ingress stream refuses
    it if it is over the 64 KiB any request may have, admission otherwise (`request_malformed`)."""
    request_id = str(uuid.uuid4())
    base = enrollment_request(BASE, h.token(f"base.{hostile.SUFFIX}", profile="fuzz"), "tests", "fuzz")
    body = json.loads(base.model_dump_json())
    body.update(aggregate_id=request_id, correlation_id=request_id, csr_pem=csr_pem, token=token.rpartition("~")[0])
    raw = json.dumps(body).encode()
    subject = f"{h.common['ingress_root']}.tests.enroll"
    if len(raw) > MAX_REQUEST_BYTES:
        with pytest.raises(nats.js.errors.APIError):
            await h.publish_raw(subject, raw)
        return
    await h.publish_raw(subject, raw)
    [msg] = await eventually(lambda: h.stream_messages(f"{h.root}.cert.{request_id}.rejected"), timeout=20)
    rejected = parse_event(msg.data)
    assert isinstance(rejected, EnrollmentRejected)
    assert [r.code for r in rejected.reasons] == ["request_malformed"], rejected.reasons


def _mutated_payload(draw: st.DrawFn, base: dict[str, object]) -> bytes:
    data = dict(base)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from([*data, "extra", "event_type", "aggregate_id", "token", "csr_pem"]))
        data[key] = draw(
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=40),
                st.lists(st.text(max_size=5), max_size=3),
                st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
            )
        )
    raw = json.dumps(data).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8)) + raw[cut:]
    return raw


async def test_mutated_request_payloads_never_break_enrollment(stack: Harness) -> None:
    """A requester can send anything on its own ingress subject (never on the log itself): every
    mutation goes through admission, which admits or refuses it, and enrollment keeps serving."""
    await stack.apply_profiles(PROFILE)
    loop = asyncio.get_running_loop()
    csr = hostile.csr_for(hostile.new_key(), [f"p.{hostile.SUFFIX}"])
    token = stack.token(f"p.{hostile.SUFFIX}", profile="fuzz")
    base = json.loads(enrollment_request(csr, token, "fuzz", "fuzz").model_dump_json())
    ingress = f"{stack.common['ingress_root']}.tests.enroll"

    @st.composite
    def payloads(draw: st.DrawFn) -> bytes:
        # A fresh request id each time (unless mutated): a reused id would be dropped as a retry.
        return _mutated_payload(draw, {**base, "aggregate_id": str(draw(st.uuids()))})

    @FUZZ
    @given(payload=payloads())
    def prop(payload: bytes) -> None:
        asyncio.run_coroutine_threadsafe(stack.publish_raw(ingress, payload), loop).result(timeout=60)

    await asyncio.to_thread(prop)
    await eventually(lambda: _admission_drained(stack), timeout=30)  # every message was judged
    await _still_serving(stack)


async def _admission_drained(h: Harness) -> bool:
    nc = await h.connect("admin")
    try:
        info = await h.js(nc).consumer_info(h.common["ingress_stream"], "enrollment-admit")
    finally:
        await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _still_serving(h: Harness) -> None:
    async with h.client() as c:
        for name in SERVICES:
            assert (await c.health(name))["status"] == "ok"
    assert (await h.enroll(f"after.{hostile.SUFFIX}", profile="fuzz")).dns_names == [f"after.{hostile.SUFFIX}"]
