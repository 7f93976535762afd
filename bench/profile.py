"""`make profile`: where each service spends its CPU while it issues, sampled with py-spy.

Runs the issuance bench (one round, `BENCH_N` requests, 3,000 by default) and, once its loaded round
has begun, records every service process for `--seconds` with `py-spy record --nonblocking
--subprocesses` (audit's pkilint worker included). Each service's samples are summarised as the
share of its busy samples (idle waits left out) under each frame (inclusive), and the frames that
are themselves on the CPU (self), into bench/results/profile-<service>.txt, and printed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# A sample whose innermost frame is one of these is a process waiting, not working.
IDLE = ("select (selectors.py)", "wait (threading.py)", "_worker (concurrent", "poll (selectors.py)")
OURS = ("services/", "shared/", "asyncpg", "faststream", "nats/", "pydantic", "cryptography", "pkilint", "json")


def summarise(raw: Path, top: int = 40) -> str:
    """The busy samples of one py-spy `raw` file, by frame (line numbers folded)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    busy = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if any(mark in frames[-1] for mark in IDLE):
            idle += n
            continue
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not busy:
        return f"{raw.stem}: no busy samples ({idle} idle)\n"
    lines = [f"{raw.stem}: {busy} busy samples, {idle} idle", "  inclusive (share of busy samples under the frame):"]
    lines += [f"  {n * 100 / busy:5.1f}%  {f}" for f, n in inclusive.most_common(top * 2) if any(k in f for k in OURS)][
        :top
    ]
    lines.append("  self (on the CPU in the frame itself):")
    lines += [f"  {n * 100 / busy:5.1f}%  {f}" for f, n in own.most_common(12)]
    return "\n".join(lines) + "\n"


def services() -> dict[str, int]:
    """The pids of the running service processes started by the bench, by service."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-m" in argv and (module := argv[argv.index(b"-m") + 1].decode()).startswith("services."):
            found[module.split(".")[1]] = int(cmdline.parent.name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    args = parser.parse_args(argv)
    spy = Path(sys.executable).parent / "py-spy"
    # One round and no cfssl reference: only the services' burst is sampled.
    env = dict(os.environ, BENCH_ROUNDS="1", BENCH_N=os.environ.get("BENCH_N", "3000"), BENCH_CFSSL_SECONDS="0")
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench.issuance"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert bench.stdout is not None
    for line in bench.stdout:  # the loaded round begins after the unloaded requests
        print(line, end="", flush=True)
        if "one request at a time" in line:
            break
    time.sleep(2)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        record = [str(spy), "record", "-d", str(args.seconds), "-r", str(args.rate), "--nonblocking", "--subprocesses"]
        recorders = {
            name: subprocess.Popen(
                [*record, "-f", "raw", "-o", f"{tmp}/{name}.raw", "-p", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in services().items()
        }
        for recorder in recorders.values():
            recorder.wait(timeout=args.seconds + 60)
        for line in bench.stdout:
            print(line, end="", flush=True)
        bench.wait(timeout=600)
        for name in sorted(recorders):
            raw = Path(tmp) / f"{name}.raw"
            text = summarise(raw) if raw.exists() else f"{name}: py-spy recorded nothing\n"
            (RESULTS / f"profile-{name}.txt").write_text(text)
            print(text)
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
