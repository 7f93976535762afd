"""A burst of enrollments against a running LocalStack, as requesters send them (publish and wait,
many in flight, the same request again after a failure), and what the log says afterwards.

Used by the fault suite (tests/faults, `make faults`) and the soak (bench/soak.py, `make soak`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import nats.errors
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.local.devstack import REPLICA_PORT_STEP, SERVICES, LocalStack, free_port, free_run
from shared.base.settings import CommonSettings
from shared.client.cli import provisioner
from shared.client.errors import Pending, Rejected
from shared.client.sdk import CertbusClient
from shared.contract.events import EVENT_TYPES, EnrollmentRequested, utcnow
from shared.pki.crypto import build_csr
from shared.pki.holder import enrollment_request
from shared.pki.tokens import create_token
from shared.trust.accounts import DURABLES

Fault = Callable[[], Awaitable[None]]
NODES = 3  # NATS nodes of the cluster
REPLICAS = 2  # processes of each service


@contextlib.contextmanager
def cluster_stack(keep: bool = False) -> Iterator[LocalStack]:
    """`make run CLUSTER=3` on free loopback ports with a home of its own, ready; stopped and
    deleted after (kept with `keep`). Admission does not throttle its one busy requester."""
    # Under a directory the `postgres` user may enter: the stack runs PostgreSQL as that user.
    outer = Path(tempfile.mkdtemp(prefix="certbus-cluster-"))
    outer.chmod(0o755)
    http_base = free_run(5, steps=tuple(range(0, REPLICA_PORT_STEP * REPLICAS, REPLICA_PORT_STEP)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env.update(
        CERTBUS_NATS_URL=f"nats://127.0.0.1:{free_run(NODES)}",
        CERTBUS_NATS_CLUSTER_PORT=str(free_run(NODES)),
        CERTBUS_PG_PORT=str(free_port()),
        CERTBUS_HTTP_PORT_BASE=str(http_base),
        CERTBUS_PUBLIC_BASE_URL=f"http://127.0.0.1:{http_base}",
        CERTBUS_ADMISSION_RATE_PER_MIN="10000000",
        PYTHONUNBUFFERED="1",
    )
    logs = outer / "logs"
    logs.mkdir()
    stack = LocalStack(outer / "home", env, cluster=NODES, replicas=REPLICAS, log_dir=logs)
    try:
        stack.start_infrastructure()
        missing = stack.start_services()
        if missing:
            raise RuntimeError(f"the cluster is not ready: {missing}")
        yield stack
    finally:
        stack.stop()
        if keep:
            print(f"the cluster's home and logs are kept in {outer}", file=sys.stderr)
        else:
            shutil.rmtree(outer, ignore_errors=True)


@dataclass
class Outcome:
    """What one request's requester saw."""

    request_id: str
    sent_at: float
    issued_at: float | None = None
    attempts: int = 0
    refused: str | None = None
    failures: list[tuple[float, str]] = field(default_factory=list)  # (when, what) of each failed attempt

    @property
    def latency(self) -> float | None:
        return None if self.issued_at is None else self.issued_at - self.sent_at


