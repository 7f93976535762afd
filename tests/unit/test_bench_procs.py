"""bench.procs: the CPU time and memory of a process and what it started, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.procs import CpuMeter, children, cpu_s, tree_pss_kib


def test_a_busy_child_is_counted_in_its_parents_group_and_an_idle_process_costs_nothing() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<1.5: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    try:
        time.sleep(0.2)  # both interpreters started
        assert busy.pid in children(os.getpid())
        meter = CpuMeter()
        groups = {"me": [os.getpid()], "idle": [idle.pid]}
        meter.start(groups)
        time.sleep(0.6)
        used = meter.stop(groups)
        assert used["me"] >= 0.2, used  # the busy child ran most of that time
        assert used["idle"] < 0.1, used
        assert cpu_s(os.getpid()) > 0
        assert tree_pss_kib(os.getpid()) > 0
    finally:
        busy.wait(5)
        idle.kill()
        idle.wait(5)


def test_a_process_that_is_gone_reads_as_nothing() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(5)
    assert cpu_s(gone.pid) == 0.0
    assert tree_pss_kib(gone.pid) == 0
