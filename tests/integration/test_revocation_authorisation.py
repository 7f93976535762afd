"""Who may revoke (the holder, proving it with the certificate's key, the requester that obtained
it, or an operator, recorded as the one who signed the order) and what a keyCompromise revocation
does to the key and its other certificates, through the real services."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from harness import Harness, eventually
from shared.client.sdk import Rejected
from shared.contract.events import (
    CertificateIssued,
    CertificateRevoked,
    RevocationRejected,
    RevocationRequested,
    revocation_message,
    utcnow,
)
from shared.contract.reasons import Reason
from shared.pki.crypto import KeyType, PrivateKey, build_csr, generate_key, key_pem, sign_message
from shared.pki.holder import enrollment_request

EnrollWithKey = Callable[..., Awaitable[tuple[PrivateKey, CertificateIssued]]]  # the `enroll_with_key` fixture


def _signed_request(key: PrivateKey, serial: str, reason: str, request_id: str | None = None) -> RevocationRequested:
    """A holder's revocation request, signed with `key` over its own request id, serial and reason."""
    request_id = request_id or str(uuid.uuid4())
    proof = base64.b64encode(sign_message(key, revocation_message(request_id, serial, reason))).decode()
    return RevocationRequested(
        aggregate_id=request_id,
        occurred_at=utcnow(),
        correlation_id=request_id,
        producer="requester",
        serial=serial,
        reason=reason,
        requested_by="someone-else",  # admission writes the identity NATS authenticated instead
        proof=proof,
    )


async def _refused(stack: Harness, request: RevocationRequested) -> Reason:
    """Publish a request and return why revocation refused it."""
    async with stack.client() as c:
        await c.publish(request)
    subject = f"{stack.root}.revoke.{request.aggregate_id}.rejected"
    found = await eventually(lambda: stack.stream_messages(subject))
    return RevocationRejected.model_validate_json(found[0].data).reason


async def _status(stack: Harness, serial: str) -> str:
    async with stack.client() as c:
        return (await c.status(serial)).status


async def _blocked_keys(stack: Harness) -> list[str]:
    """The keys enrollment refuses to certify (by SPKI SHA-256)."""
    pool = await stack.db()
    return [r["spki_sha256"] for r in await pool.fetch("SELECT spki_sha256 FROM enrollment.blocked_keys")]


async def _revocations(stack: Harness) -> list[CertificateRevoked]:
    return [
        CertificateRevoked.model_validate_json(m.data)
        for m in await stack.stream_messages(f"{stack.root}.cert.*.revoked")
    ]


# --- the holder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec-p256", "ed25519", "rsa-2048"])
async def test_the_holder_revokes_with_the_certificates_key(
    stack: Harness, enroll_with_key: EnrollWithKey, key_type: KeyType
) -> None:
    key, issued = await enroll_with_key(f"holder-{key_type}.corp.internal", key_type=key_type)
    async with stack.client("holder-app") as c:
        revoked = await c.revoke(issued.serial, "superseded", key=key)
    assert (revoked.serial, revoked.reason) == (issued.serial, "superseded")
    assert (revoked.requested_by, revoked.authorised_by) == ("holder-app", "holder")
    assert await _status(stack, issued.serial) == "revoked"


