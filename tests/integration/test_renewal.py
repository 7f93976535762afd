"""Renewal over the real stack: a renewal request signed with the current key, refusals, and the
schedule's renewal-due / expired / superseded events, sent once each across restarts and a rebuild
of enrollment's schema from the log."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from integration.conftest import EnrollWithKey

from clock import TestClock
from harness import Harness, eventually
from services.enrollment.renewal import renew_at
from shared.base.settings import ServiceSettings
from shared.client.sdk import UnknownRequest
from shared.contract.events import (
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateRenewalDue,
    CertificateSuperseded,
    EnrollmentApproved,
    utcnow,
)
from shared.contract.queries import RequestDetail
from shared.pki.crypto import PrivateKey, build_csr, generate_key
from shared.pki.holder import renewal_request

NAME = "renew.corp.internal"


async def _renew(
    harness: Harness,
    issued: CertificateIssued,
    signer: PrivateKey,
    new_key: PrivateKey | None = None,
    names: list[str] | None = None,
) -> str:
    """Publish a renewal of `issued` for `new_key` (default: a fresh one), signed by `signer`; its request id."""
    csr = build_csr(new_key or generate_key("ec-p256"), names or issued.dns_names).decode()
    request = renewal_request(issued.cert_pem, signer, csr, "tests")
    async with harness.client() as c:
        await c.publish(request)
    return request.aggregate_id


async def _decided(harness: Harness, request_id: str) -> RequestDetail:
    """The request once it is issued or rejected."""

    async def check() -> RequestDetail | None:
        async with harness.client() as c:
            try:
                detail = await c.request(request_id)
            except UnknownRequest:
                return None
        return detail if detail.status in ("issued", "rejected") else None

    result: RequestDetail = await eventually(check, timeout=20)
    return result


async def _refusal(harness: Harness, request_id: str) -> tuple[str, str]:
    detail = await _decided(harness, request_id)
    assert detail.status == "rejected", detail
    assert len(detail.reasons) == 1, detail.reasons
    return detail.reasons[0]["code"], detail.reasons[0]["message"]


async def _events(harness: Harness, cert_id: str, verb: str) -> list[bytes]:
    return [m.data for m in await harness.stream_messages(f"{harness.root}.cert.{cert_id}.{verb}")]


async def _one(harness: Harness, cert_id: str, verb: str, timeout: float = 20) -> bytes:
    found: list[bytes] = await eventually(lambda: _events(harness, cert_id, verb), timeout=timeout)
    assert len(found) == 1, f"{len(found)} {verb} events for {cert_id}"
    return found[0]


# --- renewal requests -----------------------------------------------------------------------------


async def test_a_renewal_is_issued_for_a_new_key_and_supersedes_the_old_certificate(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, old = await enroll_with_key(NAME)
    new_key = generate_key("ec-p256")
    request_id = await _renew(stack, old, key, new_key)
    detail = await _decided(stack, request_id)
    assert detail.status == "issued" and detail.serial is not None, detail.reasons
    assert detail.token_id == f"renewal:{request_id}" and detail.provisioner_id == "default"

    approved = EnrollmentApproved.model_validate_json(await _one(stack, request_id, "approved"))
    assert approved.supersedes == old.serial and approved.dns_names == [NAME]
    issued = CertificateIssued.model_validate_json(await _one(stack, request_id, "issued"))
    assert issued.supersedes == old.serial and issued.spki_sha256 != old.spki_sha256

    superseded = CertificateSuperseded.model_validate_json(await _one(stack, old.aggregate_id, "superseded"))
    assert (superseded.serial, superseded.superseded_by, superseded.superseded_by_id) == (
        old.serial,
        issued.serial,
        request_id,
    )
    assert superseded.not_after == old.not_after and superseded.producer == "enrollment"


async def test_a_renewal_not_signed_by_the_current_key_is_refused(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    _, old = await enroll_with_key(NAME)
    code, _ = await _refusal(stack, await _renew(stack, old, generate_key("ec-p256")))
    assert code == "renewal_proof_invalid"
    assert not await _events(stack, old.aggregate_id, "superseded")


async def test_renewing_a_revoked_certificate_is_refused(stack: Harness, enroll_with_key: EnrollWithKey) -> None:
    key, old = await enroll_with_key(NAME)
    async with stack.client() as c:
        await c.revoke(old.serial, "superseded", key=key)
    code, message = await _refusal(stack, await _renew(stack, old, key))
    assert code == "certificate_revoked" and "superseded" in message


async def test_a_certificate_whose_provisioner_was_disabled_is_not_renewed(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, old = await enroll_with_key(NAME)
    done = await stack.cli("provisioner", "disable", "default", "--reason", "its key leaked")
    assert done.returncode == 0, done.stderr
    code, message = await _refusal(stack, await _renew(stack, old, key))
    assert code == "provisioner_disabled" and "'default'" in message


async def test_renewing_with_the_current_key_or_a_key_certified_before_is_refused(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, old = await enroll_with_key(NAME)
    other_key, _ = await enroll_with_key("other.corp.internal")
    code, message = await _refusal(stack, await _renew(stack, old, key, new_key=key))
    assert code == "key_reused" and "NEW key" in message
    code, _ = await _refusal(stack, await _renew(stack, old, key, new_key=other_key))
    assert code == "key_reused"


async def test_a_certificate_is_renewed_once_and_a_second_renewal_names_the_successor(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, old = await enroll_with_key(NAME)
    first = await _decided(stack, await _renew(stack, old, key))
    assert first.status == "issued"
    code, message = await _refusal(stack, await _renew(stack, old, key))
    assert code == "certificate_superseded" and str(first.serial) in message


async def test_a_renewal_that_changes_the_names_is_refused(stack: Harness, enroll_with_key: EnrollWithKey) -> None:
    key, old = await enroll_with_key(NAME)
    code, message = await _refusal(stack, await _renew(stack, old, key, names=[NAME, "more.corp.internal"]))
    assert code == "names_changed" and "more.corp.internal" in message


async def test_renewing_a_destroyed_certificate_is_refused_and_its_body_is_purged(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    # The destroy flow is revocation's; its event is published here as revocation would publish it.
    key, old = await enroll_with_key(NAME)
    destroyed = CertificateDestroyed(
        aggregate_id=old.aggregate_id,
        occurred_at=utcnow(),
        correlation_id="tests",
        producer="revocation",
        serial=old.serial,
        issuer_id=old.issuer_id,
        fingerprint_sha256=old.fingerprint_sha256,
        destroyed_at=utcnow(),
        destruction_request_id=str(uuid.uuid4()),
        ordered_by="tests",
    )
    await stack.publish_raw(destroyed.subject(stack.root), destroyed.model_dump_json().encode())
    code, _ = await _refusal(stack, await _renew(stack, old, key))
    assert code == "certificate_destroyed"
    pool = await stack.db()
    row = await pool.fetchrow(
        "SELECT c.state, c.spki_der, c.dns_names, c.spki_sha256, r.csr_pem FROM enrollment.certificates c "
        "JOIN enrollment.requests r ON r.request_id = c.cert_id WHERE c.cert_id = $1",
        old.aggregate_id,
    )
    assert row is not None
    assert (row["state"], row["spki_der"], row["dns_names"], row["csr_pem"]) == ("destroyed", None, [], None)
    assert row["spki_sha256"]  # the key's hash is kept: it may never be certified again


async def test_a_renewal_under_a_profile_that_needs_approval_waits_for_an_operator(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, old = await enroll_with_key(NAME)
    csr = build_csr(generate_key("ec-p384"), [NAME]).decode()
    request = renewal_request(old.cert_pem, key, csr, "tests", profile="high-assurance")
    async with stack.client() as c:
        await c.publish(request)
    await _one(stack, request.aggregate_id, "pending")
    async with stack.client("operator") as operator:
        issued = await operator.approve(request.aggregate_id, "ops")
    assert issued.supersedes == old.serial and issued.profile == "high-assurance"
    await _one(stack, old.aggregate_id, "superseded")
    row = await (await stack.db()).fetchrow(
        "SELECT renew_at, provisioner_id FROM enrollment.certificates WHERE cert_id = $1", request.aggregate_id
    )
    assert row is not None and tuple(row) == (None, "default")  # high-assurance does not renew by itself


async def test_a_renewal_with_a_malformed_csr_is_refused(stack: Harness, enroll_with_key: EnrollWithKey) -> None:
    key, old = await enroll_with_key(NAME)
    request = renewal_request(old.cert_pem, key, "not a CSR\x00", "tests\x00")
    async with stack.client() as c:
        await c.publish(request)
    code, _ = await _refusal(stack, request.aggregate_id)
    assert code == "csr_malformed"


async def test_an_enrollment_consumer_from_before_renewal_is_given_the_new_filters_and_settings(
    stack: Harness,
) -> None:
    """A durable created by the previous release keeps its position and gains the renewal events;
    a changed ack_wait or max_deliver setting applies to it at the next start."""
    await stack.stop("enrollment")
    nc = await stack.connect("admin")
    try:
        js = stack.js(nc)
        stream = stack.common["stream"]
        config = (await js.consumer_info(stream, "enrollment-requests")).config
        old = [f for f in config.filter_subjects or [] if not f.endswith(("renewal_requested", "destroyed"))]
        await js.add_consumer(stream, config=replace(config, filter_subjects=old))
        before = await js.consumer_info(stream, "enrollment-requests")
        assert set(before.config.filter_subjects or []) == set(old)
        stack.overrides.setdefault("enrollment", {}).update(ack_wait_s=12.5, max_deliver=7)
        await stack.start("enrollment")
        after = await js.consumer_info(stream, "enrollment-requests")
    finally:
        await nc.close()
    filters = after.config.filter_subjects or []
    assert f"{stack.root}.cert.*.renewal_requested" in filters and f"{stack.root}.cert.*.destroyed" in filters
    assert (after.config.ack_wait, after.config.max_deliver) == (12.5, 7)
    assert after.delivered.stream_seq >= before.delivered.stream_seq > 0  # its position is kept


# --- the schedule -----------------------------------------------------------------------------------


async def _pin(harness: Harness, **enrollment: object) -> tuple[Harness, TestClock]:
    clock = TestClock(utcnow())
    harness.clocks["enrollment"] = harness.clocks["signing"] = clock
    harness.overrides["enrollment"] = {"renewal_check_s": 0.1, **enrollment}
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    return harness, clock


@pytest.fixture
async def pinned(harness: Harness) -> tuple[Harness, TestClock]:
    """The stack with enrollment and signing on one pinned clock, and the schedule checked often."""
    return await _pin(harness)


def _advance_to(clock: TestClock, when: datetime) -> None:
    clock.advance(when - clock.now() + timedelta(seconds=1))


def _renew_at(issued: CertificateIssued) -> datetime:
    due = renew_at(issued.not_before, issued.not_after, None)  # tls-server: a third of the lifetime left
    assert due is not None
    return due


async def _renewed_and_expired(
    harness: Harness, clock: TestClock, enroll_with_key: EnrollWithKey
) -> tuple[CertificateIssued, CertificateIssued]:
    """A certificate that fell due, was renewed (superseded) and expired; returns (old, new)."""
    key, old = await enroll_with_key(NAME)
    _advance_to(clock, _renew_at(old))
    due = CertificateRenewalDue.model_validate_json(await _one(harness, old.aggregate_id, "renewal_due"))
    assert (due.cause, due.due_at, due.serial, due.rekey) == ("schedule", _renew_at(old), old.serial, True)
    request_id = await _renew(harness, old, key)
    assert (await _decided(harness, request_id)).status == "issued"
    new = CertificateIssued.model_validate_json(await _one(harness, request_id, "issued"))
    await _one(harness, old.aggregate_id, "superseded")
    _advance_to(clock, old.not_after)
    expired = CertificateExpired.model_validate_json(await _one(harness, old.aggregate_id, "expired"))
    assert expired.not_after == old.not_after
    return old, new


async def _schedule_state(harness: Harness, cert: CertificateIssued) -> str:
    """What the schedule sees of `cert`, and how far enrollment's consumer is (for a failure message)."""
    row = await (await harness.db()).fetchrow(
        "SELECT state, renew_at, renewal_due_sent, expired_sent, superseded_sent FROM enrollment.certificates "
        "WHERE cert_id = $1",
        cert.aggregate_id,
    )
    nc = await harness.connect("admin")
    try:
        info = await harness.js(nc).consumer_info(harness.common["stream"], "enrollment-requests")
    finally:
        await nc.close()
    clock = harness.clocks["enrollment"]
    return (
        f"clock {clock.now() if clock else None}, certificate {dict(row) if row else None}, consumer: "
        f"pending {info.num_pending}, unacknowledged {info.num_ack_pending}, redelivered {info.num_redelivered}"
    )


