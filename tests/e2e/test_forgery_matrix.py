"""The forged-event matrix: for every credential (each service, a requester, the operator's NATS
credential without its signing key, the admin) and every event type, the event's body is published
on its own subject and on every subject that credential may publish. Each forgery must be refused
by the server, refused at admission, or land on the log and be parked by every consumer and
flagged by audit; none may change any service's state. The matrix is printed.

Over the production trust model: the harness's nats-server runs the accounts `shared.trust.accounts`
renders (the same as deploy/nats and `make run`), with real NKey identities.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.errors
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import Harness, eventually
from shared.client.sdk import Pending
from shared.contract.binding import Unbound, bind
from shared.contract.events import EVENT_TYPES, Event, OperatorCommand, event_from
from shared.contract.ingress import INTAKES, ingress_subject
from shared.pki.crypto import build_csr, generate_key
from shared.trust import operators
from shared.trust.accounts import Names, publishes
from signals import applied

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_audit_samples import sample

pytestmark = pytest.mark.e2e
CREDENTIALS = ("enrollment", "signing", "validation", "revocation", "audit", "operator", "mallory", "admin")
# Business state: every table of the four deciding services, but their bookkeeping (what they
# applied, published, parked, refused at admission, each replica's heartbeat) and the CRL timer's.
BOOKKEEPING = {
    "replicas",
    "tracking",
    "outbox",
    "parked",
    "schema_migrations",
    "admission_claims",
    "admission_windows",
    "requests",
    "crl_state",
    "crls",
}


@dataclass
class Cell:
    """What became of one event type's forgeries by one credential."""

    own: str = ""  # on the type's own subject: R refused / own (its real channel) / S stored on the log
    sent: list[int] = field(default_factory=list)  # log sequences of forgeries the log stored
    admission: list[int] = field(default_factory=list)  # ingress sequences of requests of another kind
    judged: list[int] = field(default_factory=list)  # ingress sequences of requests of their own kind
    refused: int = 0  # publishes the server refused on subjects the credential may publish (none expected)

    def text(self, flagged: set[int], at_admission: set[int]) -> str:
        parts = [self.own] if self.own else []
        for letter, seqs, done in (("P", self.sent, flagged), ("A", self.admission, at_admission)):
            if seqs:
                ok = sum(seq in done for seq in seqs)
                parts.append(f"{letter}{ok}" if ok == len(seqs) else f"{letter}{ok}/{len(seqs)}!")
        if self.judged:
            parts.append(f"J{len(self.judged)}")
        if self.refused:
            parts.append(f"R{self.refused}!")
        return " ".join(parts)


async def _state(pool: asyncpg.Pool) -> dict[str, str]:
    """A digest of every business table of enrollment, signing, validation and revocation."""
    tables = await pool.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = ANY($1::text[]) "
        "AND table_type = 'BASE TABLE' ORDER BY 1, 2",
        ["enrollment", "signing", "validation", "revocation"],
    )
    digests = {}
    for row in tables:
        if row["table_name"] in BOOKKEEPING:
            continue
        name = f'{row["table_schema"]}."{row["table_name"]}"'
        digests[name] = await pool.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {name} t"
        )
    return digests


def _body(cls: type[Event], aggregate_id: str, targets: dict[str, str]) -> bytes:
    """A valid `cls` body about the deployment's real certificate, CA and pending request, with a
    fresh event id and `aggregate_id`; an operator command is signed by a key nobody registered,
    in the operator's name (what a thief of the operator's NATS credential could do)."""
    data = sample(cls.__name__, event_id=str(uuid.uuid4()), aggregate_id=aggregate_id)
    for key in ("serial", "renews_serial"):
        if key in data:
            data[key] = targets["serial"]
    for key in ("ca_id", "issuer_id"):
        if key in data:
            data[key] = targets["ca"]
    if issubclass(cls, OperatorCommand):
        data["signatures"] = []
        command = event_from(data)
        assert isinstance(command, OperatorCommand)
        return operators.sign(command, "operator", Ed25519PrivateKey.generate()).model_dump_json().encode()
    return json.dumps(data).encode()


def _fresh() -> str:
    return f"f{uuid.uuid4().hex[:12]}"


