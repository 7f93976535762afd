"""Poison on the log: messages over the bounds, with a huge aggregate id, nested past the bounds, with
an invalid CRL number, on another type's subject, not JSON, on a subject with a NUL. Audit archives
each verbatim and chains it like any other, raises one finding for each, and the chain, `verify`,
`replay`, the checks and the report go on past them; first against the archive's SQL alone, then
over a running stack."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import PIPE
from typing import Any

import asyncpg
import nats.js.errors
import pytest

from harness import Harness, eventually
from services.audit import domain, store
from shared.contract.events import CrlPublished, EnrollmentRequested, ProvisionerRegistered, utcnow
from signals import audit_caught_up, audit_checks_ran

MIGRATIONS = Path(store.__file__).parent / "migrations"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PEM = "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n"


def _request(root: str, request_id: str, **changes: Any) -> tuple[str, bytes]:
    """An EnrollmentRequested for `request_id` on its subject, valid unless the id or `changes` are not."""
    event = EnrollmentRequested(
        aggregate_id="placeholder",
        occurred_at=NOW,
        correlation_id="poison",
        producer="enrollment",
        csr_pem=PEM,
        token="t.o.k",
        token_proof="cHJvb2Y=",
        requester="tests",
    )
    data = {**json.loads(event.model_dump_json()), "aggregate_id": request_id, **changes}
    return f"{root}.cert.{request_id}.requested", json.dumps(data).encode()


def _crl(root: str, crl_number: Any) -> tuple[str, bytes]:
    event = CrlPublished(
        aggregate_id="poison-ca",
        occurred_at=NOW,
        correlation_id="poison",
        producer="signing",
        ca_id="poison-ca",
        crl_number=1,
        this_update=NOW,
        next_update=NOW + timedelta(days=1),
        revoked_count=0,
        object_bucket="crls",
        object_name="poison.crl",
        sha256="ab" * 32,
        size=1,
    )
    return event.subject(root), json.dumps({**json.loads(event.model_dump_json()), "crl_number": crl_number}).encode()


def _provisioner() -> bytes:
    return (
        ProvisionerRegistered(
            aggregate_id="sneaky",
            occurred_at=utcnow(),
            correlation_id="poison",
            producer="operator",
            name="sneaky",
            public_key_pem=PEM,
            registered_by="mallory",
        )
        .model_dump_json()
        .encode()
    )


def poison(root: str) -> list[tuple[str, bytes, str]]:
    """(subject, bytes, the finding audit must raise) for each kind of poison."""
    long_id = "L" * 3000  # one subject token: a btree index row may not hold it
    subject, body = _request(root, "deep")
    deep = body.replace(b'"t.o.k"', b"[" * 5000 + b"]" * 5000)
    return [
        (f"{root}.cert.junk.requested", b"\x00junk" * 40_000, "oversize"),  # 200 kB
        (_request(root, "short")[0], _request(root, "short", aggregate_id="a" * 50_000)[1], "subject_mismatch"),
        (*_request(root, long_id), "malformed"),
        (subject, deep, "malformed"),
        (*_crl(root, 2**200), "malformed"),
        (*_crl(root, "twelve"), "malformed"),
        (f"{root}.cert.{uuid.uuid4().hex}.requested", _provisioner(), "subject_mismatch"),
        (f"{root}.cert.nojson.requested", b"\xff\xfe{not json\x00", "malformed"),
        (f"{root}.cert.held.requested", b'{"event_type": "CertificateHeld", "aggregate_id": "held"}', "unknown_type"),
        (f"{root}.cert.a\x00b.requested", b"{}", "unknown_type"),
        (
            _request(root, "fields")[0],
            _request(root, "fields", producer=["a\x00", "\ud800"], occurred_at="0001-01-01T00:00:00+14:00")[1],
            "malformed",
        ),
    ]


# --- the archive alone ---------------------------------------------------------------------------


@pytest.fixture
def pool(audit_archive: asyncpg.Pool) -> asyncpg.Pool:
    return audit_archive


@pytest.mark.parametrize("grouped", [True, False], ids=["one-group", "one-by-one"])
async def test_every_poison_message_is_archived_verbatim_and_chained(pool: asyncpg.Pool, grouped: bool) -> None:
    root = "pki"
    messages = [(subject, raw) for subject, raw, _ in poison(root)]
    messages += [(f"{root}.junk.\udcff.x", b"{}")]  # a subject that is not UTF-8, as surrogateescape decodes it
    messages += [_request(root, "after")]
    log = [(seq, subject, raw) for seq, (subject, raw) in enumerate(messages, start=1)]
    problems: dict[int, str] = {}
    for batch in [log] if grouped else [[m] for m in log]:
        async with pool.acquire() as conn, conn.transaction():
            archived = await store.archive(conn, batch, root)
        problems.update((seq, p.check) for seq, p in archived.problems)

    expected = [check for _, _, check in poison(root)] + ["unknown_type"]
    assert problems == dict(enumerate(expected, start=1))  # the valid event after them is no problem
    head = domain.GENESIS
    for seq, subject, raw in log:
        head = domain.link(head, seq, subject, raw)
    row = await pool.fetchrow("SELECT seq, hash FROM chain_head")
    assert (row["seq"], bytes(row["hash"])) == (len(log), head)
    async with pool.acquire() as conn:
        assert [tuple(r[:3]) for r in [row async for row in store.archive_rows(conn)]] == log
        last = await conn.fetchrow("SELECT event_type, aggregate_id FROM archive WHERE stream_seq = $1", len(log))
        assert tuple(last) == ("EnrollmentRequested", "after")
        again = await store.archive(conn, log, root)  # a redelivery of everything
    assert (again.count, again.problems) == (0, [])


# --- a running stack -------------------------------------------------------------------------------


async def _archived_everything(h: Harness) -> bool:
    """Whether audit's chain reaches the end of the stream (read with audit's own connection)."""
    info = await h.runtime("audit").js.stream_info(h.common["stream"])
    return bool(await (await h.db()).fetchval("SELECT seq FROM audit.chain_head") == info.state.last_seq)


async def test_poison_on_the_log_is_archived_flagged_and_stops_nothing(stack: Harness) -> None:
    root = stack.root
    # A NUL in a subject is tested on the archive above: the other services cannot park one yet.
    sent = [(subject, raw, check) for subject, raw, check in poison(root) if "\x00" not in subject]
    for subject, raw, _ in sent:
        await stack.publish_raw(subject, raw)  # as the identity that may publish on the subject
    # A 1 MiB message never reaches the log: the stream refuses anything over 256 KiB.
    nc = await stack.connect("enrollment")
    try:
        with pytest.raises(nats.js.errors.BadRequestError) as too_big:
            await stack.js(nc, "enrollment").publish(
                f"{root}.cert.huge.requested", b"x" * (1024 * 1024 - 512), stream=stack.common["stream"]
            )
        assert too_big.value.err_code == 10054  # message size exceeds maximum allowed
    finally:
        await nc.close()
    issued = await stack.enroll("after-poison.corp.internal")  # the log and the services go on
    pool = await stack.db()

    async def archived() -> dict[int, str] | None:
        rows = await pool.fetch(
            "SELECT stream_seq, raw FROM audit.archive WHERE raw = ANY($1::bytea[])", [raw for _, raw, _ in sent]
        )
        check = {raw: check for _, raw, check in sent}
        return {r["stream_seq"]: check[bytes(r["raw"])] for r in rows} if len(rows) == len(sent) else None

    poisoned: dict[int, str] = await eventually(archived, timeout=20)

    async def raised() -> dict[int, str] | None:
        rows = await pool.fetch(
            "SELECT stream_seq, check_name FROM audit.findings WHERE stream_seq = ANY($1::bigint[])", list(poisoned)
        )
        return {r["stream_seq"]: r["check_name"] for r in rows} if len(rows) == len(poisoned) else None

    assert await eventually(raised, timeout=20) == poisoned
    await eventually(lambda: _archived_everything(stack), timeout=20)
    hashes = await pool.fetch("SELECT hash FROM audit.archive WHERE stream_seq = ANY($1::bigint[])", list(poisoned))
    assert all(r["hash"] is not None for r in hashes)  # chained, like any other message

    await eventually(lambda: stack.stream_messages(f"{root}.audit.*.checkpoint"))  # signed past the poison
    await audit_caught_up(stack)  # and nothing more to sign: the log stays put while it is read

    async with stack.client("operator") as c:  # an operator may ask audit anything
        history = await c.history(issued.serial)
        assert "CertificateIssued" in [e.event_type for e in history.events]
        verified = await c.verify()
        assert verified.clean, verified
        assert verified.archived_events == verified.stream_last_seq and verified.checkpoints_checked >= 1
        findings = await c.findings(limit=100)
        raised_events = {
            e.event["stream_seq"]: e.event["check"]
            for e in findings.findings
            if e.event_type == "AuditFindingRaised" and e.event["stream_seq"] in poisoned
        }
        assert raised_events == poisoned  # one AuditFindingRaised per poison message, published
        checked = await c.check()
        assert poisoned.items() <= {(f.stream_seq, f.check) for f in checked.findings}
        report = await c.report()  # what binds is folded field by field; what does not is counted
        assert report.certificates >= 1 and report.malformed >= 4 and report.ignored >= 3, report
        replayed = await c.replay(verify=True)
        assert replayed.equal and replayed.verified is not None and replayed.verified.clean, replayed

    # The scheduled checks (every second here) raise nothing about them a second time.
    await audit_checks_ran(stack)
    finding_messages = await stack.stream_messages(f"{root}.finding.*.raised")
    about = [json.loads(m.data)["stream_seq"] for m in finding_messages]
    assert sorted(seq for seq in about if seq in poisoned) == sorted(poisoned)

    listed = await stack.cli("audit", "findings", "--limit", "100", "--json")
    assert listed.returncode == 1, listed.stderr  # findings are alarms
    checks = {e["event"]["check"] for e in json.loads(listed.stdout) if e["event_type"] == "AuditFindingRaised"}
    assert checks >= {"oversize", "malformed", "unknown_type", "subject_mismatch"}
    table = await stack.cli("audit", "findings", "--limit", "100")
    assert table.returncode == 1 and "Traceback" not in table.stderr and "seq" in table.stdout, table.stderr
    offline = await _offline(stack, "verify", "--json")
    assert offline.returncode == 0 and json.loads(offline.stdout)["clean"], offline.stdout + offline.stderr


async def _offline(h: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    """`certbus-audit` (the standalone auditor tool) with audit's settings."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.audit.offline", *args, env=h.env("audit"), stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, stdout.decode(), stderr.decode())
