"""`make bench` (renewal): renewals through the five services vs. enrollments in the same run.

Each round enrolls N certificates with a token each (the reference, measured in the same run), then
renews all N: a new key each, the request signed with the current key, at most CONCURRENCY in
flight; a renewal's clock stops when its CertificateIssued arrives. It also times how long after the
last renewal every old certificate's CertificateSuperseded is on the log (enrollment's schedule),
and, in this process on one core, what enrollment's renewal decision costs per request (proof
check, CSR and profile checks, names). Medians over ROUNDS; read ratios, not absolutes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime, timedelta

import nats
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.environment import REQUESTER, bench_harness, save_result
from bench.issuance import CONCURRENCY, ROUNDS, N, pct, publish_and_wait
from harness import Harness
from services.enrollment import domain, renewal
from shared.contract.events import CertificateIssued, RenewalRequested
from shared.contract.profiles import Profile
from shared.pki.crypto import PrivateKey, build_csr, generate_key, spki_der, spki_sha256
from shared.pki.holder import enrollment_request, renewal_csr, renewal_request

PROFILE = Profile(name="tls-server", usage="server", dns_suffixes=["internal"])


def name(i: int) -> str:
    return f"svc{i}.renew.internal"


async def enroll_all(h: Harness, keys: list[PrivateKey]) -> tuple[float, list[CertificateIssued]]:
    """Enroll one certificate per key: (certificates per second, the issued events in key order)."""
    requests = [
        enrollment_request(build_csr(key, [name(i)]).decode(), h.token(name(i), ttl=timedelta(minutes=30)), "bench")
        for i, key in enumerate(keys)
    ]
    rate, _, issued = await publish_and_wait(h, requests)
    return rate, [issued[r.aggregate_id] for r in requests]


def renewal_requests(certs: list[CertificateIssued], keys: list[PrivateKey]) -> list[RenewalRequested]:
    """A renewal of each certificate: a new key, its CSR, signed over by the current key."""
    return [
        renewal_request(c.cert_pem, key, renewal_csr(c.cert_pem, generate_key("ec-p256")), "bench-agent")
        for c, key in zip(certs, keys, strict=True)
    ]


def decision_cost_us(certs: list[CertificateIssued], requests: list[RenewalRequested]) -> float:
    """Microseconds per request for enrollment's renewal decision alone, in this process."""
    now = datetime.now(UTC)
    start = time.perf_counter()
    for cert, req in zip(certs, requests, strict=True):
        csr = x509.load_pem_x509_csr(req.csr_pem.encode())
        public_key = x509.load_pem_x509_certificate(cert.cert_pem.encode()).public_key()
        known = renewal.Certified(
            cert_id=cert.aggregate_id,
            serial=cert.serial,
            profile=cert.profile,
            not_after=cert.not_after,
            spki_sha256=spki_sha256(public_key),  # type: ignore[arg-type]
            spki_der=spki_der(public_key),  # type: ignore[arg-type]
            names=domain.Names(cert.dns_names, [], []),
        )
        ctx = renewal.RenewalContext(certificate=known, profile=PROFILE, profile_name=PROFILE.name)
        ask = renewal.RenewalRequest(req.aggregate_id, req.renews_serial, req.proof, None)
        outcome = renewal.review_renewal(ask, csr, ctx, now, timedelta(hours=1))
        assert isinstance(outcome, domain.Approval), outcome
    return (time.perf_counter() - start) / len(requests) * 1e6


async def renew_all(
    h: Harness, certs: list[CertificateIssued], requests: list[RenewalRequested]
) -> tuple[float, list[float], float]:
    """Renew: (certificates per second, latencies in s, seconds from the last renewal until every old
    certificate's CertificateSuperseded was seen)."""
    old = {c.aggregate_id for c in certs}
    seen: set[str] = set()
    all_superseded = asyncio.Event()

    async def on_superseded(msg: nats.aio.msg.Msg) -> None:
        seen.add(msg.subject.split(".")[2])
        if old <= seen:
            all_superseded.set()

    nc = await h.connect(REQUESTER)  # a requester hears superseded events, republished from the log
    try:
        await nc.subscribe(f"{h.root}.cert.*.superseded", cb=on_superseded)
        rate, latencies, renewed = await publish_and_wait(h, requests)
        last_renewed = time.perf_counter()
        await asyncio.wait_for(all_superseded.wait(), timeout=600)
        superseded_after = time.perf_counter() - last_renewed
    finally:
        await nc.close()
    assert all(renewed[q.aggregate_id].supersedes == q.renews_serial for q in requests)
    return rate, latencies, superseded_after


async def main() -> None:
    async with bench_harness() as h:
        await run(h)


async def run(h: Harness) -> None:
    h.provisioner_key = ed25519.Ed25519PrivateKey.generate()
    print(f"certbus renewal bench: N={N} per round, {ROUNDS} rounds, concurrency {CONCURRENCY}", flush=True)
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.apply_profiles()
    enroll_rates, renew_rates, superseded_s, decision_us, latencies = [], [], [], [], []
    for r in range(ROUNDS):
        keys = [generate_key("ec-p256") for _ in range(N)]
        enroll_rate, certs = await enroll_all(h, keys)
        requests = await asyncio.to_thread(renewal_requests, certs, keys)
        renew_rate, lat, superseded_after = await renew_all(h, certs, requests)
        cost = await asyncio.to_thread(decision_cost_us, certs, requests)
        enroll_rates.append(enroll_rate)
        renew_rates.append(renew_rate)
        superseded_s.append(superseded_after)
        decision_us.append(cost)
        latencies.extend(lat)
        print(
            f"  round {r + 1}: enrollment {enroll_rate:7.1f} certs/s   renewal {renew_rate:7.1f} certs/s   "
            f"all superseded {superseded_after:5.2f} s after the last renewal   "
            f"renewal decision {cost:6.1f} us/request",
            flush=True,
        )
    enroll, renew = statistics.median(enroll_rates), statistics.median(renew_rates)
    result = {
        "n_per_round": N,
        "rounds": ROUNDS,
        "concurrency": CONCURRENCY,
        "enrollment_certs_per_s": round(enroll, 1),
        "renewal_certs_per_s": round(renew, 1),
        "ratio_renewal_over_enrollment": round(renew / enroll, 3),
        "renewal_latency_p50_ms": round(pct(latencies, 50) * 1000, 1),
        "renewal_latency_p99_ms": round(pct(latencies, 99) * 1000, 1),
        "all_superseded_after_last_renewal_s": round(statistics.median(superseded_s), 2),
        "renewal_decision_us_per_request": round(statistics.median(decision_us), 1),
    }
    print(
        f"renewal end to end: {renew:.1f} certs/s (median of {ROUNDS}), latency p50 "
        f"{result['renewal_latency_p50_ms']} ms, p99 {result['renewal_latency_p99_ms']} ms"
    )
    print(f"enrollment with a token, same run (reference): {enroll:.1f} certs/s")
    print(f"ratio renewal / enrollment: {renew / enroll:.3f}")
    print(f"every old certificate superseded {result['all_superseded_after_last_renewal_s']} s after the last renewal")
    print(f"enrollment's renewal decision in one process: {result['renewal_decision_us_per_request']} us/request")
    save_result("renewal", result)


if __name__ == "__main__":
    asyncio.run(main())