@dataclass
class Burst:
    """A finished burst: every request's outcome and when each fault was injected."""

    outcomes: list[Outcome]
    started: float
    finished: float
    faults_at: list[float] = field(default_factory=list)

    @property
    def issued(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.issued_at is not None]

    def latencies(self) -> list[float]:
        return sorted(o.latency for o in self.outcomes if o.latency is not None)

    def percentile(self, q: float) -> float:
        values = self.latencies()
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    def longest_stall(self) -> float:
        """The longest a request waited for its certificate."""
        return max(self.latencies(), default=0.0)

    def until_issuing_again(self) -> float:
        """The longest time from a fault to the next certificate a requester received (faults
        injected after the last certificate of the burst do not count)."""
        issued = sorted(o.issued_at for o in self.issued if o.issued_at is not None)
        gaps = [next(t for t in issued if t > at) - at for at in self.faults_at if issued and at < issued[-1]]
        return max(gaps, default=0.0)

    def in_flight_done_after(self) -> list[float]:
        """For each fault, how long after it the last request that was in flight at that moment
        received its certificate (a killed replica's messages and unpublished decisions among
        them): 0 when nothing was in flight."""
        return [
            max(
                (
                    o.issued_at - at
                    for o in self.issued
                    if o.sent_at <= at and o.issued_at is not None and o.issued_at > at
                ),
                default=0.0,
            )
            for at in self.faults_at
        ]

    def faults_during(self) -> int:
        """How many faults were injected while certificates were still being issued."""
        last = max((o.issued_at for o in self.issued if o.issued_at is not None), default=self.started)
        return sum(1 for at in self.faults_at if at < last)

    def summary(self) -> dict[str, Any]:
        seconds = self.finished - self.started
        done_after = self.in_flight_done_after()
        return {
            "requests": len(self.outcomes),
            "issued": len(self.issued),
            "refused": sum(1 for o in self.outcomes if o.refused),
            "retried": sum(1 for o in self.outcomes if o.attempts > 1),
            "seconds": round(seconds, 2),
            "per_second": round(len(self.issued) / seconds, 1) if seconds else 0.0,
            "latency_p50_s": round(self.percentile(0.5), 3),
            "latency_p99_s": round(self.percentile(0.99), 3),
            "longest_stall_s": round(self.longest_stall(), 3),
            "until_issuing_again_s": round(self.until_issuing_again(), 3),
            "in_flight_done_after_fault_s": round(max(done_after, default=0.0), 3),
            "in_flight_done_after_each_fault_s": [round(s, 3) for s in done_after],
            "retried_because": dict(Counter(what.split("(", 1)[0] for o in self.outcomes for _, what in o.failures)),
            "faults": len(self.faults_at),
            "faults_during_the_burst": self.faults_during(),
        }


class Requester:
    """One requester identity's connection, opened again when the NATS node under it goes away."""

    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.client: CertbusClient | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> CertbusClient:
        async with self._lock:
            if self.client is None or not self.client.connected:
                if self.client is not None:
                    with contextlib.suppress(Exception):
                        await self.client.close()
                client = CertbusClient(self.settings, requester=self.settings.identity or "requester")
                await client.connect(timeout=3.0)
                self.client = client
            return self.client

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()


async def run_burst(
    stack: LocalStack,
    count: int,
    in_flight: int = 64,
    faults: list[tuple[float, Fault]] | None = None,
    give_up_s: float = 600.0,
    profile: str = "tls-server",
    rate: float | None = None,
    observe: Callable[[list[Outcome]], Awaitable[None]] | None = None,
) -> Burst:
    """Send `count` enrollments, `in_flight` at a time, each retried with the SAME request (so a
    retry is deduplicated, or followed if enrollment has it) until it is issued or refused; while
    it runs, each fault `(share, fault)` is awaited once that share of `count` (0 to 1) has been
    issued, so that faults fall within the burst however fast the machine is. With
    `rate`, request i is not sent before i/rate seconds (an open loop, as long as `in_flight`
    suffices); `observe` runs beside the burst with the outcomes so far, cancelled at its end."""
    home = stack.home
    signer, _ = provisioner.load_or_create(home)
    key = ec.generate_private_key(ec.SECP256R1())
    run = uuid.uuid4().hex[:8]
    requester = Requester(stack.identity_settings("requester"))
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    deadline = started + give_up_s
    faults_at: list[float] = []
    issued = [0]  # certificates received so far

    def request(i: int) -> EnrollmentRequested:
        name = f"r{i}.{run}.faults.internal"
        token = create_token(signer, "default", [name], utcnow(), timedelta(minutes=15), profile=profile)
        return enrollment_request(build_csr(key, [name]).decode(), token, "requester", profile)

    async def one(i: int) -> None:
        if rate is not None:
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        event = request(i)
        outcome = Outcome(event.aggregate_id, time.monotonic())
        outcomes.append(outcome)
        while time.monotonic() < deadline:
            outcome.attempts += 1
            try:
                client = await requester.get()
                await client.submit(event, timeout=10.0, wait_visible=False)
                outcome.issued_at = time.monotonic()
                issued[0] += 1
                return
            except (Rejected, Pending) as exc:
                outcome.refused = str(exc)[:300]
                return
            except Exception as exc:
                outcome.failures.append((time.monotonic(), repr(exc)[:200]))
                await asyncio.sleep(0.5)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(i)

    async def inject(share: float, fault: Fault) -> None:
        while issued[0] < share * count:
            await asyncio.sleep(0.05)
        faults_at.append(time.monotonic())
        await fault()

    injecting = [asyncio.create_task(inject(after, fault)) for after, fault in faults or []]
    observing = [asyncio.create_task(observe(outcomes))] if observe is not None else []
    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        await asyncio.gather(*injecting)
    finally:
        for task in injecting + observing:
            task.cancel()
        await requester.close()
    return Burst(outcomes, started, time.monotonic(), faults_at)