async def test_a_proof_made_with_another_key_is_not_authorised_and_the_certificate_stays_good(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, issued = await enroll_with_key("victim.corp.internal")
    async with stack.client("mallory") as c:
        with pytest.raises(Rejected) as refused:
            await c.revoke(issued.serial, "keyCompromise", key=generate_key("ec-p256"))
    assert [r.code for r in refused.value.reasons] == ["not_authorised"]
    assert "private key" in refused.value.reasons[0].message and "operator" in refused.value.reasons[0].message
    assert await _status(stack, issued.serial) == "good"
    await enroll_with_key("victim-2.corp.internal", key=key)  # the refused keyCompromise blocked nothing


async def test_a_request_without_proof_is_not_authorised(stack: Harness) -> None:
    issued = await stack.enroll("noproof.corp.internal")
    async with stack.client("mallory") as c:
        with pytest.raises(Rejected) as refused:
            await c.revoke(issued.serial, "superseded")
    assert [r.code for r in refused.value.reasons] == ["not_authorised"]
    assert "--key" in refused.value.reasons[0].message and "--operator" in refused.value.reasons[0].message
    assert await _status(stack, issued.serial) == "good"


async def test_the_requester_that_obtained_a_certificate_revokes_it_without_its_key(stack: Harness) -> None:
    """As an ACME account revokes what it ordered: the identity NATS authenticated for the request
    (recorded on CertificateIssued) may ask, but not for keyCompromise, which needs the key."""
    issued = await stack.enroll("mine-to-revoke.corp.internal")
    assert issued.requester == "tests"
    async with stack.client() as c:
        with pytest.raises(Rejected) as refused:
            await c.revoke(issued.serial, "keyCompromise")
        assert [r.code for r in refused.value.reasons] == ["not_authorised"]
        assert "without its key" in refused.value.reasons[0].message
        revoked = await c.revoke(issued.serial, "cessationOfOperation")
    assert (revoked.requested_by, revoked.authorised_by, revoked.reason) == (
        "tests",
        "requester",
        "cessationOfOperation",
    )
    assert await _blocked_keys(stack) == []
    by_cli = await stack.enroll("cli-requester.corp.internal")
    result = await stack.cli("revoke", by_cli.serial, "--reason", "superseded", "--as-requester")
    assert result.returncode == 0 and f"revoked serial {by_cli.serial}" in result.stdout, result.stderr
    assert "requested by tests" in result.stdout
    both = await stack.cli("revoke", by_cli.serial, "--as-requester", "--as-operator")
    assert both.returncode == 2 and "not several" in both.stderr


async def test_a_holders_proof_replayed_for_another_serial_reason_or_request_is_refused(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, mine = await enroll_with_key("mine.corp.internal")
    _, theirs = await enroll_with_key("theirs.corp.internal")
    signed = _signed_request(key, mine.serial, "superseded")  # what the holder signed, seen on the log

    other_serial = signed.model_copy(update={"event_id": uuid.uuid4(), "aggregate_id": "replay-serial"})
    other_serial = other_serial.model_copy(update={"serial": theirs.serial})
    other_reason = signed.model_copy(
        update={"event_id": uuid.uuid4(), "aggregate_id": "replay-reason", "reason": "keyCompromise"}
    )
    other_request = signed.model_copy(update={"event_id": uuid.uuid4(), "aggregate_id": "replay-request"})
    for replay in (other_serial, other_reason, other_request):
        assert (await _refused(stack, replay)).code == "not_authorised", replay
    assert await _status(stack, mine.serial) == await _status(stack, theirs.serial) == "good"
    await enroll_with_key("mine-2.corp.internal", key=key)  # the refused keyCompromise blocked nothing

    async with stack.client() as c:  # the proof itself was good: for its own request it revokes
        await c.publish(signed)
    await eventually(lambda: _status_is(stack, mine.serial, "revoked"))
    assert [r.serial for r in await _revocations(stack)] == [mine.serial]
    assert (await _revocations(stack))[0].requested_by == "tests"  # the identity NATS authenticated


async def _status_is(stack: Harness, serial: str, wanted: str) -> bool:
    return await _status(stack, serial) == wanted


async def test_the_cli_revokes_as_the_holder_with_the_key_file(
    stack: Harness, enroll_with_key: EnrollWithKey, tmp_path: Path
) -> None:
    key, issued = await enroll_with_key("cli-holder.corp.internal", key_type="ed25519")
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key_pem(key))
    result = await stack.cli(
        "revoke", issued.serial, "--reason", "cessationOfOperation", "--key", str(key_file), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["authorised_by"] == "holder"
    assert await _status(stack, issued.serial) == "revoked"


# --- an operator --------------------------------------------------------------------------------


async def test_an_operator_revokes_and_is_named_on_the_revocation_and_in_the_audit_history(stack: Harness) -> None:
    issued = await stack.enroll("ordered.corp.internal")
    async with stack.client("operator") as c:
        # The order's `operator` field says "carol"; the revocation records who signed it.
        revoked = await c.revoke_as_operator(issued.serial, "privilegeWithdrawn", "carol")
    assert (revoked.requested_by, revoked.authorised_by, revoked.reason) == (
        "operator",
        "operator",
        "privilegeWithdrawn",
    )

    by_cli = await stack.enroll("ordered-cli.corp.internal")
    result = await stack.cli("revoke", by_cli.serial, "--reason", "superseded", "--as-operator")
    assert result.returncode == 0, result.stderr
    assert "requested by operator" in result.stdout

    async def history(serial: str) -> list[tuple[str, str]]:
        answer = await stack.cli("audit", "history", serial, "--json")
        events = json.loads(answer.stdout)["events"] if answer.returncode == 0 else []
        pairs = [(e["event_type"], e["actor"]) for e in events]
        return pairs if ("CertificateRevoked" in dict(pairs)) else []

    ordered = await eventually(lambda: history(issued.serial))
    assert [kind for kind, _ in ordered[-2:]] == ["RevocationOrdered", "CertificateRevoked"]
    assert ordered[-1] == ("CertificateRevoked", "operator")
    assert (await eventually(lambda: history(by_cli.serial)))[-2:] == [
        ("RevocationOrdered", "operator"),
        ("CertificateRevoked", "operator"),
    ]
    check = await stack.cli("audit", "check", "--json")
    assert not [f for f in json.loads(check.stdout)["findings"] if f["check"] == "producer"]


async def test_an_operator_order_reaches_a_revocation_consumer_made_by_an_earlier_release(harness: Harness) -> None:
    """A durable consumer created before orders existed is given the new filter at start."""
    nc = await harness.connect("admin")  # the log's admin manages its consumers
    try:
        js = harness.js(nc, "admin")
        old_filters = [f"{harness.root}.cert.*.issued", f"{harness.root}.revoke.*.requested"]
        durable = "revocation-requests"
        config = ConsumerConfig(durable_name=durable, filter_subjects=old_filters, ack_policy=AckPolicy.EXPLICIT)
        await js.add_consumer(harness.common["stream"], config=config)
    finally:
        await nc.close()
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    issued = await harness.enroll("upgraded.corp.internal")
    async with harness.client("operator") as c:
        revoked = await c.revoke_as_operator(issued.serial, "superseded", "operator")
    assert (revoked.requested_by, revoked.authorised_by) == ("operator", "operator")


# --- key compromise (bad-key-revoker) --------------------------------------------------------------


async def test_key_compromise_revokes_every_certificate_with_the_key_and_blocks_it(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, first = await enroll_with_key("k1.corp.internal")
    siblings = [(await enroll_with_key(f"k{i}.corp.internal", key=key))[1] for i in (2, 3)]
    _, bystander = await enroll_with_key("other-key.corp.internal")

    async with stack.client() as c:
        revoked = await c.revoke(first.serial, "keyCompromise", key=key)
    assert revoked.authorised_by == "holder"
    for sibling in siblings:
        await eventually(lambda s=sibling: _status_is(stack, s.serial, "revoked"))
    assert await _status(stack, bystander.serial) == "good"

    by_serial = {r.serial: r for r in await _revocations(stack)}
    assert set(by_serial) == {first.serial, *(s.serial for s in siblings)}
    for sibling in siblings:
        r = by_serial[sibling.serial]
        assert (r.reason, r.authorised_by) == ("keyCompromise", "key_compromise")
        assert r.requested_by == f"revocation (key of {first.serial} compromised)"
        assert r.revocation_request_id == revoked.revocation_request_id
        assert r.aggregate_id == sibling.aggregate_id
    # Enrollment blocks the key itself, from the revocation: no KeyBlocked event (that is an
    # operator's ruling), and the key never gets a certificate again.
    async with stack.client() as c:
        with pytest.raises(Rejected) as refused:
            await c.enroll(build_csr(key, ["k4.corp.internal"]).decode(), stack.token("k4.corp.internal"))
    assert [r.code for r in refused.value.reasons] == ["key_blocked"]
    assert await _blocked_keys(stack) == [first.spki_sha256]
    assert await stack.stream_messages(f"{stack.root}.key.*.blocked") == []

    # A redelivered request changes nothing: no second revocation, no second block.
    original = next(
        m for m in await stack.stream_messages(f"{stack.root}.revoke.*.requested") if b"keyCompromise" in m.data
    )
    await stack.publish_raw(original.subject, original.data)
    async with stack.client("operator") as c:  # a later request: once it is decided, the copy was too
        await c.revoke_as_operator(bystander.serial, "superseded", "operator")
    assert len(await _revocations(stack)) == 4
    assert await _blocked_keys(stack) == [first.spki_sha256]
    assert await stack.stream_messages(f"{stack.root}.key.*.blocked") == []


async def test_an_operators_key_compromise_revokes_the_keys_other_certificates(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, first = await enroll_with_key("op-k1.corp.internal", key_type="rsa-2048")
    _, second = await enroll_with_key("op-k2.corp.internal", key=key)
    async with stack.client("operator") as c:
        revoked = await c.revoke_as_operator(second.serial, "keyCompromise", "operator")
    assert (revoked.serial, revoked.requested_by) == (second.serial, "operator")
    await eventually(lambda: _status_is(stack, first.serial, "revoked"))


async def test_a_certificate_approved_before_the_key_was_blocked_and_issued_after_is_revoked(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    key, first = await enroll_with_key("late-k1.corp.internal")
    await stack.stop("signing")
    late = enrollment_request(
        build_csr(key, ["late-k2.corp.internal"]).decode(), stack.token("late-k2.corp.internal"), "tests"
    )
    async with stack.client() as c:
        await c.publish(late)
        await eventually(lambda: stack.stream_messages(f"{stack.root}.cert.{late.aggregate_id}.approved"))
        await c.revoke(first.serial, "keyCompromise", key=key)
    await stack.start("signing")

    found = await eventually(lambda: stack.stream_messages(f"{stack.root}.cert.{late.aggregate_id}.issued"), timeout=20)
    issued = CertificateIssued.model_validate_json(found[0].data)
    await eventually(lambda: _status_is(stack, issued.serial, "revoked"))
    revoked = next(r for r in await _revocations(stack) if r.serial == issued.serial)
    assert (revoked.reason, revoked.authorised_by) == ("keyCompromise", "key_compromise")
    assert revoked.requested_by == f"revocation (key of {first.serial} compromised)"
