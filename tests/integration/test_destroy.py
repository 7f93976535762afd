"""`certbus destroy`: a certificate retired for good through the real services (revoked first if it
is not yet, then destroyed; projections purge its body; audit keeps the log verbatim), and audit's
history of a renewal chain."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

import nats
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from clock import TestClock
from harness import Harness, eventually
from shared.client.sdk import Rejected
from shared.contract.events import (
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    CertificateSuperseded,
    DestructionOrdered,
    EnrollmentApproved,
    EnrollmentRequested,
    Event,
    utcnow,
)
from shared.contract.queries import StatusAnswer
from shared.pki.crypto import PrivateKey, build_csr, generate_key
from shared.pki.holder import key_destroyed_attestation, renewal_request
from shared.trust import operators

EnrollWithKey = Callable[..., Awaitable[tuple[PrivateKey, CertificateIssued]]]  # the `enroll_with_key` fixture


def _self_signed(key: PrivateKey, serial: int) -> str:
    """A throwaway certificate with a given serial (renewal_request signs over the serial it reads)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renewed.corp.internal")])
    now = utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def _events_of(stack: Harness, serial: str, *kinds: type[Event]) -> list[Event]:
    """Every event of the given types on the log that names `serial`, in log order."""
    found: list[tuple[int, Event]] = []
    for kind in kinds:
        for msg in await stack.stream_messages(kind.filter(stack.root)):
            event = kind.model_validate_json(msg.data)
            if getattr(event, "serial", None) == serial:
                found.append((msg.metadata.sequence.stream, event))
    return [event for _, event in sorted(found, key=lambda pair: pair[0])]


async def test_destroying_a_live_certificate_revokes_it_then_destroys_it_and_purges_its_body(stack: Harness) -> None:
    issued = await stack.enroll("retire.corp.internal")
    async with stack.client("operator") as c:
        # The order names "carol", but the events record the operator who signed it.
        destroyed = await c.destroy(issued.serial, "carol", "service decommissioned")
        assert isinstance(destroyed, CertificateDestroyed)
        status = await c.status(issued.serial)
        verdict = await c.validate(issued.cert_pem)

    assert (destroyed.aggregate_id, destroyed.serial, destroyed.issuer_id) == (
        issued.aggregate_id,
        issued.serial,
        issued.issuer_id,
    )
    assert (destroyed.fingerprint_sha256, destroyed.ordered_by, destroyed.reason) == (
        issued.fingerprint_sha256,
        "operator",
        "service decommissioned",
    )
    revoked, gone = await _events_of(stack, issued.serial, CertificateRevoked, CertificateDestroyed)
    assert isinstance(revoked, CertificateRevoked) and isinstance(gone, CertificateDestroyed)
    assert (revoked.reason, revoked.authorised_by, revoked.requested_by) == (
        "cessationOfOperation",
        "operator",
        "operator",
    )
    assert revoked.revocation_request_id == gone.destruction_request_id == destroyed.destruction_request_id

    assert (status.status, status.reason, status.destroyed_at) == (
        "destroyed",
        "cessationOfOperation",
        destroyed.destroyed_at,
    )
    assert status.fingerprint_sha256 == issued.fingerprint_sha256
    assert verdict.status == "revoked" and "destroyed" in verdict.detail  # OCSP and CRLs still say revoked

    pool = await stack.db()
    body = await pool.fetchrow(
        "SELECT cert_der, status, fingerprint FROM validation.certificates WHERE serial = $1", issued.serial
    )
    assert (body["cert_der"], body["status"], body["fingerprint"]) == (None, "revoked", issued.fingerprint_sha256)
    key = await pool.fetchrow(
        "SELECT spki_der, spki_sha256 FROM revocation.certificates WHERE serial = $1", issued.serial
    )
    assert (key["spki_der"], key["spki_sha256"]) == (None, issued.spki_sha256)

    async def history_has_both() -> list[str]:
        async with stack.client("operator") as c:  # audit's history is an operator's query
            kinds = [e.event_type for e in (await c.history(issued.serial)).events]
        return kinds if "CertificateDestroyed" in kinds else []

    kinds = await eventually(history_has_both)
    assert kinds.index("DestructionOrdered") < kinds.index("CertificateRevoked") < kinds.index("CertificateDestroyed")
    # Audit keeps its archive verbatim (the hash chain covers it): the body is still there.
    archived = await pool.fetchval(
        "SELECT raw FROM audit.archive WHERE event_type = 'CertificateIssued' AND aggregate_id = $1",
        issued.aggregate_id,
    )
    assert issued.cert_pem in json.loads(bytes(archived))["cert_pem"]


