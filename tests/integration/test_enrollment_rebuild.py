"""Enrollment's tables dropped and rebuilt from the log: every request is judged again to rebuild
them, but answered only once (its decision is already on the log, even when an operator's approval
followed it), and the approval-expiry timer does not expire, from stale tables, a request the log
shows an operator approved or the timer already expired."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from nats.js.errors import NotFoundError
from test_policy_cli import _second_operator

from clock import TestClock
from harness import Harness, eventually
from shared.client.sdk import Pending, UnknownRequest
from shared.contract.events import ApprovalGranted, utcnow
from shared.contract.profiles import Profile
from shared.contract.queries import RequestDetail
from shared.pki.crypto import build_csr, generate_key


async def _decisions(h: Harness, request_id: str) -> dict[str, int]:
    counts = {}
    for verb in ("pending", "approved", "rejected"):
        counts[verb] = len(await h.stream_messages(f"{h.root}.cert.{request_id}.{verb}"))
    return counts


async def test_a_rebuild_answers_nothing_again_not_even_an_approved_pending_request_long_past_its_window(
    harness: Harness,
) -> None:
    clock = TestClock(utcnow())
    harness.clocks["enrollment"] = clock
    harness.overrides["enrollment"] = {"pending_sweep_s": 0.1}
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    key = generate_key("ec-p384")
    async with harness.client() as c:
        csr = build_csr(key, ["vault.corp.internal"]).decode()
        try:
            await c.enroll(csr, harness.token("vault.corp.internal", profile="high-assurance"), "high-assurance")
            raise AssertionError("high-assurance waits for an operator")
        except Pending as waiting:
            pending_id = waiting.request_id
    async with harness.client("operator") as operator:
        # The body names "alice"; the operator recorded is whoever signed it.
        approved = await operator.approve(pending_id, "alice")
    plain = await harness.enroll("plain.corp.internal")
    before = {rid: await _decisions(harness, rid) for rid in (pending_id, plain.aggregate_id)}
    assert before[pending_id] == {"pending": 1, "approved": 1, "rejected": 0}
    assert before[plain.aggregate_id] == {"pending": 0, "approved": 1, "rejected": 0}

    await harness.stop("enrollment")
    await harness.forget("enrollment", "enrollment-requests")
    clock.advance(timedelta(hours=100))  # past the 72 h approval window: rebuilt tables see it pending first
    harness.overrides["enrollment"]["fetch_batch"] = 1  # one event per transaction: the sweeper can run between
    await harness.start("enrollment")

    async def rebuilt() -> bool:
        async with harness.client() as c:
            for rid in (pending_id, plain.aggregate_id):
                try:
                    if (await c.request(rid)).status != "issued":
                        return False
                except UnknownRequest:
                    return False
        return True

    await eventually(rebuilt, timeout=30, interval=0.2)
    async with harness.client() as c:
        detail = await c.request(pending_id)
    assert (detail.serial, detail.decided_by) == (approved.serial, "operator")
    for rid, counts in before.items():
        assert await _decisions(harness, rid) == counts  # nothing answered twice, nothing expired


async def _caught_up(h: Harness) -> bool:
    """Whether enrollment has applied everything on the log that it reads, and so published what that
    decided (it acknowledges an event only after)."""
    nc = await h.connect("admin")
    try:
        info = await h.js(nc).consumer_info(h.common["stream"], "enrollment-requests")
    except NotFoundError:
        return False  # not created yet
    finally:
        await nc.close()
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_rebuild_keeps_a_request_the_timer_expired_expired_and_expires_it_only_once(harness: Harness) -> None:
    clock = TestClock(utcnow())
    harness.clocks["enrollment"] = clock
    harness.overrides["enrollment"] = {"pending_sweep_s": 0.1}
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    async with harness.client() as c:
        csr = build_csr(generate_key("ec-p384"), ["vault.corp.internal"]).decode()
        with pytest.raises(Pending) as waiting:
            await c.enroll(csr, harness.token("vault.corp.internal", profile="high-assurance"), "high-assurance")
    request_id = waiting.value.request_id
    clock.advance(timedelta(hours=100))  # past the 72 h approval window: the timer rejects it

    async def expired() -> RequestDetail | None:
        async with harness.client() as c:
            detail = await c.request(request_id)
        return detail if detail.status == "expired" else None

    async def answered_once() -> bool:
        return await _decisions(harness, request_id) == {"pending": 1, "approved": 0, "rejected": 1}

    before = await eventually(expired)
    await eventually(answered_once)
    await harness.stop("enrollment")
    await harness.forget("enrollment", "enrollment-requests")
    clock.advance(timedelta(hours=1))  # an expiry made again by the rebuilt timer would say so in decided_at
    await harness.start("enrollment")

    await eventually(lambda: _caught_up(harness), timeout=30, interval=0.2)
    async with harness.client() as c:
        after = await c.request(request_id)
    assert after == before  # expired, when and by whom it was, with its reason
    assert await answered_once()


async def test_a_rebuild_does_not_ask_again_for_a_request_one_of_its_two_operators_approved(harness: Harness) -> None:
    two_person = Profile(
        name="two-person", usage="server", dns_suffixes=["corp.internal"], require_approval=True, approvals_required=2
    )
    await harness.serve()
    await harness.apply_profiles(two_person)
    carol = await _second_operator(harness, "carol")
    csr = build_csr(generate_key("ec-p256"), ["dual.corp.internal"]).decode()
    async with harness.client() as c:
        with pytest.raises(Pending) as waiting:
            await c.enroll(csr, harness.token("dual.corp.internal", profile="two-person"), "two-person")
    request_id = waiting.value.request_id
    async with harness.client("operator") as operator:
        granted = ApprovalGranted.first(request_id, producer="operator", at=utcnow(), operator="operator", comment="")
        await operator.publish(granted)
    await eventually(lambda: _caught_up(harness))
    async with harness.client() as c:
        before = await c.request(request_id)
    assert before.status == "pending"
    # The last message on the request's subjects is the approval, which answers nothing.
    assert await _decisions(harness, request_id) == {"pending": 1, "approved": 0, "rejected": 0}

    await harness.stop("enrollment")
    await harness.forget("enrollment", "enrollment-requests")
    await harness.start("enrollment")
    await eventually(lambda: _caught_up(harness), timeout=30, interval=0.2)
    async with harness.client() as c:
        after = await c.request(request_id)
    assert (after.status, after.decided_by, after.expires_at) == ("pending", None, before.expires_at)
    assert await _decisions(harness, request_id) == {"pending": 1, "approved": 0, "rejected": 0}

    async with carol:  # the rebuilt tables remember the first approval: the second one issues it
        await carol.approve(request_id, "carol")
    assert await _decisions(harness, request_id) == {"pending": 1, "approved": 1, "rejected": 0}
    [approval] = await harness.stream_messages(f"{harness.root}.cert.{request_id}.approved")
    assert json.loads(approval.data)["approvers"] == ["operator", "carol"]
