"""The soak: cluster mode under a steady load for a long time, to show that memory and latency stay flat.

`make soak` (`python -m bench.soak --minutes 30 --out bench/results/soak.json`) starts `make run
CLUSTER=3` on free loopback ports, measures its capacity with a closed-loop burst (64 in flight),
then sends enrollments at half that rate for the given minutes. Every `--every` seconds it
samples the memory (PSS) of every process (each service replica, each NATS node, PostgreSQL
with its backends) and the p50/p99 latency, issued, retried and refused counts of the requests
that finished in that window, and writes everything to the output file as it goes. At the end it
compares the first third of the run with the last: a process whose memory grew by more than 20%
(and 20 MiB), or a p99 latency that more than doubled, is reported as growth (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.burst import Outcome, cluster_stack, run_burst
from bench.procs import pss_kib, tree_pss_kib
from deploy.local.devstack import LocalStack


def memory(stack: LocalStack) -> dict[str, int]:
    """Resident memory (KiB) of every process of the stack, by name (a replica with the processes
    it started: audit's pkilint worker)."""
    sizes = {p.instance: tree_pss_kib(p.proc.pid) for p in stack.procs if p.proc is not None}
    for i, node in enumerate(stack.nats, start=1):
        if node.proc is not None:
            sizes[f"nats-{i}"] = pss_kib(node.proc.pid)
    if stack.pg is not None and stack.pg.data_dir is not None:
        pid_file = stack.pg.data_dir / "postmaster.pid"
        if pid_file.exists():
            postmaster = int(pid_file.read_text().split()[0])
            sizes["postgresql"] = tree_pss_kib(postmaster)
    return sizes


def _window(outcomes: list[Outcome], start: float, end: float) -> dict[str, Any]:
    finished = [o for o in outcomes if o.issued_at is not None and start <= o.issued_at < end]
    latencies = sorted(o.latency for o in finished if o.latency is not None)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

    return {
        "issued": len(finished),
        "latency_p50_s": pct(0.5),
        "latency_p99_s": pct(0.99),
        "retried": sum(1 for o in finished if o.attempts > 1),
        "refused": sum(1 for o in outcomes if o.refused and start <= o.sent_at < end),
    }


def verdict(samples: list[dict[str, Any]]) -> list[str]:
    """What grew between the first and the last third of the run ([]: flat)."""
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    growth = []
    for name in samples[-1]["pss_kib"]:
        before = statistics.median(s["pss_kib"].get(name, 0) for s in first)
        after = statistics.median(s["pss_kib"].get(name, 0) for s in last)
        if before and after > before * 1.2 and after - before > 20 * 1024:
            growth.append(f"{name}: memory {before / 1024:.0f} -> {after / 1024:.0f} MiB")
    p99_before = [s["latency_p99_s"] for s in first if s["latency_p99_s"] is not None]
    p99_after = [s["latency_p99_s"] for s in last if s["latency_p99_s"] is not None]
    if p99_before and p99_after and statistics.median(p99_after) > 2 * statistics.median(p99_before):
        growth.append(f"p99 latency {statistics.median(p99_before):.2f} -> {statistics.median(p99_after):.2f} s")
    return growth


async def soak(stack: LocalStack, minutes: float, every: float, out: Path) -> int:
    probe = await run_burst(stack, 600, in_flight=64)
    capacity = probe.summary()["per_second"]
    rate = capacity / 2
    count = int(rate * minutes * 60)
    print(f"capacity {capacity}/s (closed loop, 64 in flight); soaking at {rate:.1f}/s for {minutes:g} min", flush=True)
    samples: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "capacity_per_s": capacity,
        "rate_per_s": rate,
        "minutes": minutes,
        "sample_every_s": every,
        "samples": samples,
    }

    async def sample(outcomes: list[Outcome]) -> None:
        started = time.monotonic()
        while True:
            window_start = time.monotonic()
            await asyncio.sleep(every)
            now = time.monotonic()
            row = {"t_s": round(now - started, 1), **_window(outcomes, window_start, now), "pss_kib": memory(stack)}
            samples.append(row)
            total = sum(row["pss_kib"].values()) / 1024
            print(
                f"t={row['t_s']:>6}s issued {row['issued']:>4}  p50 {row['latency_p50_s']}s  "
                f"p99 {row['latency_p99_s']}s  retried {row['retried']}  refused {row['refused']}  "
                f"memory (PSS) {total:.0f} MiB",
                flush=True,
            )
            out.write_text(json.dumps(report, indent=2) + "\n")

    burst = await run_burst(stack, count, in_flight=256, rate=rate, observe=sample, give_up_s=minutes * 60 + 600)
    report["summary"] = burst.summary()
    report["growth"] = growth = verdict(samples) if samples else ["no samples"]
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"]))
    print("flat: memory and latency did not grow" if not growth else "GROWTH: " + "; ".join(growth))
    return 0 if not growth else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument("--keep", action="store_true", help="keep the cluster's home and logs")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with cluster_stack(keep=args.keep) as stack:
        return asyncio.run(soak(stack, args.minutes, args.every, args.out))


if __name__ == "__main__":
    sys.exit(main())
