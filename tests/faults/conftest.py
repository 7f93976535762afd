"""The fault suite's system: `make run CLUSTER=3` on free loopback ports (three NATS nodes, the log
replicated on each, two replicas of every service, PostgreSQL), one for the whole module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.devstack import LocalStack, free_port
from local_stack import _free

REPLICAS = 2
NODES = 3


def free_run(width: int, steps: tuple[int, ...] = (0,)) -> int:
    """A port p such that p+step+i is free for every step and every i below `width`."""
    for _ in range(200):
        base = free_port()
        if all(_free(base + step + i) for step in steps for i in range(width) if step + i):
            return base
    raise RuntimeError("no run of free ports")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalStack]:
    # Under a directory the `postgres` user may enter: the stack runs PostgreSQL as that user.
    outer = Path(tempfile.mkdtemp(prefix="certbus-faults-"))
    outer.chmod(0o755)
    http_base = free_run(5, steps=tuple(range(0, 10 * REPLICAS, 10)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env.update(
        CERTBUS_NATS_URL=f"nats://127.0.0.1:{free_run(NODES)}",
        CERTBUS_NATS_CLUSTER_PORT=str(free_run(NODES)),
        CERTBUS_PG_PORT=str(free_port()),
        CERTBUS_HTTP_PORT_BASE=str(http_base),
        CERTBUS_PUBLIC_BASE_URL=f"http://127.0.0.1:{http_base}",
        # One requester sends the whole burst: admission must not throttle it.
        CERTBUS_ADMISSION_RATE_PER_MIN="10000000",
        PYTHONUNBUFFERED="1",
    )
    logs = outer / "logs"
    logs.mkdir()
    stack = LocalStack(outer / "home", env, cluster=NODES, replicas=REPLICAS, log_dir=logs)
    try:
        stack.start_infrastructure()
        missing = stack.start_services()
        assert not missing, missing
        yield stack
    finally:
        stack.stop()
        if os.environ.get("CERTBUS_FAULTS_KEEP"):
            print(f"fault suite's stack kept in {outer}")
        else:
            shutil.rmtree(outer, ignore_errors=True)