async def _sent_once_each(harness: Harness, old: CertificateIssued, new: CertificateIssued) -> None:
    """After the schedule has run again (the new certificate falls due), nothing was sent twice."""
    clock = harness.clocks["enrollment"]
    assert isinstance(clock, TestClock)
    _advance_to(clock, _renew_at(new))
    # A message fetched as enrollment stopped comes back after ack_wait; the schedule waits for it.
    try:
        await _one(harness, new.aggregate_id, "renewal_due", timeout=ServiceSettings().ack_wait_s + 20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {await _schedule_state(harness, new)}") from exc
    for verb in ("renewal_due", "superseded", "expired"):
        assert len(await _events(harness, old.aggregate_id, verb)) == 1, verb
    assert not await _events(harness, new.aggregate_id, "expired")


async def test_the_schedule_sends_renewal_due_superseded_and_expired_once_even_after_a_restart(
    pinned: tuple[Harness, TestClock], enroll_with_key: EnrollWithKey
) -> None:
    harness, clock = pinned
    old, new = await _renewed_and_expired(harness, clock, enroll_with_key)
    await harness.stop("enrollment")
    await harness.start("enrollment")
    await _sent_once_each(harness, old, new)


async def test_rebuilding_enrollment_from_the_log_resends_nothing(
    pinned: tuple[Harness, TestClock], enroll_with_key: EnrollWithKey
) -> None:
    harness, clock = pinned
    old, new = await _renewed_and_expired(harness, clock, enroll_with_key)
    await harness.stop("enrollment")
    await harness.forget("enrollment", "enrollment-requests")
    # One event per transaction: the schedule, woken by each certificate replayed, gets a chance to
    # run between a certificate and the events it had sent about it.
    harness.overrides["enrollment"]["fetch_batch"] = 1
    await harness.start("enrollment")

    async def rebuilt() -> bool:
        row = await (await harness.db()).fetchrow(
            "SELECT state, superseded_by, renewal_due_sent, superseded_sent, expired_sent "
            "FROM enrollment.certificates WHERE cert_id = $1",
            old.aggregate_id,
        )
        return row is not None and tuple(row) == ("superseded", new.serial, True, True, True)

    await eventually(rebuilt, timeout=20)
    async with harness.client() as c:
        assert (await c.request(new.aggregate_id)).status == "issued"
        assert (await c.request(old.aggregate_id)).status == "issued"
    await _sent_once_each(harness, old, new)
    # The requests were judged again to rebuild the tables, and answered once: no decision twice.
    for cert_id in (old.aggregate_id, new.aggregate_id):
        assert len(await _events(harness, cert_id, "approved")) == 1
        assert await _events(harness, cert_id, "rejected") == []


async def test_the_schedule_waits_for_an_event_stranded_by_a_stopped_process(
    harness: Harness, enroll_with_key: EnrollWithKey
) -> None:
    """A revocation delivered to an enrollment that stopped before acknowledging it comes back after
    ack_wait; until then the schedule sends nothing, so no renewal-due goes out for a revoked certificate."""
    harness, clock = await _pin(harness, ack_wait_s=3.0)
    key, cert = await enroll_with_key(NAME)
    await harness.stop("enrollment")
    async with harness.client() as c:
        await c.revoke(cert.serial, "keyCompromise", key=key)
    nc = await harness.connect("enrollment")  # enrollment's own credentials, as its process had them
    try:
        js = harness.js(nc, "enrollment")
        stream = harness.common["stream"]
        assert (await js.consumer_info(stream, "enrollment-requests")).config.ack_wait == 3.0
        stranded = await js.pull_subscribe_bind("enrollment-requests", stream)
        # Fetched, never acknowledged: as if the process died (enrollment also blocks the key from it).
        msgs = await stranded.fetch(10, timeout=2)
        assert f"{harness.root}.cert.{cert.aggregate_id}.revoked" in [m.subject for m in msgs]
    finally:
        await nc.close()
    _advance_to(clock, cert.not_after)  # both the renewal point and notAfter have passed
    await harness.start("enrollment")

    expired = CertificateExpired.model_validate_json(await _one(harness, cert.aggregate_id, "expired"))
    assert expired.serial == cert.serial
    assert await _events(harness, cert.aggregate_id, "renewal_due") == []
    state = await (await harness.db()).fetchval(
        "SELECT state FROM enrollment.certificates WHERE cert_id = $1", cert.aggregate_id
    )
    assert state == "revoked"
