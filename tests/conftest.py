"""Fixtures: a real nats-server (JetStream) per session, a fresh PostgreSQL database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from deploy.local.devstack import NatsServer, PostgresCluster, port_open
from harness import Harness


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """An admin DSN: CERTBUS_TEST_DATABASE_URL, the machine's server on :5432, or a throwaway cluster."""
    url = os.environ.get("CERTBUS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if port_open("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    cluster = PostgresCluster().start()
    yield cluster.url.rsplit("/", 1)[0] + "/postgres"
    cluster.cleanup()


@pytest.fixture
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    name = f"certbus_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield urlunsplit(urlsplit(pg_admin_url)._replace(path=f"/{name}"))
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def harness(database_url: str, tmp_path) -> AsyncIterator[Harness]:  # type: ignore[no-untyped-def]
    h = Harness(database_url, tmp_path)
    try:
        await h.open()
        yield h
        failures = await h.lint_issued()
        assert not failures, f"issued certificates fail pkilint: {failures}"
    finally:
        await h.close()
