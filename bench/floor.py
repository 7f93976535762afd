"""`python -m bench.floor`: what Certbus's shape costs per certificate on this machine, with nothing
of Certbus in it.

The issuance target (1,000 certificates a second on two cores) leaves about 2 ms of CPU per
certificate across every process. This bench measures how much of that the architecture itself
takes, before any of Certbus's own work: the same hops as an issuance, each done the cheapest way
its guarantees allow, by five Python processes written straight on nats-py and asyncpg (no
FastStream, no pydantic, no cryptography, no domain checks):

- a requester publishes a request of ~1 kB to a work-queue ingress stream (JetStream, awaited);
- **enrollment** admits it (a claim row) and puts a request event on the log, then approves it (a
  request row) and puts an approval on the log; it also takes each issued certificate (the
  request's status, a certificate row);
- **signing** records its intent and commits it, then records the certificate (no signature) and
  puts an issued event of ~3.4 kB on the log;
- **validation** and **revocation** each keep the issued certificate (a row);
- **audit** archives every event of the log with its hash chained to the one before.

Every consumer is a durable pull consumer with explicit acks, reading batches through pull requests
kept outstanding on one inbox (as Certbus's batch consumer does); each batch is applied in one
transaction with a tracking row per event (ON CONFLICT DO NOTHING, as exactly-once needs); each
event a batch decides goes through an outbox row, is published with its id as `Nats-Msg-Id` after
the commit, awaited, then its row deleted and the batch acknowledged. Both streams are file-backed
as the log is. The requester waits for each issued event on a core subscription.

Left out, so that this is a floor: the NATS accounts and imports of the trust model (one account,
no authentication here), the log's republish, validation of the events against their bounds, every
check and signature, the audit's indexes and checks, health and metrics.

It prints certificates/s and CPU per certificate by process (services, nats-server, PostgreSQL's
backends), measured from /proc as `bench.issuance` does, at each number of requests in flight in
FLOOR_IN_FLIGHT ("64,256": the issuance bench's, and batches as large as 1,000/s would make), and
writes bench/results/floor.json. FLOOR_N (1,000; at least 8 windows) requests a round, FLOOR_ROUNDS
(3) rounds, the median round reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from bench.environment import fresh_database, postgres_admin, save_result
from bench.procs import CpuMeter, machine_context_switches
from deploy.local.devstack import NatsServer

N = int(os.environ.get("FLOOR_N", "1000"))
ROUNDS = int(os.environ.get("FLOOR_ROUNDS", "3"))
# Requests in flight: the issuance bench's 64, and enough for the batches a rate of 1,000/s would make.
IN_FLIGHT = tuple(int(x) for x in os.environ.get("FLOOR_IN_FLIGHT", "64,256").split(","))
PULL = 256  # messages a consumer keeps asked for, as CERTBUS_BATCH_PULL
LOG, INGRESS = "FLOOR", "FLOORIN"
# The issuance bench's paced run, the same way: requests a second, open loop, for this long.
PACED_RATE = float(os.environ.get("BENCH_PACED_RATE", "500"))
PACED_SECONDS = float(os.environ.get("BENCH_PACED_SECONDS", "4"))
JS_PREFIX = "fjs"  # where the services import the JetStream API, with an account per service

SCHEMA = """
CREATE TABLE tracking (consumer text, event_id uuid, stream_seq bigint, applied_at timestamptz DEFAULT now(),
                       PRIMARY KEY (consumer, event_id));
