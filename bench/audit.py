"""`make bench` (audit part): archive, verify and replay rates over a log of AUDIT_N events.

AUDIT_N (default 100,000) realistic lifecycle events (request, approval, issuance with a real
certificate, some revocations) are published straight to a fresh log, each by its event type's
publisher (as the services would); then the audit service archives them live, `audit verify`
checks them and `audit replay` rebuilds the archive from sequence 1 (compared with the live one),
and once more after every audit table is dropped (the archive lost, so every event is indexed
again). Reference, measured in the same run: hashing the same bytes into the chain in one process
with nothing else (SHA-256 over sequence, subject and payload). Read ratios, not absolutes.

AUDIT_RUNS (default 1) runs verify and replay that many times over the same log and reports each
figure's median (the machine is shared: one run says little). AUDIT_PROFILE=1 also samples one more
verify and one more replay with py-spy (this process: audit runs in it) and writes what they spend
their busy samples on to bench/results/profile-audit-verify.txt and profile-audit-replay.txt.

It also measures what the consistency checks keep in memory per certificate on the log: the checks
run over the bench's archive in a fresh interpreter (`python -m bench.audit --checker-state DSN ROOT`),
half of it then the rest; the growth over the second half, scaled to a million certificates, is what
the summary counts in the memory target.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.environment import bench_harness, save_result
from bench.procs import RssPeak, rss_kib
from bench.profile import RESULTS, summarise
from harness import Harness
from services.audit import check_store, domain
from services.audit.incremental import IncrementalCheck
from services.signing import domain as signing
from shared.contract.binding import publisher_of
from shared.contract.events import (
    CaCreated,
    CertificateIssued,
    CertificateRevoked,
    CrlPublished,
    EnrollmentApproved,
    EnrollmentRequested,
    Event,
    ProfileApplied,
)
from shared.contract.profiles import Profile
from shared.pki.crypto import PrivateKey, generate_key, signing_hash
from shared.pki.holder import load_private_key
from shared.runtime.db import create_pool
from shared.trust import operators

N = int(os.environ.get("AUDIT_N", "100000"))
RUNS = int(os.environ.get("AUDIT_RUNS", "1"))
PROFILE = os.environ.get("AUDIT_PROFILE", "") not in ("", "0")


@dataclass
class BenchLog:
    """A realistic log: events in order, and the objects (CRLs) its events point at."""

    events: list[tuple[str, bytes]]
    objects: dict[str, bytes] = field(default_factory=dict)


# Certificates whose events are published stage by stage, as that many concurrent requests would
# be: every request and approval (enrollment), then every issuance (signing), then the revocations.
BLOCK = 500


def realistic_log(n: int, root: str, bucket: str, operator: tuple[str, PrivateKey]) -> BenchLog:
    """About n events: the CA, the profile (applied by `operator`, signed with its registered key),
    per certificate a request as enrollment admits it, an approval under that profile version and an
    issuance of its own real certificate (1 in 10 revoked), in blocks of BLOCK certificates, and at
    the end a CRL listing every revocation (its DER for the object store): what `audit check`
    expects."""
    now = datetime.now(UTC).replace(microsecond=0)
    ca_key = generate_key("ec-p256")
    ca = signing.CaIdentity("bench", signing.root_certificate(ca_key, "bench", "Bench", now, 365))
    leaf_key = generate_key("ec-p256")
    plan = signing.plan_leaf(ca, 30, now)
    profile = Profile(name="tls-server", usage="server", dns_suffixes=["internal"])
    urls = signing.Urls("http://127.0.0.1:8440")
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(leaf_key, signing_hash(leaf_key))
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    ca_pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    operator_name, operator_key = operator
    setup: list[Event] = [
        CaCreated(
            aggregate_id="bench",
            occurred_at=now,
            correlation_id="bench",
            producer="signing",
            ca_id="bench",
            role="root",
            parent_id=None,
            subject_dn=ca.cert.subject.rfc4514_string(),
            cert_pem=ca_pem,
            not_before=ca.cert.not_valid_before_utc,
            not_after=ca.cert.not_valid_after_utc,
            spki_sha256="0" * 64,
        ),
        operators.sign(
            ProfileApplied(
                aggregate_id=profile.name,
                occurred_at=now,
                correlation_id="bench",
                producer="operator",
                profile=profile,
                digest=profile.digest(),
                applied_by=operator_name,
            ),
            operator_name,
            operator_key,
        ),
    ]
    out: list[tuple[str, bytes]] = [(e.subject(root), e.model_dump_json().encode()) for e in setup]
    revoked: dict[str, signing.RevokedEntry] = {}
    i = 0
    while len(out) < n - 1:
        requested: list[Event] = []
        issued: list[Event] = []
        revocations: list[Event] = []
        for _ in range(BLOCK):
            if len(out) + len(requested) + len(issued) + len(revocations) >= n - 1:
                break
            rid = str(uuid.uuid4())
            names = [f"svc{i}.bench.internal"]
            leaf = signing.leaf_builder(
                profile, signing.Sans(tuple(names)), leaf_key.public_key(), ca, signing.plan_leaf(ca, 30, now), urls
            ).sign(ca_key, signing_hash(ca_key))
            pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
            serial = format(leaf.serial_number, "x")
            common = {"aggregate_id": rid, "occurred_at": now, "correlation_id": rid}
            requested += [
                EnrollmentRequested(
                    **common,
                    producer="enrollment",
                    csr_pem=csr_pem,
                    token="t",
                    token_proof="p",
                    requester="bench",
                    accepted_at=now,
                ),
                EnrollmentApproved(
                    **common,
                    producer="enrollment",
                    csr_pem=csr_pem,
                    profile="tls-server",
                    dns_names=names,
                    validity_days=30,
                    provisioner_id="p",
                    token_id=rid,
                    requester="bench",
                    profile_digest=profile.digest(),
                ),
            ]
            issued.append(
                CertificateIssued(
                    **common,
                    producer="signing",
                    serial=serial,
                    issuer_id="bench",
                    profile="tls-server",
                    cert_pem=pem,
                    chain_pem=pem,
                    not_before=plan.not_before,
                    not_after=plan.not_after,
                    dns_names=names,
                    spki_sha256="0" * 64,
                    fingerprint_sha256="0" * 64,
                )
            )
            if i % 10 == 0:
                revoked[serial] = signing.RevokedEntry(leaf.serial_number, now, "superseded")
                revocations.append(
                    CertificateRevoked(
                        **common,
                        producer="revocation",
                        serial=serial,
                        issuer_id="bench",
                        reason="superseded",
                        revoked_at=now,
                        revocation_request_id=rid,
                        requested_by="b",
                    )
                )
            i += 1
        out += [(e.subject(root), e.model_dump_json().encode()) for e in [*requested, *issued, *revocations]]
    out = out[: n - 1]
    listed = [revoked[json.loads(raw)["serial"]] for subject, raw in out if subject.endswith(".revoked")]
    der = signing.crl(ca, ca_key, 1, listed, now, now + timedelta(days=7)).public_bytes(serialization.Encoding.DER)
    crl = CrlPublished(
        aggregate_id="bench",
        occurred_at=now,
        correlation_id="bench",
        producer="signing",
        ca_id="bench",
        crl_number=1,
        this_update=now,
        next_update=now + timedelta(days=7),
        revoked_count=len(listed),
        object_bucket=bucket,
        object_name="bench-1.crl",
        sha256=hashlib.sha256(der).hexdigest(),
        size=len(der),
    )
    out.append((crl.subject(root), crl.model_dump_json().encode()))
    return BenchLog(out, {crl.object_name: der})


def harness_operator(h: Harness) -> tuple[str, PrivateKey]:
    """The operator the harness registered on its log, and its signing key."""
    return "operator", load_private_key(h.operator_key_file.read_bytes())


@dataclass(frozen=True)
class Published:
    """How fast a log was published, and the log's last sequence after it."""

    events_per_s: float
    last_seq: int


