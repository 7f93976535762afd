"""The issuance bench's steadier figures: messages per batch of each consumer, read from the
services' /metrics, and the machine's context switches per certificate."""

from __future__ import annotations

import subprocess
import sys

from bench.issuance import BATCH_METRIC, mean_batches
from bench.procs import machine_context_switches

METRICS = """\
# HELP certbus_batch_messages Messages a batch consumer took at once
# TYPE certbus_batch_messages histogram
certbus_batch_messages_bucket{durable="signing-approved",le="1.0"} 3.0
certbus_batch_messages_count{durable="signing-approved"} 40.0
certbus_batch_messages_sum{durable="signing-approved"} 700.0
certbus_batch_messages_count{durable="signing-revocations"} 2.0
certbus_batch_messages_sum{durable="signing-revocations"} 2.0
certbus_other_sum{durable="x"} 9.0
"""


def test_batch_sums_and_counts_are_read_by_durable_and_nothing_else() -> None:
    found = BATCH_METRIC.findall(METRICS)
    assert sorted(found) == [
        ("count", "signing-approved", "40.0"),
        ("count", "signing-revocations", "2.0"),
        ("sum", "signing-approved", "700.0"),
        ("sum", "signing-revocations", "2.0"),
    ]


def test_the_mean_batch_counts_only_what_a_round_took() -> None:
    before = {"signing-approved": (100.0, 10.0), "signing-revocations": (2.0, 2.0)}
    after = {"signing-approved": (700.0, 40.0), "signing-revocations": (2.0, 2.0), "audit-archive": (30.0, 3.0)}
    # (700 - 100) / (40 - 10) = 20; a durable that took nothing in the round is left out; one new
    # since (no figure before) counts from zero.
    assert mean_batches(before, after) == {"audit-archive": 10.0, "signing-approved": 20.0}


def test_the_machine_s_context_switches_grow_when_processes_hand_work_to_each_other() -> None:
    first = machine_context_switches()
    # Two hundred round trips through a pipe between two processes: each wakes the other.
    code = (
        "import os\nr1, w1 = os.pipe()\nr2, w2 = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    for _ in range(200): os.read(r1, 1); os.write(w2, b'x')\n"
        "    os._exit(0)\n"
        "for _ in range(200): os.write(w1, b'x'); os.read(r2, 1)\n"
        "os.wait()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert machine_context_switches() - first >= 200
