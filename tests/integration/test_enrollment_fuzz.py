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
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import Harness
from shared.client import SERVICES, Rejected
from shared.holder import enrollment_request
from shared.profiles import Profile, dns_problem, email_problem, ip_problem, key_problem

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
    async with h.client() as c:
        try:
            issued = await c.enroll(csr_pem, h.token(*_names(csr_pem), profile="fuzz"), "fuzz", timeout=20)
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
    def prop(csr: str) -> None:
        asyncio.run_coroutine_threadsafe(_check_outcome(stack, csr), loop).result(timeout=60)

    await asyncio.to_thread(prop)  # hypothesis drives from a thread; the services run in this loop
    await _still_serving(stack)


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


async def test_mutated_event_payloads_never_break_enrollment(stack: Harness) -> None:
    await stack.apply_profiles(PROFILE)
    loop = asyncio.get_running_loop()
    csr = hostile.csr_for(hostile.new_key(), [f"p.{hostile.SUFFIX}"])
    token = stack.token(f"p.{hostile.SUFFIX}", profile="fuzz")
    base = json.loads(enrollment_request(csr, token, "fuzz", "fuzz").model_dump_json())

    @FUZZ
    @given(payload=st.composite(lambda draw: _mutated_payload(draw, base))())
    def prop(payload: bytes) -> None:
        subject = f"{stack.root}.cert.{uuid.uuid4()}.requested"
        asyncio.run_coroutine_threadsafe(stack.publish_raw(subject, payload), loop).result(timeout=60)

    await asyncio.to_thread(prop)
    await _still_serving(stack)


async def _still_serving(h: Harness) -> None:
    async with h.client() as c:
        for name in SERVICES:
            assert (await c.health(name))["status"] == "ok"
    assert (await h.enroll(f"after.{hostile.SUFFIX}", profile="fuzz")).dns_names == [f"after.{hostile.SUFFIX}"]