CREATE TABLE outbox (id bigserial PRIMARY KEY, event_id uuid NOT NULL UNIQUE, subject text NOT NULL,
                     payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE rows (id text PRIMARY KEY, status text NOT NULL, body bytea NOT NULL);
"""
AUDIT_SCHEMA = """
CREATE TABLE archive (stream_seq bigint PRIMARY KEY, subject text NOT NULL, raw bytea NOT NULL, hash bytea NOT NULL);
CREATE TABLE chain_head (id int PRIMARY KEY, seq bigint NOT NULL, hash bytea NOT NULL);
INSERT INTO chain_head VALUES (1, 0, '');
"""
DURABLES = {
    (INGRESS, "admission"): ["floorin.>"],
    (LOG, "requests"): ["floor.requested.>", "floor.issued.>"],
    (LOG, "signing"): ["floor.approved.>"],
    (LOG, "validation"): ["floor.issued.>"],
    (LOG, "revocation"): ["floor.issued.>"],
    (LOG, "audit"): ["floor.>"],
}
ROLES = ("enrollment", "signing", "validation", "revocation", "audit")


def _body(size: int, **fields: Any) -> bytes:
    """A JSON event of about `size` bytes: its fields and base64 padding (a CSR, a certificate)."""
    pad = base64.b64encode(os.urandom(max(0, size * 3 // 4 - 150))).decode()
    return json.dumps({**fields, "der": pad}).encode()


class Durable:
    """A durable pull consumer read through pull requests kept outstanding on one inbox; `handle`
    gets each batch of what has arrived (status messages left out), in stream order."""

    def __init__(
        self, nc: Client, stream: str, name: str, handle: Callable[[list[Msg]], Awaitable[None]], api: str
    ) -> None:
        self.nc, self.stream, self.name, self.handle, self.api = nc, stream, name, handle, api
        self.inbox = nc.new_inbox()
        self.buffer: list[Msg] = []
        self.asked = 0
        self.arrived = asyncio.Event()

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.asked -= 1
            self.buffer.append(msg)
        elif status in ("404", "408", "409"):
            pending = (msg.headers or {}).get("Nats-Pending-Messages")
            self.asked = max(0, self.asked - int(pending)) if pending else 0
        self.arrived.set()

    async def run(self) -> None:
        await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
        subject = f"{self.api}.CONSUMER.MSG.NEXT.{self.stream}.{self.name}"
        while True:
            if self.asked < PULL // 2:
                request = json.dumps({"batch": PULL, "expires": 5_000_000_000}).encode()
                await self.nc.publish(subject, request, reply=self.inbox)
                self.asked += PULL
            if not self.buffer:
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), 1.0)
                continue
            batch, self.buffer = self.buffer, []
            await self.handle(batch)


class Service:
    """One role's process: its connections, and what every consumer does with a batch."""

    def __init__(self, nc: Client, pool: asyncpg.Pool, js_prefix: str) -> None:
        self.nc, self.js, self.pool = nc, nc.jetstream(prefix=js_prefix), pool

    async def apply(
        self,
        consumer: str,
        batch: list[Msg],
        work: Callable[[asyncpg.Connection, list[tuple[Msg, dict[str, Any]]]], Awaitable[list[tuple[str, bytes]]]],
    ) -> None:
        """Apply a batch exactly once in one transaction, publish what it decided, acknowledge it."""
        events = [(m, json.loads(m.data)) for m in batch]
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                fresh = {
                    r["event_id"]
                    for r in await conn.fetch(
                        "INSERT INTO tracking (consumer, event_id, stream_seq) SELECT $1, e, s "
                        "FROM unnest($2::uuid[], $3::bigint[]) AS t(e, s) ON CONFLICT DO NOTHING RETURNING event_id",
                        consumer,
                        [uuid.UUID(b["id"]) for _, b in events],
                        [m.metadata.sequence.stream for m, _ in events],
                    )
                }
                todo = [(m, b) for m, b in events if uuid.UUID(b["id"]) in fresh]
                out = await work(conn, todo) if todo else []
                ids = (
                    await conn.fetch(
                        "INSERT INTO outbox (event_id, subject, payload) SELECT e, s, p "
                        "FROM unnest($1::uuid[], $2::text[], $3::bytea[]) AS t(e, s, p) RETURNING id",
                        [uuid.UUID(json.loads(p)["id"]) for _, p in out],
                        [s for s, _ in out],
                        [p for _, p in out],
                    )
                    if out
                    else []
                )
            if out:
                await asyncio.gather(
                    *(self.js.publish(s, p, headers={"Nats-Msg-Id": json.loads(p)["id"]}) for s, p in out)
                )
                await conn.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in ids])
        for m in batch:
            await m.ack()