async def _publish(nc: nats.NATS, subject: str, body: bytes) -> int | None:
    """Publish as a JetStream request; the stream sequence if a stream stored it, else None."""
    try:
        reply = await nc.request(subject, body, timeout=1.0, headers={"Nats-Msg-Id": str(uuid.uuid4())})
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return None
    answer = json.loads(reply.data)
    return int(answer["seq"]) if "seq" in answer and "error" not in answer else None


async def test_every_forgery_is_refused_or_parked_and_flagged_and_changes_nothing(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    h = await harness.serve()
    names = Names.of(h.common_settings)
    root = names.subject_root
    # What a forger would like to change: a live certificate, its CA, and a request waiting for approval.
    issued = await h.enroll("target.corp.internal")
    csr = build_csr(generate_key("ec-p384"), ["approve-me.corp.internal"]).decode()
    async with h.client() as c:
        with pytest.raises(Pending) as waiting:
            await c.enroll(csr, h.token("approve-me.corp.internal", profile="high-assurance"), "high-assurance")
    pending = waiting.value.request_id
    targets = {"serial": issued.serial, "ca": issued.issuer_id, "request": pending, "cert": issued.aggregate_id}
    await applied(h)  # everything of the set-up
    pool = await h.db()
    before = await _state(pool)

    cells: dict[tuple[str, str], Cell] = {}
    sent_by: dict[str, str] = {}  # event id of each request of its own kind -> who sent it
    unsigned: set[int] = set()  # operator commands on their own subjects, without a registered signature
    for credential in CREDENTIALS:
        role = h.role_of(credential)
        nc = await h.connect(credential, max_reconnect_attempts=0)
        attempts: list[tuple[Cell, str, str, bytes]] = []  # (cell, what, subject, body)
        try:
            may = [] if role == "admin" else publishes(role, names)
            kinds = list(INTAKES) if role in ("requester", "validation") else []
            for cls in EVENT_TYPES:
                cell = cells.setdefault((cls.__name__, credential), Cell())
                own_id = {"ca": targets["ca"], "cert": targets["cert"]}.get(cls.aggregate, _fresh())
                if cls.publisher == role and role != "operator":
                    cell.own = "own"  # a service's own channel: what a thief of it could do (see the note)
                else:
                    own_subject = f"{root}.{cls.aggregate}.{own_id}.{cls.verb}"
                    attempts.append((cell, "own", own_subject, _body(cls, own_id, targets)))
                for pattern in may:
                    if pattern != cls.filter(root):
                        forged_id = _fresh()
                        attempts.append(
                            (cell, "log", pattern.replace("*", forged_id, 1), _body(cls, forged_id, targets))
                        )
                for kind in kinds:
                    what = "judged" if INTAKES[kind].event is cls else "admission"
                    subject = ingress_subject(names.ingress_root, credential, kind)
                    body = _body(cls, _fresh(), targets)
                    if what == "judged":
                        sent_by[json.loads(body)["event_id"]] = credential
                    attempts.append((cell, what, subject, body))
            seqs = await asyncio.gather(*(_publish(nc, subject, body) for _, _, subject, body in attempts))
        finally:
            await nc.close()
        for (cell, what, _, _), seq in zip(attempts, seqs, strict=True):
            if what == "own":
                cell.own = "R" if seq is None else "S"
                if seq is not None:
                    cell.sent.append(seq)
                    unsigned.add(seq)  # on its own subject: only an operator's command gets there
            elif seq is None:
                cell.refused += 1
            else:
                {"log": cell.sent, "admission": cell.admission, "judged": cell.judged}[what].append(seq)

    # Every forgery the log took is flagged by audit; every request the ingress took is refused.
    sent = {seq for cell in cells.values() for seq in cell.sent}
    requests = {seq for cell in cells.values() for seq in cell.admission}

    async def flagged() -> set[int]:
        rows = await pool.fetch(
            "SELECT stream_seq FROM audit.findings WHERE stream_seq = ANY($1::bigint[])", list(sent)
        )
        return {r["stream_seq"] for r in rows}

    async def refused_at_admission() -> set[int]:
        rows = await pool.fetch(
            "SELECT stream_seq FROM enrollment.parked WHERE consumer = 'enrollment-admit' "
            "UNION SELECT stream_seq FROM revocation.parked WHERE consumer = 'revocation-admit'"
        )
        return {r["stream_seq"] for r in rows} & requests

    await eventually(lambda: _all(flagged, sent), timeout=180, interval=1.0)
    await eventually(lambda: _all(refused_at_admission, requests), timeout=120, interval=1.0)
    parked, admitted = await flagged(), await refused_at_admission()
    checks = {
        r["stream_seq"]: r["check_name"]
        for r in await pool.fetch(
            "SELECT stream_seq, check_name FROM audit.findings WHERE stream_seq = ANY($1::bigint[])", list(sent)
        )
    }
    assert {checks[seq] for seq in unsigned} == {"operator_signature"}, {checks[seq] for seq in unsigned}
    assert {checks[seq] for seq in sent - unsigned} <= {"subject_mismatch", "malformed", "unknown_type"}
    # A request of the right kind is admitted, in its sender's name whatever its body claimed, and
    # judged like any other (every one here is refused by policy: bad token, CSR or proof).
    judged = sum(len(cell.judged) for cell in cells.values())

    async def admitted_requests() -> dict[str, str]:
        """The sender each admitted request names, by the event id of the request as it was sent."""
        found = {}
        for pattern in ("cert.*.requested", "cert.*.renewal_requested", "revoke.*.requested", "key.*.destroyed"):
            for msg in await h.stream_messages(f"{root}.{pattern}"):
                body = json.loads(msg.data)
                if body.get("causation_id") in sent_by and body.get("producer") in ("enrollment", "revocation"):
                    named = body.get("requester") or body.get("requested_by") or body.get("destroyed_by")
                    found[body["causation_id"]] = named
        return found

    await eventually(lambda: _at_least(admitted_requests, judged), timeout=60, interval=1.0)
    admitted_as = await admitted_requests()
    assert len(admitted_as) == judged  # every one admitted, and in its sender's name (never the "alice" it claimed)
    assert admitted_as == {event_id: sent_by[event_id] for event_id in admitted_as}
    await applied(h, timeout=120)  # the last judgements
    after = await _state(pool)

    legend = (
        "own: the credential's own channel (not a forgery)  R: refused by the server on the type's own subject  "
        "S: stored on its own subject (then parked and flagged)  Pn: n forgeries stored on subjects the credential "
        "may publish, all parked by every consumer and flagged by audit  An: n bodies of another type on its ingress "
        "subjects, all refused at admission  Jn: n requests of their own kind, admitted in the sender's name and "
        "judged by policy  (a '!' marks a failure)"
    )
    width = max(len(cls.__name__) for cls in EVENT_TYPES)
    lines = [f"{'event type':<{width}} | " + " | ".join(f"{c:<12}" for c in CREDENTIALS)]
    for cls in EVENT_TYPES:
        row = [cells[(cls.__name__, c)].text(parked, admitted) for c in CREDENTIALS]
        lines.append(f"{cls.__name__:<{width}} | " + " | ".join(f"{t:<12}" for t in row))
    totals = Counter(cell.own for cell in cells.values())
    summary = (
        f"{len(sent)} forgeries stored on the log ({len(parked)} flagged by audit), {len(requests)} forged requests "
        f"on ingress ({len(admitted)} refused at admission), {totals['R']} refused by the server on their own subject"
    )
    with capsys.disabled():
        print("\n\nForged-event matrix (credential x event type x outcome)\n" + legend + "\n" + "\n".join(lines))
        print(summary + "\n")

    assert parked == sent, f"not flagged by audit: {sorted(sent - parked)[:20]}"
    assert admitted == requests, f"not refused at admission: {sorted(requests - admitted)[:20]}"
    assert not any(cell.refused for cell in cells.values()), "the server refused a subject the credential may publish"
    changed = {table for table in before if before[table] != after.get(table)}
    assert not changed, f"forgeries changed state: {sorted(changed)}"
    async with h.client() as c:
        assert (await c.status(issued.serial)).status == "good"
        assert (await c.request(pending)).status == "pending"
    # No certificate was issued for anything but the set-up's request (the other messages on `issued`
    # subjects are the forgeries signing's own credential stored there, parked and flagged).
    issued_events = [m.subject for m in await h.stream_messages(f"{root}.cert.*.issued") if _binds(m, root)]
    assert issued_events == [f"{root}.cert.{issued.aggregate_id}.issued"]


def _binds(msg: Any, root: str) -> bool:
    try:
        bind(msg.subject, root, msg.data)
    except Unbound:
        return False
    return True


async def _all(read: Any, wanted: set[int]) -> bool:
    return wanted <= await read()


async def _at_least(read: Any, count: int) -> bool:
    return len(await read()) >= count