async def test_destroying_a_revoked_certificate_only_destroys_it(stack: Harness) -> None:
    issued = await stack.enroll("revoked-first.corp.internal")
    async with stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "operator")
        await c.destroy(issued.serial, "operator")
        status = await c.status(issued.serial)
    revocations = await _events_of(stack, issued.serial, CertificateRevoked)
    assert [r.reason for r in revocations if isinstance(r, CertificateRevoked)] == ["keyCompromise"]
    assert (status.status, status.reason) == ("destroyed", "keyCompromise")


async def test_destroying_an_unknown_serial_or_twice_is_refused_and_changes_nothing(stack: Harness) -> None:
    issued = await stack.enroll("once.corp.internal")
    async with stack.client("operator") as c:
        with pytest.raises(Rejected) as unknown:
            await c.destroy("abcdef0123", "operator")
        first = await c.destroy(issued.serial, "operator")
        assert isinstance(first, CertificateDestroyed)
        with pytest.raises(Rejected) as again:
            await c.destroy(issued.serial, "operator")
        with pytest.raises(Rejected) as revoke_after:
            await c.revoke_as_operator(issued.serial, "superseded", "operator")
        status = await c.status(issued.serial)
    assert unknown.value.reasons[0].code == "certificate_unknown"
    assert "abcdef0123" in unknown.value.reasons[0].message
    assert again.value.reasons[0].code == "certificate_destroyed"
    assert revoke_after.value.reasons[0].code == "certificate_destroyed"
    assert len(await _events_of(stack, issued.serial, CertificateDestroyed)) == 1
    assert len(await _events_of(stack, issued.serial, CertificateRevoked)) == 1
    assert status.destroyed_at == first.destroyed_at


def _order(serial: str, operator: str = "operator") -> DestructionOrdered:
    order_id = str(uuid.uuid4())
    return DestructionOrdered(
        aggregate_id=order_id,
        occurred_at=utcnow(),
        correlation_id=order_id,
        producer="operator",
        serial=serial,
        operator=operator,
    )


async def test_a_requester_cannot_publish_a_destruction_order(stack: Harness) -> None:
    """NATS lets only operators publish orders: a requester's is refused by the server and never
    reaches the log."""
    issued = await stack.enroll("forged-order.corp.internal")
    forged = _order(issued.serial, operator="mallory")
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await stack.connect("mallory", error_cb=on_error)
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await stack.js(nc, "mallory").publish(
                forged.subject(stack.root),
                forged.model_dump_json().encode(),
                stream=stack.common["stream"],
                timeout=1.0,
            )
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert any("permissions violation" in e.lower() for e in errors), errors
    assert await stack.stream_messages(f"{stack.root}.revoke.{forged.aggregate_id}.>") == []
    async with stack.client() as c:
        assert (await c.status(issued.serial)).status == "good"