async def publish(h: Harness, log: BenchLog) -> Published:
    """Put the log's objects in the CRL store (as signing), then publish its events in order, each
    as its type's publisher: a run of consecutive events with one publisher goes out as core
    publishes on that publisher's connection and ends with an acknowledged publish, so that the next
    run (on another connection) lands after it (concurrent JetStream publishes could reorder them)."""

    def publisher(event: tuple[str, bytes]) -> str:
        name = publisher_of(event[0], h.root)
        assert name is not None, f"nobody may publish {event[0]!r}"
        return name

    names = {publisher(event) for event in log.events} | {"signing"}
    connections = {name: await h.connect(name) for name in sorted(names)}
    try:
        bucket = await h.js(connections["signing"], "signing").object_store(h.common["crl_bucket"])
        for name, data in log.objects.items():
            await bucket.put(name, data)
        start, last_seq = time.perf_counter(), 0
        for name, grouped in itertools.groupby(log.events, key=publisher):
            run = list(grouped)
            nc = connections[name]
            for at, (subject, data) in enumerate(run[:-1]):
                await nc.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})
                if at % 1000 == 999:
                    await nc.flush()
            subject, data = run[-1]
            ack = await h.js(nc, name).publish(
                subject, data, stream=h.common["stream"], headers={"Nats-Msg-Id": str(uuid.uuid4())}, timeout=30
            )
            last_seq = ack.seq
        rate = len(log.events) / (time.perf_counter() - start)
    finally:
        for nc in connections.values():
            await nc.close()
    return Published(rate, last_seq)


