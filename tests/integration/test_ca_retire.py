"""CA retirement end to end: `certbus ca retire` stops a CA issuing, signing publishes its final CRL
and destroys its key, and nothing can be signed by it afterwards, across redeliveries and restarts.
Also: a renewal's certificate says which one it supersedes (signing copies it from the approval)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import CRL_SHARDS, PASSPHRASE, Harness, eventually
from services.signing.cas import CaRegistry
from services.signing.crl import CrlPublisher
from services.signing.keystore import KeyStore, KeyStoreError
from services.signing.retire import Retirements
from shared.base.settings import SigningSettings
from shared.client.sdk import Rejected
from shared.contract.events import (
    CaCreated,
    CaKeyDestroyed,
    CaRetired,
    CertificateIssued,
    CrlPublished,
    EnrollmentApproved,
    parse_event,
    utcnow,
)


async def _ca_events(h: Harness, ca_id: str) -> list[tuple[int, Any]]:
    """(stream seq, event) of every event of CA `ca_id`, in log order."""
    return [
        (m.metadata.sequence.stream, parse_event(m.data)) for m in await h.stream_messages(f"{h.root}.ca.{ca_id}.>")
    ]


async def _revoked_in_signing(h: Harness, serial: str) -> bool:
    pool = await h.db()
    return bool(await pool.fetchval("SELECT count(*) FROM signing.revoked WHERE serial = $1", int(serial, 16)))


async def _archived(h: Harness, event_type: str, n: int = 1) -> bool:
    pool = await h.db()
    return bool(await pool.fetchval("SELECT count(*) FROM audit.archive WHERE event_type = $1", event_type) >= n)


async def _replacement_of(h: Harness, old: str) -> CaCreated:
    async def find() -> CaCreated | None:
        created = [parse_event(m.data) for m in await h.stream_messages(f"{h.root}.ca.*.created")]
        fresh = [c for c in created if isinstance(c, CaCreated) and c.role == "issuing" and c.ca_id != old]
        return fresh[-1] if fresh else None

    found: CaCreated = await eventually(find)
    return found


def _registry(h: Harness) -> CaRegistry:
    """Signing's own CA registry over the same key directory (what a signing process would build)."""
    settings = h.settings("signing")
    assert isinstance(settings, SigningSettings)
    return CaRegistry(KeyStore(settings.key_dir, PASSPHRASE.encode()), settings)


def _crl_der(h: Harness, ca_id: str, serial: str) -> bytes:
    """The CRL of the shard of `ca_id` that lists `serial` (the test stack's issuing CAs are sharded)."""
    url = f"http://127.0.0.1:{h.http_ports['validation']}/crl/{ca_id}/{int(serial, 16) % CRL_SHARDS}.crl"
    with urllib.request.urlopen(url, timeout=5) as response:
        data: bytes = response.read()
        return data


