"""`make bench` (CLI part): how long `certbus --help` and `certbus health` take, start to exit.

Each command runs BENCH_CLI_RUNS (default 20) times as a fresh process, alternating with the
reference, `python -c pass` (the interpreter's own start-up on this machine, same run); the median
wall time of each, its ratio to the reference and the median CPU time (user + system, which other
work on the machine inflates less than wall time) are printed. `certbus health` runs against a real Certbus
(a throwaway nats-server and database, the five services in this process), so that it is timed to
its real end: connect, ask the five services, print the table; against nothing listening it would
measure NATS's connection timeout, not the CLI. Target: both within 0.3 s here. Read medians and
ratios: the machine is a shared 2-core box.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import sys
import time
from asyncio.subprocess import DEVNULL, PIPE

from bench.environment import bench_harness, save_result
from harness import Harness

RUNS = int(os.environ.get("BENCH_CLI_RUNS", "20"))
TARGET_S = 0.3


def certbus_command() -> list[str]:
    """The installed `certbus` console script beside this interpreter (else the module)."""
    script = shutil.which("certbus", path=os.path.dirname(sys.executable))
    return [script] if script else [sys.executable, "-m", "shared.client.cli.main"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of `argv` from start to exit (stdout into a pipe, read to the end).
    Its CPU is what this process's finished children used more after it than before: the CLI is
    the only child that ends meanwhile."""
    cpu, started = _children_cpu(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=DEVNULL)
    await proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    return wall, _children_cpu() - cpu


async def medians(h: Harness) -> dict[str, dict[str, float]]:
    """The median wall and CPU time of each command over RUNS runs, interleaved so that load on
    the machine hits them all alike."""
    env = h.cli_env()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "certbus --help": [*certbus_command(), "--help"],
        "certbus health": [*certbus_command(), "health"],
    }
    for argv in commands.values():  # warm the page cache and the bytecode once
        await timed(argv, env)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(RUNS):
        for name, argv in commands.items():
            times[name].append(await timed(argv, env))
    return {
        name: {"wall_s": statistics.median(w for w, _ in runs), "cpu_s": statistics.median(c for _, c in runs)}
        for name, runs in times.items()
    }


async def main() -> None:
    async with bench_harness() as h:
        await h.serve()  # five services, a provisioner and the shipped profiles
        await h.register_ocsp_provisioner()  # so validation can be ready, and health exit 0
        await h.wait_ready()
        print(f"certbus CLI start-up bench: median of {RUNS} runs each, health against the services in-process")
        result = await medians(h)
    reference = result["python -c pass"]["wall_s"]
    for name, median in result.items():
        wall, cpu = median["wall_s"], median["cpu_s"]
        verdict = "" if name == "python -c pass" else f"  ({'within' if wall <= TARGET_S else 'OVER'} {TARGET_S} s)"
        print(
            f"  {name:<16} {wall * 1000:7.1f} ms wall, {wall / reference:5.1f}x python -c pass,"
            f" {cpu * 1000:7.1f} ms CPU{verdict}"
        )
    save_result("cli_startup", {"runs": RUNS, "median": result, "target_s": TARGET_S})


if __name__ == "__main__":
    asyncio.run(main())
