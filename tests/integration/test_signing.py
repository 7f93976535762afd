"""Signing issues at most one certificate per enrollment request, whatever is redelivered."""

from __future__ import annotations

import json
import uuid

import pytest
from cryptography import x509

from harness import CRL_SHARDS, PASSPHRASE, Harness, eventually
from shared.contract.events import EnrollmentApproved, parse_event
from shared.pki.crypto import build_csr, generate_key


async def approval_of(h: Harness, request_id: str) -> EnrollmentApproved:
    [msg] = await h.stream_messages(f"{h.root}.cert.{request_id}.approved")
    event = parse_event(msg.data)
    assert isinstance(event, EnrollmentApproved)
    return event


async def signing_applied(h: Harness, event_id: uuid.UUID, times: int = 1) -> bool:
    pool = await h.db()
    n = await pool.fetchval("SELECT count(*) FROM signing.tracking WHERE event_id = $1", event_id)
    return bool(n >= times)


async def test_a_redelivered_approval_issues_no_second_certificate(stack: Harness) -> None:
    issued = await stack.enroll("one.corp.internal")
    approval = await approval_of(stack, issued.aggregate_id)
    await stack.publish_raw(approval.subject(stack.root), approval.model_dump_json().encode())
    await stack.publish_raw(approval.subject(stack.root), approval.model_dump_json().encode())
    assert len(await stack.stream_messages(approval.subject(stack.root))) == 3
    pool = await stack.db()
    # Let signing consume the copies, then count what it issued.
    await eventually(lambda: _consumer_idle(stack, "signing-approved"))
    assert len(await stack.stream_messages(f"{stack.root}.cert.{issued.aggregate_id}.issued")) == 1
    assert await pool.fetchval("SELECT count(*) FROM signing.issuances WHERE request_id = $1", issued.aggregate_id) == 1


async def test_a_second_approval_for_the_same_request_republishes_the_same_certificate(stack: Harness) -> None:
    issued = await stack.enroll("two.corp.internal")
    approval = await approval_of(stack, issued.aggregate_id)
    again = approval.model_copy(update={"event_id": uuid.uuid4()})
    await stack.publish_raw(again.subject(stack.root), again.model_dump_json().encode())
    await eventually(lambda: signing_applied(stack, again.event_id))
    issued_msgs = await stack.stream_messages(f"{stack.root}.cert.{issued.aggregate_id}.issued")
    assert len(issued_msgs) == 1
    assert json.loads(issued_msgs[0].data)["serial"] == issued.serial


async def test_signing_signs_the_serial_its_recorded_intent_names(stack: Harness) -> None:
    """An intent recorded before a crash is honoured: the retry signs that serial, not a new one."""
    issued = await stack.enroll("three.corp.internal")
    approval = await approval_of(stack, issued.aggregate_id)
    pool = await stack.db()
    request_id = str(uuid.uuid4())
    await pool.execute(
        "INSERT INTO signing.issuances (request_id, issuer_id, serial, not_before, not_after, spki_sha256, "
        "issued_event_id, approval_event_id, intended_at) SELECT $1, issuer_id, 123456789123456789123, not_before, "
        "not_after, spki_sha256, $2, $3, intended_at FROM signing.issuances WHERE request_id = $4",
        request_id,
        uuid.uuid4(),
        uuid.uuid4(),
        issued.aggregate_id,
    )
    crashed = approval.model_copy(update={"event_id": uuid.uuid4(), "aggregate_id": request_id})
    await stack.publish_raw(crashed.subject(stack.root), crashed.model_dump_json().encode())
    msgs = await eventually(lambda: stack.stream_messages(f"{stack.root}.cert.{request_id}.issued"))
    cert = x509.load_pem_x509_certificate(json.loads(msgs[0].data)["cert_pem"].encode())
    assert cert.serial_number == 123456789123456789123


@pytest.mark.parametrize(
    ("profile", "ekus"),
    [
        ("tls-server", {x509.ExtendedKeyUsageOID.SERVER_AUTH}),
        ("tls-client", {x509.ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("service", {x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
async def test_the_issued_certificate_carries_what_its_profile_says(
    stack: Harness, profile: str, ekus: set[x509.ObjectIdentifier]
) -> None:
    issued = await stack.enroll("four.corp.internal", profile=profile)
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    cert.verify_directly_issued_by(chain[0])
    chain[0].verify_directly_issued_by(chain[1])
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == ekus
    defaults = {"tls-server": 30, "tls-client": 7, "service": 14}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == defaults[profile]
    dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    shard = int(issued.serial, 16) % CRL_SHARDS
    assert dp[0].full_name[0].value.endswith(f"/crl/{issued.issuer_id}/{shard}.crl")  # type: ignore[index,union-attr]


async def _consumer_idle(h: Harness, durable: str) -> bool:
    nc = await h.connect("admin")
    try:
        info = await h.js(nc).consumer_info(h.common["stream"], durable)
        return info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await nc.close()


async def test_ca_keys_are_encrypted_at_rest_and_no_secret_reaches_the_log(stack: Harness) -> None:
    token = stack.token("secret.corp.internal")
    key = generate_key("ec-p256")
    async with stack.client() as c:
        await c.enroll(build_csr(key, ["secret.corp.internal"]).decode(), token)
    key_files = sorted(stack.key_dir.glob("*.key.pem"))
    assert len(key_files) == 2  # root and issuing CA
    for path in key_files:
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert path.stat().st_mode & 0o777 == 0o600
    holder_secret = token.rpartition("~")[2]
    for msg in await stack.stream_messages(f"{stack.root}.>"):
        assert b"PRIVATE KEY" not in msg.data
        assert PASSPHRASE.encode() not in msg.data
        assert holder_secret.encode() not in msg.data