async def test_an_order_without_a_registered_operators_signature_is_parked_and_changes_nothing(
    stack: Harness,
) -> None:
    """The operator's NATS credential is not enough: an unsigned order, or one signed by a key no
    operator registered, reaches the log but revocation parks it; nothing is revoked or destroyed."""
    issued = await stack.enroll("unsigned-order.corp.internal")
    unsigned = _order(issued.serial)
    forged = operators.sign(_order(issued.serial), "operator", generate_key("ed25519"))
    stranger = operators.sign(_order(issued.serial, operator="mallory"), "mallory", generate_key("ec-p256"))
    orders = (unsigned, forged, stranger)
    for order in orders:
        await stack.publish_raw(order.subject(stack.root), order.model_dump_json().encode())  # as the operator
    pool = await stack.db()

    async def parked() -> list[str]:
        rows = await pool.fetch(
            "SELECT subject, reason FROM revocation.parked WHERE subject = ANY($1::text[])",
            [order.subject(stack.root) for order in orders],
        )
        return [r["reason"] for r in rows] if len(rows) == len(orders) else []

    reasons = await eventually(parked)
    assert all("operator_signature" in reason for reason in reasons), reasons
    # A later order, signed, takes effect; nothing came of the ones before it.
    other = await stack.enroll("other.corp.internal")
    async with stack.client("operator") as c:
        await c.destroy(other.serial, "operator")
        assert (await c.status(issued.serial)).status == "good"
    for order in orders:
        assert await stack.stream_messages(f"{stack.root}.revoke.{order.aggregate_id}.rejected") == []
    assert [e.serial for e in await _events_of(stack, issued.serial, CertificateRevoked, CertificateDestroyed)] == []


async def test_a_late_copy_of_the_issued_event_never_brings_a_destroyed_body_back(stack: Harness) -> None:
    issued = await stack.enroll("no-resurrection.corp.internal")
    async with stack.client("operator") as c:
        await c.destroy(issued.serial, "operator")
    stale = issued.model_copy(update={"event_id": uuid.uuid4()})
    await stack.publish_raw(stale.subject(stack.root), stale.model_dump_json().encode())
    pool = await stack.db()
    await eventually(lambda: pool.fetchval("SELECT 1 FROM validation.tracking WHERE event_id = $1", stale.event_id))
    row = await pool.fetchrow(
        "SELECT cert_der, destroyed_at FROM validation.certificates WHERE serial = $1", issued.serial
    )
    assert row["cert_der"] is None and row["destroyed_at"] is not None
    async with stack.client() as c:
        assert (await c.status(issued.serial)).status == "destroyed"