def reference_rate(events: list[tuple[str, bytes]]) -> float:
    """Chain hashes per second for the same bytes, in this process, nothing else."""
    start, current = time.perf_counter(), domain.GENESIS
    for seq, (subject, raw) in enumerate(events, start=1):
        current = domain.link(current, seq, subject, raw)
    return len(events) / (time.perf_counter() - start)


async def profiled(name: str, action: Callable[[], Awaitable[object]]) -> str:
    """Run `action` while py-spy samples this process; the busy samples' summary (bench.profile)."""
    spy = Path(sys.executable).parent / "py-spy"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / f"audit-{name}.raw"
        record = [str(spy), "record", "-r", "200", "--nonblocking", "--subprocesses", "-f", "raw", "-o", str(raw)]
        spying = subprocess.Popen(
            [*record, "-p", str(os.getpid())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(1.0)  # py-spy attaches
        try:
            await action()
        finally:
            spying.send_signal(signal.SIGINT)  # py-spy writes what it sampled when interrupted
            await asyncio.to_thread(spying.wait, 60)
        text = summarise(raw) if raw.exists() else f"audit-{name}: py-spy recorded nothing\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"profile-audit-{name}.txt").write_text(text)
    return text


async def checker_state(dsn: str, root: str) -> dict[str, float]:
    """What audit's consistency checks keep in memory per certificate on the log: the checks run over
    the bench's archive in a process of their own (run by `checker_memory`), as `audit check` runs them
    (what they know of each certificate in temporary tables; the scheduled check's are audit's own),
    first over the archive's first half, then over the rest, this process's resident memory read
    before, after each half, and at its peak."""
    pool = await create_pool(dsn, "audit", min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            head = await conn.fetchval("SELECT seq FROM chain_head")
            half = head // 2
            issued = "SELECT count(*) FROM archive WHERE event_type = 'CertificateIssued' AND stream_seq <= $1"
            certificates_half, certificates = await conn.fetchval(issued, half), await conn.fetchval(issued, head)
            check = IncrementalCheck(root, tables=check_store.TEMPORARY)
            await check_store.create_temporary(conn)
            gc.collect()
            with RssPeak(os.getpid()) as peak:
                before = rss_kib(os.getpid())
                await check.catch_up(conn, through=half)
                gc.collect()
                at_half = rss_kib(os.getpid())
                await check.catch_up(conn)
                gc.collect()
                at_end = rss_kib(os.getpid())
            await check_store.drop_temporary(conn)
    finally:
        await pool.close()
    assert check.through == head and not check.take_findings(), check.take_findings()[:3]
    per_certificate = max(0.0, (at_end - at_half) * 1024 / max(1, certificates - certificates_half))
    grown_mib = (at_end - before) / 1024
    return {
        "events": head,
        "certificates": certificates,
        "grown_mib": round(grown_mib, 1),
        "peak_growth_mib": peak.growth_mib,
        "bytes_per_certificate": round(per_certificate),
        "at_1m_certificates_mib": round(grown_mib + per_certificate * (1_000_000 - certificates) / 1024**2, 1),
    }


def checker_memory(dsn: str, root: str) -> dict[str, float]:
    """`checker_state` in a fresh interpreter (what this process has freed would hide growth)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.audit", "--checker-state", dsn, root], capture_output=True, text=True, check=True
    )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


async def main() -> None:
    # The harness's log holds 256 MiB, about 200,000 of these events: a larger N gets room for them.
    async with bench_harness(stream_max_bytes=max(256, N // 500) * 1024**2) as h:
        print(f"certbus audit bench: {N} events published straight to the log, audit in-process", flush=True)
        log = await asyncio.to_thread(realistic_log, N, h.root, h.common["crl_bucket"], harness_operator(h))
        events = log.events
        published = await publish(h, log)
        print(f"  published {len(events)} events at {published.events_per_s:.0f}/s", flush=True)
        start = time.perf_counter()
        # pkilint of 25,000 certificates (~7.5 ms each) or checks every second would measure something else
        h.overrides["audit"] = {"lint_after_issuance": False, "check_interval_s": 3600.0}
        await h.start("audit")
        pool = await h.db()
        while (await pool.fetchval("SELECT seq FROM audit.chain_head")) < published.last_seq:
            await asyncio.sleep(0.2)
        archive_rate = len(events) / (time.perf_counter() - start)
        verify_rates: list[float] = []
        replay_rates: list[float] = []
        verify_growth: list[float] = []  # MiB more than audit held before, at the peak of each run
        replay_growth: list[float] = []
        audit_pid = os.getpid()  # audit runs in this process (the log the bench built is held before)
        async with h.client("operator") as c:  # audit's verify, replay and check are the operator's
            for run in range(1, RUNS + 1):
                with RssPeak(audit_pid) as peak:
                    verified = await c.verify()
                verify_growth.append(peak.growth_mib)
                with RssPeak(audit_pid) as peak:
                    replayed = await c.replay()
                replay_growth.append(peak.growth_mib)
                assert verified.clean, verified.problems[:3]
                assert replayed.equal
                verify_rates.append(verified.rate_per_s)
                replay_rates.append(replayed.rate_per_s)
                if RUNS > 1:
                    print(f"  run {run}: verify {verified.rate_per_s:.0f}/s, replay {replayed.rate_per_s:.0f}/s")
            checked = await c.check()
            if PROFILE:
                print(await profiled("verify", c.verify), end="")
                print(await profiled("replay", c.replay), end="")
        # The archive lost (every audit table dropped): the replay rebuilds it, indexing every event.
        await h.stop("audit")
        await pool.execute("DROP SCHEMA audit CASCADE")
        await h.start("audit")
        async with h.client("operator") as c:
            rebuilt = await c.replay()
        assert not rebuilt.equal and rebuilt.events >= len(events), rebuilt
        ref = reference_rate(events)
        checker = await asyncio.to_thread(checker_memory, h.database_url, h.root)
        assert checked.findings == [], checked.findings[:3]
        check_rate = checked.events / checked.seconds
        verify_rate, replay_rate = statistics.median(verify_rates), statistics.median(replay_rates)
        result = {
            "events": len(events),
            "runs": RUNS,
            "archive_live_events_per_s": round(archive_rate, 1),
            "verify_events_per_s": verify_rate,
            "replay_events_per_s": replay_rate,
            "verify_memory_growth_mib": max(verify_growth),
            "replay_memory_growth_mib": max(replay_growth),
            "replay_rebuild_events_per_s": rebuilt.rate_per_s,
            "check_events_per_s": round(check_rate, 1),
            "checker_state": checker,
            "reference_chain_hashes_per_s": round(ref, 1),
            "ratio_replay_over_reference": round(replay_rate / ref, 4),
            "ratio_verify_over_reference": round(verify_rate / ref, 4),
            "load_average": os.getloadavg()[0],
        }
        print(f"audit archive, live: {archive_rate:.0f} events/s")
        runs = f" (median of {RUNS})" if RUNS > 1 else ""
        print(f"audit verify (chain + checkpoints + stream comparison): {verify_rate:.0f} events/s{runs}, clean")
        print(f"audit replay from sequence 1: {replay_rate:.0f} events/s{runs}, equal to the live archive")
        print(
            f"audit's memory (RSS) above what it held before, at the peak: verify {max(verify_growth)} MiB, "
            f"replay {max(replay_growth)} MiB, for {len(events):,} events"
        )
        print(f"audit replay of a lost archive (rebuilt, every event indexed): {rebuilt.rate_per_s:.0f} events/s")
        print(f"audit check (all consistency checks, certificates re-read, CRL fetched): {check_rate:.0f} events/s")
        print(
            f"audit's consistency checks over {checker['certificates']:,} certificates (their facts in PostgreSQL): "
            f"the process grew {checker['grown_mib']} MiB ({checker['peak_growth_mib']} MiB at the peak), "
            f"{checker['bytes_per_certificate']:,.0f} bytes per certificate over the second half of the log: "
            f"about {checker['at_1m_certificates_mib']:,.0f} MiB at 1,000,000"
        )
        print(f"reference (chain hashing alone, one process): {ref:.0f} events/s")
        print(
            f"ratios to the reference: replay {result['ratio_replay_over_reference']}, "
            f"verify {result['ratio_verify_over_reference']}"
        )
        print(f"load average (1 min) at the end: {result['load_average']:.2f}")
        save_result("audit", result)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--checker-state"]:
        print(json.dumps(asyncio.run(checker_state(sys.argv[2], sys.argv[3]))))
    else:
        asyncio.run(main())
