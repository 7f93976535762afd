"""The fault suite's system: `make run CLUSTER=3` on free loopback ports (three NATS nodes, the log
replicated on each, two replicas of every service, PostgreSQL), one for the whole module
(CERTBUS_FAULTS_KEEP=1 keeps its home and the services' logs)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.burst import cluster_stack
from deploy.local.devstack import LocalStack


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalStack]:
    with cluster_stack(keep=bool(os.environ.get("CERTBUS_FAULTS_KEEP"))) as stack:
        yield stack
