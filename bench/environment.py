"""A throwaway NATS server and a fresh database for a benchmark, as a harness (cleaned up after)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import Harness
from shared.devstack import NatsServer, PostgresCluster, port_open


@asynccontextmanager
async def bench_harness() -> AsyncIterator[Harness]:
    """A Harness on a throwaway nats-server and a fresh database (the machine's PostgreSQL, the one
    in CERTBUS_TEST_DATABASE_URL, or a throwaway cluster); everything is removed afterwards."""
    nats_server = NatsServer().start()
    cluster = None
    admin = os.environ.get("CERTBUS_TEST_DATABASE_URL")
    if admin is None and port_open("127.0.0.1", 5432):
        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    if admin is None:
        cluster = PostgresCluster().start()
        admin = cluster.url.rsplit("/", 1)[0] + "/postgres"
    db = f"certbus_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    h = Harness(nats_server.url, admin.rsplit("/", 1)[0] + f"/{db}", Path(tempfile.mkdtemp(prefix="certbus-bench-")))
    try:
        yield h
    finally:
        await h.close()
        nats_server.cleanup()
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()
        if cluster is not None:
            cluster.cleanup()


def save_result(name: str, result: dict[str, Any]) -> None:
    """Write a benchmark's figures to bench/results/<name>.json."""
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
