"""`make bench`: end-to-end issuance through the five services vs. the same work in-process.

End to end: N EnrollmentRequested events are sent on the ingress stream (at most CONCURRENCY in
flight) and the clock stops when each one's CertificateIssued event arrives. Reference, measured in the same run:
CSR parse + signature check + key check + certificate build + sign + PEM with `cryptography` alone,
on one core. Then, outside reference: `cfssl serve` (Debian's golang-cfssl) signing the last round's
CSRs over HTTP, driven by wrk (bench/cfssl.py). Figures are medians over ROUNDS; the machine is
shared, so read ratios, not absolutes.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench import cfssl, scale
from bench.environment import REQUESTER, bench_harness, save_result
from bench.procs import CpuMeter, children, machine_context_switches
from harness import Harness
from services.enrollment import domain as enrollment_domain
from services.signing import domain
from shared.contract.events import CertificateIssued, Event, parse_event
from shared.contract.ingress import KIND_OF, ingress_subject
from shared.contract.profiles import Profile
from shared.pki.crypto import build_csr, generate_key, signing_hash
from shared.pki.holder import enrollment_request
from shared.pki.lint import errors, lint_certificate
from shared.pki.tokens import TokenClaims

N = int(os.environ.get("BENCH_N", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
UNLOADED_N = 50
LINT = "audit-lint"  # audit's post-issuance pkilint worker (a background job at a capped rate)
CFSSL_SECONDS = float(os.environ.get("BENCH_CFSSL_SECONDS", "10"))  # per cfssl measurement; 0 skips them
# The paced run: requests sent at a fixed rate (open loop) for PACED_SECONDS, latency measured from
# each request's scheduled time (so a stall that delays sending is counted, not hidden).
PACED_RATE = float(os.environ.get("BENCH_PACED_RATE", "500"))
PACED_SECONDS = float(os.environ.get("BENCH_PACED_SECONDS", "4"))  # 0 skips it
PACED_MAX_IN_FLIGHT = 5000  # a bound on memory only: a request held back by it still counts from its due time
# Then one more round with this many certificates of history seeded into the services' tables
# (bench.scale; 0 skips it).
SCALE_SEED = int(os.environ.get("BENCH_SCALE_SEED", "1000000"))


PROFILE = Profile(name="tls-server", usage="server", dns_suffixes=["internal"])


def reference_rate(csrs: list[bytes]) -> tuple[float, float, float]:
    """In this process, one core, for the same CSRs: (certificates per second for the CSR checks
    + build + sign + template check that issuance does; microseconds per request for enrollment's
    review alone; pkilint of a full certificate per second, to show why it runs on templates)."""
    now = datetime.now(UTC)
    ca_key = generate_key("ec-p384")
    root = domain.CaIdentity("root", domain.root_certificate(ca_key, "root", "Bench", now, 3650))
    issuing_key = generate_key("ec-p384")
    urls = domain.Urls("http://127.0.0.1")
    issuing = domain.CaIdentity(
        "issuing",
        domain.issuing_certificate(issuing_key.public_key(), "issuing", root, ca_key, "Bench", urls, now, 1825),
    )
    template_plan = domain.plan_leaf(issuing, 30, now)
    template = domain.leaf_builder(
        PROFILE, domain.Sans(("template.internal",)), generate_key("ec-p256").public_key(), issuing, template_plan, urls
    ).sign(issuing_key, signing_hash(issuing_key))
    claims = TokenClaims("t", "p", "s", (), "tls-server", now, ed25519.Ed25519PrivateKey.generate().public_key())
    start = time.perf_counter()
    review_s = 0.0
    certs = []
    for pem in csrs:
        t0 = time.perf_counter()
        csr = x509.load_pem_x509_csr(pem)
        names = enrollment_domain.requested_names(csr)
        assert isinstance(names, enrollment_domain.Names)
        approval = enrollment_domain.review(csr, replace(claims, dns_names=tuple(names.dns)), PROFILE, None)
        review_s += time.perf_counter() - t0
        assert isinstance(approval, enrollment_domain.Approval), approval
        sans = domain.Sans(tuple(approval.dns_names))
        plan = domain.plan_leaf(issuing, approval.validity_days, now)
        cert = domain.leaf_builder(PROFILE, sans, csr.public_key(), issuing, plan, urls).sign(  # type: ignore[arg-type]
            issuing_key, signing_hash(issuing_key)
        )
        crl_url = urls.leaf_crl(issuing, plan.serial)
        assert not domain.template_deviations(cert, template, PROFILE, sans, csr.public_key(), plan, crl_url=crl_url)  # type: ignore[arg-type]
        cert.public_bytes(serialization.Encoding.PEM)
        certs.append(cert.public_bytes(serialization.Encoding.DER))
    rate = len(csrs) / (time.perf_counter() - start)
    sample = certs[:200]
    t0 = time.perf_counter()
    for der in sample:
        assert not errors(lint_certificate(der))
    lint_rate = len(sample) / (time.perf_counter() - t0)
    return rate, review_s / len(csrs) * 1e6, lint_rate


async def end_to_end(
    h: Harness, csrs: list[bytes], concurrency: int = CONCURRENCY, paced: float | None = None
) -> tuple[float, list[float]]:
    """Certificates per second and per-request latencies (s) through the running services."""
    requests = [
        enrollment_request(pem.decode(), h.token(f"svc{i}.bench.internal", ttl=timedelta(minutes=30)), "bench")
        for i, pem in enumerate(csrs)
    ]
    rate, latencies, _ = await publish_and_wait(h, requests, concurrency, paced)
    return rate, latencies


async def publish_and_wait(
    h: Harness, requests: Sequence[Event], concurrency: int = CONCURRENCY, paced: float | None = None
) -> tuple[float, list[float], dict[str, CertificateIssued]]:
    """Send requests as requester REQUESTER (on its ingress subjects, at most `concurrency` waiting
    for their outcome) and wait for every CertificateIssued: (certificates per second, latencies in
    s, the issued events by request id). With `paced` (requests per second), request i is due at
    start + i / paced whatever the outcomes so far (open loop), and its latency counts from then."""
    nc = await h.connect(REQUESTER)
    js = h.js(nc, REQUESTER)
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    issued: dict[str, CertificateIssued] = {}
    finished = asyncio.Event()
    slots = asyncio.Semaphore(concurrency)

    async def on_outcome(msg: Msg) -> None:
        event = parse_event(msg.data)
        if event.aggregate_id in sent and event.aggregate_id not in done:
            done[event.aggregate_id] = time.perf_counter()
            if isinstance(event, CertificateIssued):
                issued[event.aggregate_id] = event
            else:
                print(f"  unexpected outcome {event.event_type}: {msg.data[:200]!r}", file=sys.stderr)
            slots.release()
            if len(done) == len(requests):
                finished.set()

    for verb in ("issued", "rejected", "refused"):  # what a requester hears, republished from the log
        await nc.subscribe(f"{h.root}.cert.*.{verb}", cb=on_outcome)

    async def send(req: Event) -> None:
        await js.publish(
            ingress_subject(h.common["ingress_root"], REQUESTER, KIND_OF[type(req)]),
            req.model_dump_json().encode(),
            stream=h.common["ingress_stream"],
            headers={"Nats-Msg-Id": str(req.event_id)},
        )

    # Each publish waits for its own acknowledgement without holding up the next (as many
    # requesters at once would): awaiting each in turn would cap the rate at one ingress round
    # trip per request, and the bench would measure its own client.
    publishing: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i, req in enumerate(requests):
        if paced is not None:
            due = start + i / paced
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
        await slots.acquire()
        sent[req.aggregate_id] = time.perf_counter() if paced is None else start + i / paced
        publishing.append(asyncio.create_task(send(req)))
    await asyncio.gather(*publishing)
    await asyncio.wait_for(finished.wait(), timeout=600)
    elapsed = max(done.values()) - start
    await nc.close()
    return len(requests) / elapsed, [done[r] - sent[r] for r in sent], issued


async def processes(h: Harness) -> dict[str, list[int]]:
    """The processes whose CPU an issuance costs, by name: each service (with what it started),
    the nats-server, and PostgreSQL's backends serving this database."""
    groups = {name: [p.proc.pid] for name, p in h.procs.items() if p.proc is not None}
    if "audit" in groups:
        # Post-issuance pkilint runs in audit's child process at a capped rate (CERTBUS_LINT_PER_S),
        # whatever the issuance rate: shown on its own, and taken out of audit's figure.
        groups[LINT] = children(groups["audit"][0])
    if h.nats.proc is not None:
        groups["nats"] = [h.nats.proc.pid]
    pool = await h.db()
    rows = await pool.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    groups["postgresql"] = [r["pid"] for r in rows]
    return groups


