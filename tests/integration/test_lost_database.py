"""A service whose whole database is lost while its durables on the log live on rebuilds it from the
log on its next start: it reads back what it published, applies the log again from sequence 1,
publishes no decision a second time, and signing creates no CA and signs nothing again. Audit,
which rebuilds itself (`certbus audit replay`), starts as before."""

from __future__ import annotations

import json

import pytest

from harness import Harness, eventually
from shared.contract.events import CertificateIssued
from shared.pki.crypto import PrivateKey, build_csr, generate_key
from shared.runtime.service import published_subjects


async def _published(stack: Harness, name: str) -> list[tuple[str, bytes]]:
    """Every decision the service published on the log (its subjects are its own alone). Not its
    CRLs: signing publishes one when it is due, rebuilt or not (see `_crl_numbers`)."""
    found = []
    for subject in published_subjects(name, stack.root):
        if not subject.endswith(".crl_published"):
            found += [(m.subject, m.data) for m in await stack.stream_messages(subject)]
    return sorted(found)


async def _crl_numbers(stack: Harness) -> dict[str, list[int]]:
    """Each CA's (each CA shard's) CRL numbers in log order: a rebuilt signing never signs a number twice."""
    numbers: dict[str, list[int]] = {}
    for m in await stack.stream_messages(f"{stack.root}.ca.*.crl_published"):
        event = json.loads(m.data)
        which = event["ca_id"] if event.get("shard") is None else f"{event['ca_id']} shard {event['shard']}"
        numbers.setdefault(which, []).append(event["crl_number"])
    return numbers


async def _enroll_with_key(stack: Harness, name: str) -> tuple[PrivateKey, CertificateIssued]:
    key = generate_key("ec-p256")
    async with stack.client() as c:
        issued = await c.enroll(build_csr(key, [name]).decode(), stack.token(name), "tls-server")
    return key, issued


@pytest.mark.parametrize("service", ["signing", "enrollment", "revocation", "validation"])
async def test_a_service_that_lost_its_database_rebuilds_it_from_the_log_and_decides_nothing_twice(
    stack: Harness, service: str
) -> None:
    _, kept = await _enroll_with_key(stack, "kept.corp.internal")
    key, revoked = await _enroll_with_key(stack, "revoked.corp.internal")
    async with stack.client() as c:
        await c.revoke(revoked.serial, "superseded", key=key)
    keys_before = sorted(p.name for p in stack.key_dir.iterdir())
    before = await _published(stack, service)
    await stack.lose_database(service)

    await stack.start(service)
    rebuild = await stack.rebuilt(service)
    assert rebuild["through_seq"] > 0 and rebuild["divergent"] == 0, rebuild
    assert rebuild["applied"] > 0, f"nothing applied again: {rebuild}"
    if service == "revocation":
        # Revocation decides the holder's request again; the log already holds that answer.
        assert rebuild["suppressed"] >= 1, rebuild
    assert await _published(stack, service) == before, "a decision was published again"
    for ca, numbers in (await _crl_numbers(stack)).items():
        assert numbers == sorted(set(numbers)), f"CA {ca} signed a CRL number twice or out of order: {numbers}"
    assert sorted(p.name for p in stack.key_dir.iterdir()) == keys_before, "a key was created"
    pool = await stack.db()
    parked = await pool.fetchval(f"SELECT count(*) FROM {service}.parked")
    assert parked == 0
    # What it read back is forgotten once the rebuild is over: the outbox's trigger no longer reads
    # the payload of every event the service decides from now on.
    assert rebuild["recorded"] >= len(before) and await pool.fetchval(f"SELECT count(*) FROM {service}.recorded") == 0

    # The rebuilt service serves: the old certificates are known as they were, a new one is issued.
    async with stack.client() as c:

        async def known() -> bool:
            statuses = [(await c.status(serial)).status for serial in (kept.serial, revoked.serial)]
            return statuses == ["good", "revoked"]

        await eventually(known, timeout=30)
    issued = await stack.enroll("after.corp.internal")
    assert issued.issuer_id == kept.issuer_id
    after = await _published(stack, service)
    assert len(after) > len(before) or service in ("validation", "revocation")


async def test_audit_starts_as_before_and_a_service_with_a_new_durable_replays(stack: Harness) -> None:
    issued = await stack.enroll("replayed.corp.internal")
    await stack.lose_database("audit")
    await stack.start("audit")  # audit rebuilds itself with `certbus audit replay`
    # Validation forgotten the way a rebuild asks for: its schema and its durable, so it replays.
    await stack.stop("validation")
    await stack.forget("validation", "validation-status")
    await stack.start("validation")
    async with stack.client() as c:

        async def good() -> bool:
            return (await c.status(issued.serial)).status == "good"

        await eventually(good)


async def test_every_service_loses_its_database_at_once_and_the_system_rebuilds_and_serves(stack: Harness) -> None:
    """The whole database cluster gone at once (audit aside, which replays on its own): each service
    rebuilds from the log with no other to lean on, and nothing is published twice."""
    services = ["enrollment", "signing", "revocation", "validation"]
    key, revoked = await _enroll_with_key(stack, "gone.corp.internal")
    async with stack.client() as c:
        await c.revoke(revoked.serial, "keyCompromise", key=key)
    before = {name: await _published(stack, name) for name in services}
    for name in services:
        await stack.lose_database(name)
    for name in services:
        await stack.start(name)
    for name in services:
        assert (await stack.rebuilt(name))["divergent"] == 0
        assert await _published(stack, name) == before[name], f"{name} published a decision again"
    async with stack.client() as c:

        async def revoked_still() -> bool:
            return (await c.status(revoked.serial)).status == "revoked"

        await eventually(revoked_still, timeout=30)
    assert (await stack.enroll("after-all.corp.internal")).issuer_id == revoked.issuer_id