async def test_a_retired_issuing_ca_publishes_a_final_crl_then_destroys_its_key_and_signs_nothing_more(
    stack: Harness, tmp_path: Path
) -> None:
    revoked_before, kept = await stack.enroll("a.corp.internal"), await stack.enroll("b.corp.internal")
    old = revoked_before.issuer_id
    old_cert = x509.load_pem_x509_certificate(revoked_before.chain_pem.encode())
    async with stack.client("operator") as c:
        await c.revoke_as_operator(revoked_before.serial, "superseded", "operator")
    # No wait for signing to read the revocation: its final CRL waits for that itself.
    key_file = stack.key_dir / f"{old}.key.pem"
    assert key_file.exists()

    # The CLI acts as the operator "operator" and signs the retirement with its registered key.
    result = await stack.cli("ca", "retire", old, "--reason", "yearly rotation", "--json")
    assert result.returncode == 0, result.stderr
    destroyed = CaKeyDestroyed.model_validate(json.loads(result.stdout))
    assert destroyed.ca_id == old and destroyed.final_crl_number is not None
    assert destroyed.key_store_answer == "key file overwritten and removed"

    # On the log: CaRetired, then the final CRL, then CaKeyDestroyed naming it.
    events = await _ca_events(stack, old)
    kinds = [type(e).__name__ for _, e in events]
    retired_at = kinds.index("CaRetired")
    assert kinds[-1] == "CaKeyDestroyed" and kinds.count("CaKeyDestroyed") == 1
    # One final CRL per shard; the event names the highest number among them.
    final = [e for _, e in events[retired_at:] if isinstance(e, CrlPublished)]
    assert sorted(e.shard for e in final) == list(range(CRL_SHARDS))  # type: ignore[type-var]
    assert max(e.crl_number for e in final) == destroyed.final_crl_number
    assert all(e.next_update == old_cert.not_valid_after_utc for e in final)
    assert sum(e.revoked_count for e in final) == 1
    retired = events[retired_at][1]
    assert isinstance(retired, CaRetired) and [s.operator for s in retired.signatures] == ["operator"]
    pool = await stack.db()
    assert await pool.fetchval("SELECT retired_by FROM signing.retirements WHERE ca_id = $1", old) == "operator"

    # On disk: the key file is gone; the registry and key store refuse to produce a signer for it.
    assert not key_file.exists() and not list(stack.key_dir.glob(f"{old}.*"))
    registry = _registry(stack)
    async with stack.runtime("signing").pool.acquire() as conn:
        await registry.load(conn)
    assert old not in registry.ids()
    with pytest.raises(KeyStoreError, match=f"CA {old} is not active"):
        registry.key(old)
    with pytest.raises(KeyStoreError, match=f"no key file for CA {old}"):
        registry.keys.load(old)

    # The final CRL verifies with openssl against the retired CA's certificate and lists the revocation.
    crl_der = await asyncio.to_thread(_crl_der, stack, old, revoked_before.serial)
    crl = x509.load_der_x509_crl(crl_der)
    [its_final] = [e for e in final if e.shard == int(revoked_before.serial, 16) % CRL_SHARDS]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == its_final.crl_number
    assert crl.get_revoked_certificate_by_serial_number(int(revoked_before.serial, 16)) is not None
    (tmp_path / "final.crl").write_bytes(crl_der)
    (tmp_path / "ca.pem").write_bytes(old_cert.public_bytes(serialization.Encoding.PEM))
    checked = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(tmp_path / "final.crl"), "-CAfile", str(tmp_path / "ca.pem")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr, checked.stderr

    # New certificates come from the replacement under the same root.
    replacement = await _replacement_of(stack, old)
    [old_created] = [e for _, e in events if isinstance(e, CaCreated)]
    assert replacement.parent_id == old_created.parent_id is not None
    fresh = await stack.enroll("after.corp.internal")
    assert fresh.issuer_id == replacement.ca_id

    # A later revocation of one of its certificates yields no CRL for it, and signing stays healthy:
    # the replacement's CRL after a later revocation shows the CRL publisher ran past it.
    async with stack.client("operator") as c:
        await c.revoke_as_operator(kept.serial, "cessationOfOperation", "operator")
        await c.revoke_as_operator(fresh.serial, "superseded", "operator")
    await eventually(lambda: _revoked_in_signing(stack, fresh.serial))

    async def replacement_crl_lists_fresh() -> bool:
        try:
            crl = x509.load_der_x509_crl(await asyncio.to_thread(_crl_der, stack, replacement.ca_id, fresh.serial))
        except urllib.error.HTTPError:
            return False  # validation has not seen its first CRL yet
        return crl.get_revoked_certificate_by_serial_number(int(fresh.serial, 16)) is not None

    await eventually(replacement_crl_lists_fresh)
    assert await _revoked_in_signing(stack, kept.serial)
    after = await _ca_events(stack, old)
    assert [type(e).__name__ for _, e in after] == kinds  # nothing new for the retired CA
    signing = stack.runtime("signing")
    crls = CrlPublisher(signing, registry)
    assert old not in [ca for ca, *_ in await crls.publish_due()]
    assert await Retirements(signing, registry, crls).finish() == []  # no second "final" CRL
    async with stack.client() as c:
        assert (await c.health("signing"))["status"] == "ok"

    # The audit finds nothing signed by the retired CA after its key was destroyed.
    await eventually(lambda: _archived(stack, "CaKeyDestroyed"))
    result = await stack.cli("audit", "check", "--json")
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] in ("ca_closed", "issuer", "producer")]
    assert findings == []