BATCH_METRIC = re.compile(r'^certbus_batch_messages_(sum|count)\{durable="([^"]+)"\} (\S+)$', re.MULTILINE)


async def batch_totals(h: Harness) -> dict[str, tuple[float, float]]:
    """Each batch consumer's (messages, batches) so far, by durable, from the services' /metrics."""
    totals: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for name in h.procs.keys() & h.http_ports.keys():
            async with session.get(f"http://127.0.0.1:{h.http_ports[name]}/metrics") as response:
                text = await response.text()
            for kind, durable, value in BATCH_METRIC.findall(text):
                totals.setdefault(durable, {})[kind] = float(value)
    return {durable: (v.get("sum", 0.0), v.get("count", 0.0)) for durable, v in totals.items()}


def mean_batches(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Messages per batch of each durable between two `batch_totals` (durables that took none left out)."""
    means = {}
    for durable, (messages, batches) in sorted(after.items()):
        m0, b0 = before.get(durable, (0.0, 0.0))
        if batches > b0:
            means[durable] = round((messages - m0) / (batches - b0), 1)
    return means


async def log_position(h: Harness) -> int:
    """The log's last sequence (as the admin)."""
    nc = await h.connect("admin")
    try:
        last: int = (await h.js(nc).stream_info(h.common["stream"])).state.last_seq
        return last
    finally:
        await nc.close()


def cpu_breakdown(used_s: dict[str, float], certificates: int) -> dict[str, float]:
    """CPU milliseconds per certificate, by process, largest first, with their total (audit's lint
    worker on its own, out of audit's figure, and the total also without it)."""
    used = dict(used_s)
    if LINT in used and "audit" in used:
        used["audit"] = max(0.0, used["audit"] - used[LINT])
    per = {name: round(s * 1000 / certificates, 2) for name, s in sorted(used.items(), key=lambda kv: -kv[1])}
    total = sum(used.values())
    return {
        **per,
        "total": round(total * 1000 / certificates, 2),
        "total_without_lint": round((total - used.get(LINT, 0.0)) * 1000 / certificates, 2),
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main() -> None:
    async with bench_harness() as h:
        result, csrs = await run(h)
    # After the services have stopped, so that cfssl has the machine Certbus had.
    if (reference := cfssl_reference(csrs, result["end_to_end_certs_per_s"])) is not None:
        result["cfssl"] = reference
    save_result("issuance", result)


def cfssl_reference(csrs: list[bytes], certbus_per_s: float) -> dict[str, Any] | None:
    """`cfssl serve` signing `csrs` in each of cfssl.setups for CFSSL_SECONDS, its rate printed next to
    Certbus's: the figures by setup, each with Certbus's ratio to it (None when skipped)."""
    if CFSSL_SECONDS <= 0:
        print("cfssl serve reference: skipped (BENCH_CFSSL_SECONDS=0)")
        return None
    if missing := cfssl.missing_tools():
        print(f"cfssl serve reference: skipped, {' and '.join(missing)} not installed (`make cfssl wrk` installs them)")
        return None
    figures: dict[str, Any] = {}
    for setup in cfssl.setups(sorted(os.sched_getaffinity(0))):
        try:
            measured = cfssl.measure(
                csrs,
                CFSSL_SECONDS,
                server_cores=setup.server_cores,
                client_cores=setup.client_cores,
                ca_key=setup.ca_key,
            )
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
            print(f"cfssl serve ({setup.label}): not measured: {e}", flush=True)
            figures[setup.name] = {"error": str(e)[:500]}
            continue
        print(cfssl.ratio_line(setup.label, measured, certbus_per_s), flush=True)
        figures[setup.name] = {
            **measured.as_json(),
            "ratio_end_to_end_over_cfssl": round(certbus_per_s / measured.certs_per_s, 3),
        }
    return figures


async def run(h: Harness) -> tuple[dict[str, Any], list[bytes]]:
    """Rounds of issuance through the running services, each with the in-process reference: the
    figures (printed and returned) and the last round's CSRs."""
    h.provisioner_key = ed25519.Ed25519PrivateKey.generate()
    print(
        f"certbus bench: N={N} per round, {ROUNDS} rounds, concurrency {CONCURRENCY}, "
        f"five services as processes, ec-p256 leaves, ec-p384 CA",
        flush=True,
    )
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.apply_profiles()
    quiet = [build_csr(generate_key("ec-p256"), [f"svc{i}.bench.internal"]) for i in range(UNLOADED_N)]
    _, unloaded = await end_to_end(h, quiet, concurrency=1)
    print(
        f"  one request at a time ({UNLOADED_N}): latency p50 {pct(unloaded, 50) * 1000:.1f} ms, "
        f"p99 {pct(unloaded, 99) * 1000:.1f} ms",
        flush=True,
    )
    e2e_rates, ref_rates, review_us, lint_rates, latencies = [], [], [], [], []
    logged: list[float] = []  # events on the log per certificate
    cpu: dict[str, list[float]] = {}
    switches: list[float] = []  # the machine's context switches per certificate
    batch_means: dict[str, list[float]] = {}
    csrs: list[bytes] = []
    seq_read: list[float] = []  # rows read by sequential scans per certificate
    for r in range(ROUNDS):
        csrs = [build_csr(generate_key("ec-p256"), [f"svc{i}.bench.internal"]) for i in range(N)]
        measured = await measured_round(h, csrs)
        ref, review, lint = await asyncio.to_thread(reference_rate, csrs)
        e2e_rates.append(measured.rate)
        ref_rates.append(ref)
        review_us.append(review)
        lint_rates.append(lint)
        latencies.extend(measured.latencies)
        logged.append(measured.logged)
        switches.append(measured.switches)
        seq_read.append(sum(measured.seq_reads.values()))
        for durable, mean in measured.batch_means.items():
            batch_means.setdefault(durable, []).append(mean)
        for name, ms in measured.cpu_ms.items():
            cpu.setdefault(name, []).append(ms)
        print(
            f"  round {r + 1}: end to end {measured.rate:8.1f} certs/s   in-process reference {ref:8.1f} certs/s   "
            f"enrollment review {review:6.1f} us/request   pkilint {lint:6.1f} certs/s",
            flush=True,
        )
    if PACED_SECONDS > 0:
        result_paced = await paced_run(h)
    e2e, ref = statistics.median(e2e_rates), statistics.median(ref_rates)
    cpu_ms = {name: round(statistics.median(values), 2) for name, values in cpu.items()}
    review, lint = statistics.median(review_us), statistics.median(lint_rates)
    result: dict[str, Any] = {
        "n_per_round": N,
        "rounds": ROUNDS,
        "concurrency": CONCURRENCY,
        "end_to_end_certs_per_s": round(e2e, 1),
        "reference_certs_per_s": round(ref, 1),
        "ratio_end_to_end_over_reference": round(e2e / ref, 3),
        "enrollment_review_us_per_request": round(review, 1),
        "pkilint_certs_per_s": round(lint, 1),
        "latency_p50_ms": round(pct(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(pct(latencies, 99) * 1000, 1),
        "unloaded_latency_p50_ms": round(pct(unloaded, 50) * 1000, 1),
        "unloaded_latency_p99_ms": round(pct(unloaded, 99) * 1000, 1),
        "cpu_ms_per_certificate": cpu_ms,
        "events_per_certificate": round(statistics.median(logged), 2),
        "context_switches_per_certificate": round(statistics.median(switches), 1),
        "messages_per_batch": {durable: statistics.median(means) for durable, means in batch_means.items()},
        "seq_scan_rows_per_certificate": round(statistics.median(seq_read), 1),
    }
    if PACED_SECONDS > 0:
        result["paced"] = result_paced
    if SCALE_SEED > 0:
        result["with_history"] = await history_round(h, e2e, cpu_ms["total_without_lint"])
    print(
        f"issuance end to end: {e2e:.1f} certs/s (median of {ROUNDS}), latency p50 "
        f"{result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms"
    )
    print(f"reference (checks + build + sign + template check in one process, one core): {ref:.1f} certs/s")
    print(f"enrollment review of one request (CSR, names, profile, token claims): {review:.1f} us")
    print(f"pkilint of one full certificate: {lint:.1f} certs/s ({1000 / lint:.2f} ms each)")
    print(f"ratio end to end / reference: {e2e / ref:.3f}")
    print(
        "CPU per certificate (ms, median of rounds, each process with its children): "
        + ", ".join(f"{name} {ms}" for name, ms in cpu_ms.items())
    )
    print(
        f"context switches per certificate (the whole machine): {result['context_switches_per_certificate']}; "
        "messages per batch: "
        + ", ".join(f"{d} {m}" for d, m in result["messages_per_batch"].items())
        + f"; rows read by sequential scans per certificate: {result['seq_scan_rows_per_certificate']}"
    )
    return result, csrs


@dataclass(frozen=True)
class Round:
    """One round through the running services, measured."""

    rate: float  # certificates per second, end to end
    latencies: list[float]  # s, per request
    logged: float  # events on the log per certificate
    switches: float  # the machine's context switches per certificate
    batch_means: dict[str, float]  # messages per batch, per batch consumer
    cpu_ms: dict[str, float]  # CPU per certificate, per process group
    seq_reads: dict[str, float]  # rows read by sequential scans per certificate, per table


async def measured_round(h: Harness, csrs: list[bytes]) -> Round:
    """Issue one certificate per CSR through the running services and measure it."""
    pool = await h.db()
    meter = CpuMeter()
    meter.start(await processes(h))
    first = await log_position(h)
    batches_before, switched = await batch_totals(h), machine_context_switches()
    scanned = await scale.seq_reads(pool)
    rate, lat = await end_to_end(h, csrs)
    # What the services still do for these certificates after the last was issued (audit
    # archives and lints them) is theirs too: read once the system is quiet again.
    await asyncio.sleep(2)
    n = len(csrs)
    return Round(
        rate=rate,
        latencies=lat,
        logged=(await log_position(h) - first) / n,
        switches=(machine_context_switches() - switched) / n,
        batch_means=mean_batches(batches_before, await batch_totals(h)),
        cpu_ms=cpu_breakdown(meter.stop(await processes(h)), n),
        seq_reads=scale.seq_reads_per_certificate(scanned, await scale.seq_reads(pool), n),
    )


async def history_round(h: Harness, rate_before: float, cpu_before: float) -> dict[str, Any]:
    """Seed SCALE_SEED certificates of history into the services' tables (bench.scale), then one
    round of N: the rate, CPU and sequential-scan reads against the rounds before, same run."""
    pool = await h.db()
    seconds = await scale.seed(pool, SCALE_SEED, requester=REQUESTER, provisioner="default")
    print(f"  seeded {SCALE_SEED:,} certificates of history into every service's tables in {seconds:.0f} s", flush=True)
    csrs = [build_csr(generate_key("ec-p256"), [f"svc{i}.bench.internal"]) for i in range(N)]
    measured = await measured_round(h, csrs)
    cpu = measured.cpu_ms["total_without_lint"]
    figures: dict[str, Any] = {
        "history_certificates": SCALE_SEED,
        "seed_s": round(seconds, 1),
        "end_to_end_certs_per_s": round(measured.rate, 1),
        "ratio_to_rounds_without_history": round(measured.rate / rate_before, 3),
        "latency_p50_ms": round(pct(measured.latencies, 50) * 1000, 1),
        "latency_p99_ms": round(pct(measured.latencies, 99) * 1000, 1),
        "cpu_ms_per_certificate": measured.cpu_ms,
        "cpu_ratio_to_rounds_without_history": round(cpu / cpu_before, 3),
        "seq_scan_rows_per_certificate": measured.seq_reads,
    }
    top = ", ".join(f"{t} {v}" for t, v in list(measured.seq_reads.items())[:4]) or "none"
    print(
        f"  with {SCALE_SEED:,} certificates of history: {measured.rate:.1f} certs/s "
        f"(x{figures['ratio_to_rounds_without_history']} of the rounds above), p50 {figures['latency_p50_ms']} / "
        f"p99 {figures['latency_p99_ms']} ms, CPU {cpu} ms per certificate without lint "
        f"(x{figures['cpu_ratio_to_rounds_without_history']}); rows read by sequential scans per certificate: {top}",
        flush=True,
    )
    return figures


async def paced_run(h: Harness) -> dict[str, float]:
    """PACED_RATE requests a second for PACED_SECONDS, open loop: the latency a service calling
    Certbus at that rate would see (p50 / p99 from each request's due time), and the rate achieved."""
    n = max(1, round(PACED_RATE * PACED_SECONDS))
    csrs = [build_csr(generate_key("ec-p256"), [f"svc{i}.bench.internal"]) for i in range(n)]
    achieved, latencies = await end_to_end(h, csrs, concurrency=PACED_MAX_IN_FLIGHT, paced=PACED_RATE)
    figures = {
        "offered_per_s": PACED_RATE,
        "requests": n,
        "achieved_certs_per_s": round(achieved, 1),
        "latency_p50_ms": round(pct(latencies, 50) * 1000, 1),
        "latency_p99_ms": round(pct(latencies, 99) * 1000, 1),
    }
    print(
        f"  paced at {PACED_RATE:.0f} requests/s for {PACED_SECONDS:.0f} s ({n}, open loop): achieved "
        f"{achieved:.1f} certs/s, latency p50 {figures['latency_p50_ms']} ms, p99 {figures['latency_p99_ms']} ms "
        "(from each request's due time)",
        flush=True,
    )
    return figures


if __name__ == "__main__":
    asyncio.run(main())