async def _rows(conn: asyncpg.Connection, rows: list[tuple[str, str, bytes]]) -> None:
    await conn.execute(
        "INSERT INTO rows SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT (id) DO UPDATE "
        "SET status = EXCLUDED.status, body = EXCLUDED.body",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


async def role(name: str, nats_url: str, db_url: str, js_prefix: str) -> None:
    """Run one role until killed (the JetStream API under `js_prefix`)."""
    nc = await nats.connect(nats_url, pending_size=64 * 1024 * 1024)
    pool = await asyncpg.create_pool(db_url, min_size=2, max_size=4, server_settings={"search_path": name})
    svc = Service(nc, pool, js_prefix)
    durables: list[Durable] = []

    if name == "enrollment":

        async def admit(conn: asyncpg.Connection, todo: list[tuple[Msg, dict[str, Any]]]) -> list[tuple[str, bytes]]:
            await _rows(conn, [("claim-" + b["request"], "admitted", b"") for _, b in todo])
            return [
                (f"floor.requested.{b['request']}", _body(1200, id=str(uuid.uuid4()), request=b["request"]))
                for _, b in todo
            ]

        async def review(conn: asyncpg.Connection, todo: list[tuple[Msg, dict[str, Any]]]) -> list[tuple[str, bytes]]:
            requested = [b for m, b in todo if m.subject.startswith("floor.requested.")]
            issued = [b for m, b in todo if m.subject.startswith("floor.issued.")]
            if requested:
                await _rows(conn, [(b["request"], "approved", b["der"].encode()) for b in requested])
            if issued:
                await _rows(conn, [(b["request"], "issued", b"") for b in issued])
                await _rows(conn, [("cert-" + b["request"], "issued", b["der"].encode()) for b in issued])
            return [
                (f"floor.approved.{b['request']}", _body(1500, id=str(uuid.uuid4()), request=b["request"]))
                for b in requested
            ]

        durables += [
            Durable(nc, INGRESS, "admission", lambda batch: svc.apply("admission", batch, admit), js_prefix),
            Durable(nc, LOG, "requests", lambda batch: svc.apply("requests", batch, review), js_prefix),
        ]
    elif name == "signing":

        async def sign(batch: list[Msg]) -> None:
            approved = [json.loads(m.data) for m in batch]
            async with pool.acquire() as conn, conn.transaction():  # the intent, committed before signing
                await _rows(conn, [(b["request"], "intended", b"") for b in approved])

            async def release(
                conn: asyncpg.Connection, todo: list[tuple[Msg, dict[str, Any]]]
            ) -> list[tuple[str, bytes]]:
                issued = [(b["request"], _body(3400, id=str(uuid.uuid4()), request=b["request"])) for _, b in todo]
                await _rows(conn, [(r, "signed", body) for r, body in issued])
                return [(f"floor.issued.{r}", body) for r, body in issued]

            await svc.apply("signing", batch, release)

        durables.append(Durable(nc, LOG, "signing", sign, js_prefix))
    elif name in ("validation", "revocation"):

        async def keep(conn: asyncpg.Connection, todo: list[tuple[Msg, dict[str, Any]]]) -> list[tuple[str, bytes]]:
            await _rows(conn, [(b["request"], "good", b["der"].encode()) for _, b in todo])
            return []

        durables.append(Durable(nc, LOG, name, lambda batch: svc.apply(name, batch, keep), js_prefix))
    else:  # audit: the archive is its own record of what it has applied (by sequence)

        async def archive(batch: list[Msg]) -> None:
            async with pool.acquire() as conn, conn.transaction():
                seq, head = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
                rows = []
                for m in batch:
                    s = m.metadata.sequence.stream
                    if s <= seq:
                        continue
                    head = hashlib.sha256(head + s.to_bytes(8, "big") + m.subject.encode() + m.data).digest()
                    rows.append((s, m.subject, m.data, head))
                    seq = s
                if rows:
                    await conn.execute(
                        "INSERT INTO archive SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bytea[])",
                        *([r[i] for r in rows] for i in range(4)),
                    )
                    await conn.execute("UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1", seq, head)
            for m in batch:
                await m.ack()

        durables.append(Durable(nc, LOG, "audit", archive, js_prefix))
    print("ready", flush=True)
    await asyncio.gather(*(d.run() for d in durables))


async def _setup(nats_url: str, db_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for name, subject, retention in (
        (LOG, "floor.>", RetentionPolicy.LIMITS),
        (INGRESS, "floorin.>", RetentionPolicy.WORK_QUEUE),
    ):
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[subject],
                retention=retention,
                storage=StorageType.FILE,
                duplicate_window=120.0,
                discard=DiscardPolicy.NEW,
            )
        )
    for (stream, name), subjects in DURABLES.items():
        await js.add_consumer(
            stream,
            ConsumerConfig(
                durable_name=name,
                filter_subjects=subjects,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_ack_pending=4096,
            ),
        )
    await nc.close()
    conn = await asyncpg.connect(db_url)
    for r in ROLES:
        await conn.execute(f"CREATE SCHEMA {r}; SET search_path = {r};" + (AUDIT_SCHEMA if r == "audit" else SCHEMA))
    await conn.close()