async def _applied_by_signing(h: Harness, event_id: uuid.UUID) -> bool:
    pool = await h.db()
    return bool(await pool.fetchval("SELECT count(*) FROM signing.tracking WHERE event_id = $1", event_id))


def _retired(ca_id: str) -> CaRetired:
    """A retirement as a script would publish it, without the CLI's check (unsigned: the operator's
    client signs it; `retired_by` is only what the body says)."""
    return CaRetired.first(
        ca_id,
        producer="operator",
        at=utcnow(),
        correlation_id=f"retire-{ca_id}",
        ca_id=ca_id,
        reason="tests",
        retired_by="tests",
    )


async def _signed(h: Harness, command: CaRetired) -> CaRetired:
    """`command` signed by the registered operator, as it will travel."""
    async with h.client("operator") as c:
        signed = c.signed(command)
    assert isinstance(signed, CaRetired)
    return signed


async def test_a_refused_retirement_publishes_nothing_and_signing_refuses_one_that_skips_the_check(
    stack: Harness,
) -> None:
    issued = await stack.enroll("a.corp.internal")
    [root] = [e for _, e in await _ca_events(stack, "*") if isinstance(e, CaCreated) and e.role == "root"]
    unknown = await stack.cli("ca", "retire", "nosuchca", "--reason", "typo")
    assert unknown.returncode == 1 and "ca_unknown" in unknown.stderr and issued.issuer_id in unknown.stderr
    live = await stack.cli("ca", "retire", root.ca_id, "--reason", "too early")
    assert live.returncode == 1 and "ca_has_live_issuing_cas" in live.stderr and issued.issuer_id in live.stderr
    assert await stack.stream_messages(f"{stack.root}.ca.*.retired") == []

    # Published without the CLI's check: signing refuses it too; the root keeps its key and the
    # issuing CA under it goes on issuing.
    bypass = _retired(root.ca_id)
    async with stack.client("operator") as c:
        await c.publish(bypass)
    await eventually(lambda: _applied_by_signing(stack, bypass.event_id))
    pool = await stack.db()
    assert await pool.fetchval("SELECT status FROM signing.cas WHERE ca_id = $1", root.ca_id) == "active"
    assert (stack.key_dir / f"{root.ca_id}.key.pem").exists()
    assert (await stack.enroll("b.corp.internal")).issuer_id == issued.issuer_id
    async with stack.client("operator") as c:
        with pytest.raises(Rejected) as refused:
            await c.retire_ca(root.ca_id, "again", "tests")
    assert [r.code for r in refused.value.reasons] == ["ca_has_live_issuing_cas"]
    assert await stack.stream_messages(f"{stack.root}.ca.*.key_destroyed") == []


