"""Cached OCSP over HTTP by wrk, validation with 1 process against CERTBUS_OCSP_WORKERS processes, in
turn on one stack, so that both see the same machine in the same minutes:
`python -m bench.ocsp_workers` (results in bench/results/ocsp_workers.json).

The five services run as processes on a throwaway NATS and database; SEED (BENCH_SEED, 20,000)
certificates are written into the read models, and two more validation replicas are started, one
with 1 OCSP process and one with BENCH_OCSP_WORKERS (2), each on its own port. Each is warmed (every
request asked once of each of its processes), then ROUNDS (BENCH_ROUNDS, 5) rounds of wrk
(64 connections, one thread, BENCH_OCSP_SECONDS, 5 s) alternate between them, the load average read
before each run, /readyz probed every 0.5 s during it and the CPU time of each of the replica's
processes counted (a machine whose cores are busy with other work gives the replica no more CPU
for having more processes). Medians are printed; quote them with the load averages (the machine is shared).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509

from bench import ocsp_load
from bench.environment import bench_harness, save_result
from bench.procs import children, cpu_s, tree_pss_kib
from bench.revocation import OCSP_SECONDS, ocsp_request, seed_certificates, warm
from harness import Harness, eventually

SEED = int(os.environ.get("BENCH_SEED", "20000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
WORKERS = int(os.environ.get("BENCH_OCSP_WORKERS", "2"))


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def _replica(h: Harness, workers: int) -> tuple[int, int]:
    """A validation replica with `workers` OCSP processes on a port of its own, ready; its port and pid."""
    h.overrides["validation"] = {"ocsp_workers": workers}
    service = await h.spawn_replica("validation", f"validation-{workers}p")
    port = int(service.env["CERTBUS_HTTP_PORT"])
    await eventually(lambda: asyncio.to_thread(_ready, port), timeout=120, interval=0.5)
    assert service.proc is not None
    return port, service.proc.pid


async def main() -> None:
    async with bench_harness() as h:
        await run(h)


async def run(h: Harness) -> None:
    print(f"certbus OCSP workers bench: 1 process against {WORKERS}, {SEED} serials, {ROUNDS} rounds", flush=True)
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.register_ocsp_provisioner()
    await h.apply_profiles()
    probe = await h.enroll("probe.bench.internal")
    issuer = x509.load_pem_x509_certificate(probe.chain_pem.encode())
    seeded = await seed_certificates(h, probe.issuer_id, SEED)
    requests = [ocsp_request(issuer, s) for s in seeded]
    replicas = {1: await _replica(h, 1), WORKERS: await _replica(h, WORKERS)}
    ports = {n: port for n, (port, _) in replicas.items()}
    for port in ports.values():
        base = f"http://127.0.0.1:{port}"
        await warm(base, requests)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in ports}
    for round_ in range(ROUNDS):
        for n, port in ports.items():
            load = Path("/proc/loadavg").read_text().split()[0]
            tree = [replicas[n][1], *children(replicas[n][1])]
            cpu_before = [cpu_s(pid) for pid in tree]
            measuring = asyncio.create_task(
                asyncio.to_thread(ocsp_load.measure, f"http://127.0.0.1:{port}", requests, OCSP_SECONDS)
            )
            probes = []  # /readyz under load: a worker too busy to report in time would make it 503
            while not measuring.done():
                probes.append(await asyncio.to_thread(_ready, port))
                await asyncio.sleep(0.5)
            wrk = await measuring
            cpu = [round(cpu_s(pid) - before, 2) for pid, before in zip(tree, cpu_before, strict=True)]
            runs[n].append(
                {
                    "per_s": round(wrk.rate),
                    "p50_ms": wrk.latency_p50_ms,
                    "p99_ms": wrk.latency_p99_ms,
                    "load": load,
                    "readyz_probes": len(probes),
                    "readyz_not_ready": probes.count(False),
                    "cpu_s_by_process": cpu,  # the service's process first, then its workers
                }
            )
            print(
                f"  round {round_ + 1}, {n} process(es): {wrk.rate:.0f}/s, "
                f"p99 {wrk.latency_p99_ms:.1f} ms, load {load}; "
                f"/readyz not ready {probes.count(False)} of {len(probes)}; CPU s by process {cpu}",
                flush=True,
            )
    result: dict[str, Any] = {"seeded": SEED, "rounds": ROUNDS, "runs": {str(n): r for n, r in runs.items()}}
    for n, each in runs.items():
        median = statistics.median(r["per_s"] for r in each)
        loads = sorted(float(r["load"]) for r in each)
        result[f"median_per_s_{n}"] = median
        print(f"  {n} process(es): median {median:.0f}/s (load {loads[0]}-{loads[-1]})", flush=True)
    for n, (_, pid) in replicas.items():  # every process's statuses and responses cached: memory per process
        result[f"pss_mib_{n}"] = round(tree_pss_kib(pid) / 1024, 1)
        print(f"  {n} process(es): {result[f'pss_mib_{n}']} MiB (PSS, the replica and its workers)", flush=True)
    save_result("ocsp_workers", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))


if __name__ == "__main__":
    asyncio.run(main())