async def test_the_cli_destroys_and_exits_1_when_refused(stack: Harness) -> None:
    issued = await stack.enroll("cli-destroy.corp.internal")
    # The CLI orders it as the operator "operator", signing with its registered key.
    done = await stack.cli("destroy", issued.serial, "--reason", "host gone", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ordered_by"] == "operator"
    again = await stack.cli("destroy", issued.serial)
    assert again.returncode == 1
    assert "certificate_destroyed" in again.stderr
    unknown = await stack.cli("destroy", "feedbeef")
    assert (unknown.returncode, "certificate_unknown" in unknown.stderr) == (1, True)
    status = await stack.cli("status", issued.serial, "--json")
    assert (status.returncode, json.loads(status.stdout)["status"]) == (1, "destroyed")

    async def destroyed_in_history() -> dict[str, str]:
        history = await stack.cli("audit", "history", issued.serial, "--json")
        assert history.returncode == 0, history.stderr
        rows = [e for e in json.loads(history.stdout)["events"] if e["event_type"] == "CertificateDestroyed"]
        return rows[0] if rows else {}

    row = await eventually(destroyed_in_history, timeout=30, interval=0.2)
    assert row["actor"] == "operator"


async def test_audit_check_is_clean_after_destructions(stack: Harness) -> None:
    issued = await stack.enroll("checked.corp.internal")
    async with stack.client("operator") as c:
        await c.destroy(issued.serial, "operator")
    check = await stack.cli("audit", "check", "--json")
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["findings"] == []


async def test_status_shows_superseded_then_expired_then_destroyed(stack: Harness) -> None:
    """Validation's read model follows enrollment's lifecycle events (published here as enrollment would)."""
    old = await stack.enroll("lifecycle.corp.internal")
    new = await stack.enroll("lifecycle.corp.internal")

    def env() -> dict[str, object]:
        return {
            "aggregate_id": old.aggregate_id,
            "occurred_at": utcnow(),
            "correlation_id": "t",
            "producer": "enrollment",
        }

    async def status_is(wanted: str) -> StatusAnswer | None:
        async with stack.client() as c:
            answer = await c.status(old.serial)
        return answer if answer.status == wanted and answer.superseded_by else None

    async with stack.client("enrollment") as enrollment:  # enrollment's credentials: its subjects only
        await enrollment.publish(
            CertificateSuperseded(
                **env(),
                serial=old.serial,
                issuer_id=old.issuer_id,
                superseded_by=new.serial,
                superseded_by_id=new.aggregate_id,
                not_after=old.not_after,
            )
        )
        good = await eventually(lambda: status_is("good"))
        assert (good.superseded_by, good.superseded_by_id) == (new.serial, new.aggregate_id)
        async with stack.client() as c:
            assert (await c.validate(old.cert_pem)).status == "good"  # superseded is still valid
        await enrollment.publish(
            CertificateExpired(**env(), serial=old.serial, issuer_id=old.issuer_id, not_after=old.not_after)
        )
        await eventually(lambda: status_is("expired"))
    async with stack.client("operator") as c:
        await c.destroy(old.serial, "operator", "expired and replaced")
        assert (await c.status(old.serial)).status == "destroyed"
        assert (await c.status(new.serial)).status == "good"


async def test_status_says_expired_once_not_after_has_passed_even_with_enrollment_down(harness: Harness) -> None:
    clock = TestClock(utcnow())
    harness.clocks["validation"] = clock
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    cert = await harness.enroll("late.corp.internal")
    await harness.stop("enrollment")  # no CertificateExpired will come
    async with harness.client() as c:
        assert (await c.status(cert.serial)).status == "good"
        clock.advance(cert.not_after - clock.now())
        assert (await c.status(cert.serial)).status == "good"  # notAfter itself is still valid
        clock.advance(timedelta(seconds=1))
        answer = await c.status(cert.serial)
        assert (answer.status, answer.not_after) == ("expired", cert.not_after)
        assert (await c.validate(cert.cert_pem)).status == "expired"


# --- audit's history of a renewal chain -------------------------------------------------------------


async def test_the_history_of_a_renewed_certificate_shows_its_whole_lifecycle_in_log_order(harness: Harness) -> None:
    """Only audit runs: the chain is published as it would be, each event on its own subject by its
    one publisher (requests as admitted onto the log), with synthetic contents and real schemas, so
    that the test does not depend on how enrollment decides renewals."""
    old_key, new_key = generate_key("ec-p256"), generate_key("ec-p256")
    old_serial, new_serial, old_id = "a1b2c3", "d4e5f6", "req-old"
    # The certificates are placeholders: neither audit nor the harness lints them.
    harness.overrides["audit"] = {"lint_after_issuance": False}
    harness.lint_exempt |= {old_serial, new_serial}
    await harness.start("audit")
    now = utcnow()

    def env(aggregate_id: str, producer: str) -> dict[str, object]:
        return {"aggregate_id": aggregate_id, "occurred_at": now, "correlation_id": aggregate_id, "producer": producer}

    def issued(aggregate_id: str, serial: str, supersedes: str | None = None) -> CertificateIssued:
        return CertificateIssued(
            **env(aggregate_id, "signing"),
            serial=serial,
            issuer_id="issuing-1",
            profile="tls-server",
            cert_pem="-----BEGIN CERTIFICATE-----",
            chain_pem="",
            not_before=now,
            not_after=now + timedelta(days=1),
            dns_names=["renewed.corp.internal"],
            spki_sha256="0" * 64,
            fingerprint_sha256="1" * 64,
            supersedes=supersedes,
        )

    def approved(aggregate_id: str, supersedes: str | None = None) -> EnrollmentApproved:
        return EnrollmentApproved(
            **env(aggregate_id, "enrollment"),
            csr_pem="csr",
            profile="tls-server",
            dns_names=["renewed.corp.internal"],
            validity_days=1,
            provisioner_id="default",
            token_id="t",
            requester="agent",
            supersedes=supersedes,
        )

    old_cert_pem = _self_signed(old_key, int(old_serial, 16))  # renewal_request reads the serial from it
    csr = build_csr(new_key, ["renewed.corp.internal"]).decode()
    renewal = renewal_request(old_cert_pem, old_key, csr, "agent", request_id="req-new")
    new_id = renewal.aggregate_id
    chain: list[Event] = [
        EnrollmentRequested(
            **env(old_id, "enrollment"),
            csr_pem="csr",
            token="t",
            token_proof="p",
            requester="agent",
        ),
        approved(old_id),
        issued(old_id, old_serial),
        CertificateRenewalDue(
            **env(old_id, "enrollment"),
            serial=old_serial,
            issuer_id="issuing-1",
            due_at=now,
            cause="schedule",
        ),
        renewal.model_copy(update={"producer": "enrollment"}),  # admitted by enrollment
        approved(new_id, old_serial),
        issued(new_id, new_serial, old_serial),
        CertificateSuperseded(
            **env(old_id, "enrollment"),
            serial=old_serial,
            issuer_id="issuing-1",
            superseded_by=new_serial,
            superseded_by_id=new_id,
            not_after=now + timedelta(days=1),
        ),
        key_destroyed_attestation(old_serial, old_key, "agent", now).model_copy(update={"producer": "revocation"}),
    ]
    for event in chain:
        await harness.publish_raw(event.subject(harness.root), event.model_dump_json().encode())
    async with harness.client("operator") as c:  # audit's history is an operator's query

        async def full(serial: str, n: int) -> list[str]:
            answer = await c.history(serial)
            return [e.event_type for e in answer.events] if len(answer.events) >= n else []

        old_history = await eventually(lambda: full(old_serial, len(chain)))
        old = await c.history(old_serial)
        new_history = await eventually(lambda: full(new_serial, 3))
        new = await c.history(new_serial)

    assert old_history == [
        "EnrollmentRequested",
        "EnrollmentApproved",
        "CertificateIssued",
        "CertificateRenewalDue",
        "RenewalRequested",
        "EnrollmentApproved",  # the renewal's approval, which supersedes the old serial
        "CertificateIssued",  # the NEW certificate, `supersedes` the old serial
        "CertificateSuperseded",
        "KeyDestroyed",
    ]
    assert old.cert_id == old_id  # the renewal's events never made the old serial point at the new certificate
    assert old.events[6].event["serial"] == new_serial
    assert [e.actor for e in old.events][-1] == "agent"
    assert new.cert_id == new_id
    assert new_history == ["RenewalRequested", "EnrollmentApproved", "CertificateIssued"]


async def test_a_real_renewal_shows_in_the_old_serials_history_and_a_destroyed_certificate_cannot_be_renewed(
    stack: Harness, enroll_with_key: EnrollWithKey
) -> None:
    """Across services: enrollment renews, audit indexes the renewal under the old serial; after
    `destroy` the renewed certificate's own renewal is refused."""
    key, old = await enroll_with_key("renew-me.corp.internal")
    async with stack.client("agent") as c:
        renewed = await c.renew(old.cert_pem, key)
    new = renewed.issued
    assert new.supersedes == old.serial

    async def old_history() -> list[str]:
        async with stack.client("operator") as c:  # audit's history and check are an operator's queries
            answer = await c.history(old.serial)
        kinds = [e.event_type for e in answer.events]
        return kinds if "CertificateSuperseded" in kinds and answer.cert_id == old.aggregate_id else []

    kinds = await eventually(old_history)
    assert kinds.index("CertificateIssued") < kinds.index("RenewalRequested") < kinds.index("CertificateSuperseded")
    assert kinds.count("CertificateIssued") == 2  # its own, and the renewal's (which supersedes it)
    async with stack.client("operator") as c:
        assert (await c.check()).findings == []  # the renewal's approval and certificate agree
        await c.destroy(new.serial, "operator", "no longer needed")
    async with stack.client("agent") as c:
        with pytest.raises(Rejected) as refused:
            await c.renew(new.cert_pem, renewed.key)
    assert refused.value.reasons[0].code == "certificate_destroyed"