async def test_a_retirement_resumes_after_a_crash_and_redeliveries_and_restarts_sign_no_second_final_crl(
    stack: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = (await stack.enroll("a.corp.internal")).issuer_id
    key_file = stack.key_dir / f"{old}.key.pem"

    async def crash(*args: object) -> None:
        raise RuntimeError("simulated crash between the final CRL and the key's destruction")

    monkeypatch.setattr(Retirements, "_destroy_key", crash)
    retired = await _signed(stack, _retired(old))
    async with stack.client("operator") as c:
        await c.publish(retired)
    pool = await stack.db()
    final_number = await eventually(
        lambda: pool.fetchval("SELECT final_crl_number FROM signing.retirements WHERE final_crl_at IS NOT NULL")
    )
    # Recorded as the operator who signed it, not as the `retired_by` its body carries.
    assert await pool.fetchval("SELECT retired_by FROM signing.retirements WHERE ca_id = $1", old) == "operator"
    await stack.stop("signing")
    assert key_file.exists() and await stack.stream_messages(f"{stack.root}.ca.{old}.key_destroyed") == []

    monkeypatch.undo()
    await stack.start("signing")  # resumes: destroys the key, signs no second final CRL
    [destroyed_msg] = await eventually(lambda: stack.stream_messages(f"{stack.root}.ca.{old}.key_destroyed"))
    destroyed = CaKeyDestroyed.model_validate_json(destroyed_msg.data)
    assert destroyed.final_crl_number == final_number and not key_file.exists()
    before = [type(e).__name__ for _, e in await _ca_events(stack, old)]

    # The same CaRetired redelivered, a second one, and a restart with the key file gone change nothing.
    await stack.publish_raw(retired.subject(stack.root), retired.model_dump_json().encode())
    again = await _signed(stack, _retired(old))
    await stack.publish_raw(again.subject(stack.root), again.model_dump_json().encode())
    await eventually(lambda: _applied_by_signing(stack, again.event_id))
    await stack.stop("signing")
    await stack.start("signing")
    fresh = await stack.enroll("after.corp.internal")
    assert fresh.issuer_id == (await _replacement_of(stack, old)).ca_id
    assert [type(e).__name__ for _, e in await _ca_events(stack, old)] == [*before, "CaRetired", "CaRetired"]
    assert before.count("CaKeyDestroyed") == 1
    assert max(e.crl_number for _, e in await _ca_events(stack, old) if isinstance(e, CrlPublished)) == final_number
    async with stack.client() as c:
        assert (await c.health("signing"))["status"] == "ok"
    await eventually(lambda: _archived(stack, "CertificateIssued", 2))
    result = await stack.cli("audit", "check", "--json")
    assert [f for f in json.loads(result.stdout)["findings"] if f["check"] == "ca_closed"] == []


async def test_a_certificate_issued_for_a_renewal_names_the_one_it_supersedes(stack: Harness) -> None:
    issued = await stack.enroll("renewed.corp.internal")
    [msg] = await stack.stream_messages(f"{stack.root}.cert.{issued.aggregate_id}.approved")
    approval = parse_event(msg.data)
    assert isinstance(approval, EnrollmentApproved) and issued.supersedes is None
    renewal_id = str(uuid.uuid4())
    renewal = approval.model_copy(
        update={"event_id": uuid.uuid4(), "aggregate_id": renewal_id, "supersedes": issued.serial}
    )
    await stack.publish_raw(renewal.subject(stack.root), renewal.model_dump_json().encode())
    [new_msg] = await eventually(lambda: stack.stream_messages(f"{stack.root}.cert.{renewal_id}.issued"))
    renewed = CertificateIssued.model_validate_json(new_msg.data)
    assert renewed.supersedes == issued.serial and renewed.serial != issued.serial


async def test_two_signing_replicas_finish_a_retirement_once(stack: Harness) -> None:
    await stack.start_replica("signing", "signing-2")
    old = (await stack.enroll("a.corp.internal")).issuer_id
    async with stack.client("operator") as c:
        destroyed = await c.retire_ca(old, "rotation", "tests")
    assert isinstance(destroyed, CaKeyDestroyed)
    for name in ("signing", "signing-2"):
        await stack.runtime(name).relay.flush()  # nothing either replica decided is still unpublished
    fresh = await stack.enroll("b.corp.internal")
    assert fresh.issuer_id == (await _replacement_of(stack, old)).ca_id
    events = [e for _, e in await _ca_events(stack, old)]
    assert sum(isinstance(e, CaKeyDestroyed) for e in events) == 1
    assert max(e.crl_number for e in events if isinstance(e, CrlPublished)) == destroyed.final_crl_number
    assert not (stack.key_dir / f"{old}.key.pem").exists()
