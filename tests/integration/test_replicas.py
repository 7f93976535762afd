"""Replicas of a service share one durable consumer; one request still yields one certificate."""

from __future__ import annotations

import asyncio
import json
import uuid

from harness import Harness, eventually
from shared.contract.events import EnrollmentApproved, parse_event
from shared.pki.crypto import build_csr, generate_key
from shared.pki.holder import enrollment_request
from signals import applied

N = 30


async def test_two_signing_replicas_fed_duplicate_approvals_issue_each_request_once(stack: Harness) -> None:
    await stack.start_replica("signing", "signing-2")
    requests = [
        enrollment_request(
            build_csr(generate_key("ec-p256"), [f"r{i}.corp.internal"]).decode(),
            stack.token(f"r{i}.corp.internal"),
            "tests",
        )
        for i in range(N)
    ]
    async with stack.client() as c:
        await asyncio.gather(*(c.publish(r) for r in requests))
    ids = {r.aggregate_id for r in requests}

    async def approvals() -> list[EnrollmentApproved]:
        found = [parse_event(m.data) for m in await stack.stream_messages(f"{stack.root}.cert.*.approved")]
        return [e for e in found if isinstance(e, EnrollmentApproved)] if len(found) == N else []

    # Hand every approval to signing twice more, as concurrent redeliveries to either replica would
    # (published with enrollment's credentials: only enrollment may publish approvals).
    nc = await stack.connect("enrollment")
    try:
        js = stack.js(nc, "enrollment")
        copies = [a for a in await eventually(approvals) for _ in range(2)]
        await asyncio.gather(
            *(
                js.publish(
                    a.subject(stack.root),
                    a.model_dump_json().encode(),
                    stream=stack.common["stream"],
                    headers={"Nats-Msg-Id": str(uuid.uuid4())},
                )
                for a in copies
            )
        )
    finally:
        await nc.close()

    async def all_issued() -> list[str]:
        msgs = await stack.stream_messages(f"{stack.root}.cert.*.issued")
        return [m.subject.split(".")[2] for m in msgs] if len(msgs) >= N else []

    await eventually(all_issued, timeout=30)
    await applied(stack)  # both replicas have worked off and acknowledged every copy
    issued = await all_issued()
    assert sorted(issued) == sorted(ids)  # each request exactly once
    pool = await stack.db()
    assert await pool.fetchval("SELECT count(*) FROM signing.issuances WHERE cert_der IS NOT NULL") == N
    serials = [json.loads(m.data)["serial"] for m in await stack.stream_messages(f"{stack.root}.cert.*.issued")]
    assert len(set(serials)) == N