async def _round(nc: Client, n: int, in_flight: int, paced: float | None = None) -> tuple[float, list[float]]:
    """Publish `n` requests, `in_flight` at a time; certificates/s and each request's latency. With
    `paced` (requests a second), request i is due at start + i / paced whatever the outcomes so far
    (open loop, as the issuance bench's paced run), and its latency counts from then."""
    js = nc.jetstream()
    waiting: dict[str, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    async def on_issued(msg: Msg) -> None:
        future = waiting.pop(msg.subject.rsplit(".", 1)[1], None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())

    sub = await nc.subscribe("floor.issued.>", cb=on_issued)
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []

    async def one(i: int) -> None:
        if paced is not None:
            await asyncio.sleep(max(0.0, start + i / paced - time.perf_counter()))
        async with gate:
            request = uuid.uuid4().hex
            waiting[request] = done = loop.create_future()
            began = time.perf_counter() if paced is None else start + i / paced
            body = _body(1000, id=str(uuid.uuid4()), request=request)
            await js.publish(f"floorin.bench.{request}", body, headers={"Nats-Msg-Id": json.loads(body)["id"]})
            latencies.append(await asyncio.wait_for(done, 60) - began)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - start)
    await sub.unsubscribe()
    return rate, latencies


async def _quiet(nc: Client, timeout_s: float = 30.0) -> None:
    """Wait until every durable has applied and acknowledged everything it was delivered."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        infos = [await js.consumer_info(stream, name) for stream, name in DURABLES]
        if all(not i.num_pending and not i.num_ack_pending for i in infos):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the consumers did not catch up")


async def _measure(
    nc: Client, db: asyncpg.Connection, server: NatsServer, procs: dict[str, Any], in_flight: int
) -> dict[str, Any]:
    """ROUNDS rounds at `in_flight` requests in flight: the median round's figures."""
    n = max(N, 8 * in_flight)
    rates, cpus, switches, p50s = [], [], [], []
    for i in range(ROUNDS):
        query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        assert server.proc is not None
        groups = {
            **{r: [p.pid] for r, p in procs.items()},
            "nats": [server.proc.pid],
            "postgresql": [r["pid"] for r in await db.fetch(query)],
        }
        meter = CpuMeter()
        meter.start(groups)
        ctxt = machine_context_switches()
        rate, latencies = await _round(nc, n, in_flight)
        await _quiet(nc)  # what the consumers do after the last issued event counts too
        used = meter.stop(groups)
        switches.append((machine_context_switches() - ctxt) / n)
        per = {k: v * 1000 / n for k, v in used.items()}
        cpus.append(per)
        rates.append(rate)
        p50s.append(statistics.median(latencies) * 1000)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
        print(
            f"  {in_flight} in flight, round {i + 1}: {rate:7.1f} certs/s, "
            f"CPU ms per certificate {sum(per.values()):.2f}: {shown}"
        )
    middle = sorted(range(ROUNDS), key=lambda i: rates[i])[ROUNDS // 2]
    cpu = {k: round(v, 2) for k, v in sorted(cpus[middle].items(), key=lambda kv: -kv[1])}
    return {
        "n": n,
        "certs_per_s": round(rates[middle], 1),
        "rounds_certs_per_s": [round(r, 1) for r in rates],
        "latency_p50_ms": round(p50s[middle], 1),
        "cpu_ms_per_certificate": {**cpu, "total": round(sum(cpus[middle].values()), 2)},
        "context_switches_per_certificate": round(statistics.median(switches), 1),
    }


def _accounts_config(path: Path) -> None:
    """A server configuration in the trust model's shape: the streams in an account of their own
    (whose one user is the requester and admin here), each service in its own account reaching them
    only through service imports (publishes, the JetStream API under a prefix, acknowledgements)."""
    imports = ", ".join(
        f'{{service: {{account: LOG, subject: "{s}"}}{to}}}'
        for s, to in (("floor.>", ""), ("floorin.>", ""), ("$JS.API.>", f', to: "{JS_PREFIX}.>"'), ("$JS.ACK.>", ""))
    )
    services = "\n".join(
        f"  {r.upper()} {{ users: [{{user: {r}, password: {r}}}], imports: [{imports}] }}" for r in ROLES
    )
    exports = '{service: "floor.>"}, {service: "floorin.>"}, {service: "$JS.API.>", response_type: "stream"}, '
    exports += '{service: "$JS.ACK.>"}'
    path.write_text(
        "accounts {\n"
        f"  LOG {{ jetstream: enabled, users: [{{user: log, password: log}}], exports: [{exports}] }}\n"
        f"{services}\n}}\n"
    )


async def _mode(db_url: str, accounts: bool, in_flights: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a nats-server (one account, or the trust model's shape) and the five roles on database
    `db_url`; measure at each number of requests in flight, then paced; stop them all. The figures
    by number in flight, and the paced run's (empty if it was skipped)."""
    logs = Path(tempfile.mkdtemp(prefix="certbus-floor-"))
    config = None
    if accounts:
        config = logs / "server.conf"
        _accounts_config(config)
    server = NatsServer(monitor=False, config_file=config, pid_file=logs / "nats.pid").start()
    url = server.url.replace("nats://", "nats://log:log@") if accounts else server.url
    procs: dict[str, subprocess.Popen[bytes]] = {}
    at: dict[str, Any] = {}
    paced: dict[str, Any] = {}
    try:
        await _setup(url, db_url)
        for r in ROLES:
            role_url = server.url.replace("nats://", f"nats://{r}:{r}@") if accounts else server.url
            procs[r] = subprocess.Popen(
                [sys.executable, "-m", "bench.floor", "--role", r, "--nats", role_url, "--db", db_url]
                + (["--js-prefix", JS_PREFIX] if accounts else []),
                stdout=subprocess.PIPE,
                stderr=(logs / f"{r}.log").open("wb"),
            )
        for r, p in procs.items():
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"{r} did not start: see {logs / (r + '.log')}")
        nc = await nats.connect(url)
        db_conn = await asyncpg.connect(db_url)
        await _round(nc, 200, 64)  # warm: connections, prepared statements, caches
        for in_flight in in_flights:
            at[str(in_flight)] = await _measure(nc, db_conn, server, procs, in_flight)
        if PACED_SECONDS > 0:
            achieved, latencies = await _round(nc, round(PACED_RATE * PACED_SECONDS), 5000, paced=PACED_RATE)
            await _quiet(nc)
            ordered = sorted(latencies)
            paced = {
                "offered_per_s": PACED_RATE,
                "achieved_certs_per_s": round(achieved, 1),
                "latency_p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
                "latency_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
            }
        await nc.close()
        await db_conn.close()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
        server.stop()
    shutil.rmtree(logs, ignore_errors=True)
    return at, paced


async def main() -> None:
    print(
        f"architecture floor: the issuance's hops with nothing of Certbus in them, {ROUNDS} rounds at each of "
        f"{', '.join(map(str, IN_FLIGHT))} in flight; then at {IN_FLIGHT[0]} with an account per service"
    )
    result: dict[str, Any] = {"rounds": ROUNDS}
    async with postgres_admin() as admin:
        for key, accounts, in_flights in (("in_flight", False, IN_FLIGHT), ("accounts_in_flight", True, IN_FLIGHT[:1])):
            async with fresh_database(admin, "certbus_floor") as db_url:
                result[key], paced = await _mode(db_url, accounts, in_flights)
            if paced:
                result[key.replace("in_flight", "paced")] = paced
    for key, how in (("in_flight", "one account"), ("accounts_in_flight", "an account per service")):
        if shown := result.get(key.replace("in_flight", "paced")):
            print(
                f"architecture floor, {how}, paced at {PACED_RATE:.0f}/s for {PACED_SECONDS:.0f} s (open loop): "
                f"achieved {shown['achieved_certs_per_s']}/s, p50 {shown['latency_p50_ms']} ms, "
                f"p99 {shown['latency_p99_ms']} ms"
            )
        for flight, figures in result[key].items():
            cpu = figures["cpu_ms_per_certificate"]
            print(
                f"architecture floor, {how}, {flight} in flight: {figures['certs_per_s']} certs/s "
                f"(median of {ROUNDS}), p50 {figures['latency_p50_ms']:.0f} ms, CPU per certificate {cpu['total']} ms "
                f"({', '.join(f'{k} {v}' for k, v in cpu.items() if k != 'total')}), "
                f"context switches per certificate {figures['context_switches_per_certificate']}"
            )
    save_result("floor", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=ROLES)
    parser.add_argument("--nats")
    parser.add_argument("--db")
    parser.add_argument("--js-prefix", default="$JS.API")
    args = parser.parse_args()
    asyncio.run(role(args.role, args.nats, args.db, args.js_prefix) if args.role else main())
