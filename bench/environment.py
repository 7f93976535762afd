"""A throwaway Certbus for a benchmark, as a harness (its own nats-server and a fresh database;
cleaned up after)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deploy.local.devstack import PostgresCluster, port_open
from harness import Harness

# The requester the benchmarks send their requests as (added to the harness's identities).
REQUESTER = "bench"
# A benchmark measures throughput, not the per-identity admission rate (600 a minute by default):
# one requester sends every request here.
ADMISSION_RATE_PER_MIN = 10_000_000


@asynccontextmanager
async def postgres_admin() -> AsyncIterator[str]:
    """The admin URL of a PostgreSQL to make benchmark databases in: the one in
    CERTBUS_TEST_DATABASE_URL, the machine's, or a throwaway cluster (removed afterwards)."""
    cluster = None
    admin = os.environ.get("CERTBUS_TEST_DATABASE_URL")
    if admin is None and port_open("127.0.0.1", 5432):
        admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    if admin is None:
        cluster = PostgresCluster().start()
        admin = cluster.url.rsplit("/", 1)[0] + "/postgres"
    try:
        yield admin
    finally:
        if cluster is not None:
            cluster.cleanup()


@asynccontextmanager
async def fresh_database(admin: str, prefix: str = "certbus_bench") -> AsyncIterator[str]:
    """The URL of a new database `<prefix>_<random>` on `admin`'s server, dropped afterwards."""
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db}"')
    await conn.close()
    try:
        yield admin.rsplit("/", 1)[0] + f"/{db}"
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


@asynccontextmanager
async def bench_harness(stream_max_bytes: int | None = None) -> AsyncIterator[Harness]:
    """A Harness (its own nats-server in the production trust model, opened) on a fresh database
    (`postgres_admin`), with requester REQUESTER, and a log of `stream_max_bytes` if given (the
    harness's is small); everything is removed afterwards (but the services' logs, after a failure)."""
    async with postgres_admin() as admin, fresh_database(admin) as url:
        tmp = Path(tempfile.mkdtemp(prefix="certbus-bench-"))
        h = Harness(url, tmp)
        if stream_max_bytes is not None:
            h.common["stream_max_bytes"] = stream_max_bytes
        for service in ("enrollment", "revocation"):
            h.overrides[service] = {"admission_rate_per_min": ADMISSION_RATE_PER_MIN}
        finished = False
        try:
            await h.open()
            await h.identity(REQUESTER)
            yield h
            finished = True
        finally:
            await h.close()
            if finished:  # after a failure, the services' logs stay in `tmp`
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                print(f"bench: the services' logs are in {tmp}", file=sys.stderr)


def save_result(name: str, result: dict[str, Any]) -> None:
    """Write a benchmark's figures to bench/results/<name>.json."""
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