# --- what the log and the databases say ---------------------------------------------------------


async def _admin(stack: LocalStack) -> nats.NATS:
    settings = stack.identity_settings("admin")
    return await nats.connect(settings.nats_servers, connect_timeout=3, **settings.connect_options())


async def _counts(stack: LocalStack, subjects: str) -> dict[str, int]:
    """The number of messages on the log per subject matching `subjects` (under the subject root)."""
    nc = await _admin(stack)
    try:
        js = nc.jetstream(prefix=stack.settings.js_prefix)
        wanted = f"{stack.settings.subject_root}.{subjects}"
        info = await js.stream_info(stack.settings.stream, subjects_filter=wanted)
        return dict(info.state.subjects or {})
    finally:
        await nc.close()


async def _issued_counts(stack: LocalStack) -> dict[str, int]:
    """The number of CertificateIssued events on the log per subject (`pki.cert.<request>.issued`)."""
    return await _counts(stack, "cert.*.issued")


async def findings_raised(stack: LocalStack) -> int:
    """How many AuditFindingRaised events the log holds."""
    return sum((await _counts(stack, "finding.*.raised")).values())


async def issued_per_request(stack: LocalStack, request_ids: list[str]) -> dict[str, int]:
    """How many CertificateIssued events the log holds for each request, read back by subject."""
    counts = await _issued_counts(stack)
    root = stack.settings.subject_root
    return {rid: counts.get(f"{root}.cert.{rid}.issued", 0) for rid in request_ids}


async def issued_more_than_once(stack: LocalStack) -> list[str]:
    """Every request the whole log issued more than one certificate for."""
    return sorted(subject for subject, n in (await _issued_counts(stack)).items() if n > 1)


# A service's events of which an aggregate may have several: a CA's CRLs, a profile's lint verdicts.
MANY_PER_AGGREGATE = {"crl_published", "linted"}


async def published_twice(stack: LocalStack, service: str) -> list[str]:
    """Every subject of `service`'s own events (one per aggregate: an answer, a decision) that the
    log holds more than once: a decision it published twice."""
    twice = []
    for cls in EVENT_TYPES:
        if cls.publisher == service and cls.verb not in MANY_PER_AGGREGATE:
            counts = await _counts(stack, f"{cls.aggregate}.*.{cls.verb}")
            twice += [subject for subject, n in counts.items() if n > 1]
    return sorted(twice)


async def wait_caught_up(stack: LocalStack, timeout: float = 180.0) -> None:
    """Until every service's durable consumers have nothing pending or unacknowledged (twice in a row)."""
    nc = await _admin(stack)
    try:
        js = nc.jetstream(prefix=stack.settings.js_prefix)
        streams = {"log": stack.settings.stream, "ingress": stack.settings.ingress_stream}
        durables = [(streams[kind], f"{s}-{purpose}") for s, pairs in DURABLES.items() for purpose, kind in pairs]
        deadline, quiet = time.monotonic() + timeout, 0
        while quiet < 2:
            busy = []
            for stream, durable in durables:
                try:
                    info = await js.consumer_info(stream, durable)
                except (nats.errors.Error, TimeoutError) as exc:  # e.g. electing a leader after a node's restart
                    busy.append(f"{durable}: {exc!r}")
                    continue
                if info.num_pending or info.num_ack_pending:
                    busy.append(f"{durable}: {info.num_pending} pending, {info.num_ack_pending} unacknowledged")
            quiet = 0 if busy else quiet + 1
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumers not caught up after {timeout:g} s: {busy}")
            await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def parked_and_alarms(stack: LocalStack) -> dict[str, dict[str, int]]:
    """Per service: messages parked, and outbox rows that raised a publish alarm."""
    assert stack.pg is not None, "the fault suite runs its own PostgreSQL"
    conn = await asyncpg.connect(stack.pg.url, timeout=10)
    try:
        counts = {}
        for service in SERVICES:
            parked = await conn.fetchval(f"SELECT count(*) FROM {service}.parked")
            alarms = await conn.fetchval(f"SELECT count(*) FROM {service}.outbox WHERE alarm IS NOT NULL")
            counts[service] = {"parked": int(parked), "alarms": int(alarms)}
        return counts
    finally:
        await conn.close()


def spread(values: list[float]) -> dict[str, float]:
    """Median and extremes, rounded."""
    if not values:
        return {}
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
