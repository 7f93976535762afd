"""The five services running in this process over the session's NATS and a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest

from harness import Harness
from services.acme import store as acme_store
from services.audit import store
from services.enrollment import store as enrollment_store
from services.signing import store as signing_store
from shared.contract.events import CertificateIssued
from shared.pki.crypto import KeyType, PrivateKey, build_csr, generate_key
from shared.runtime import db

EnrollWithKey = Callable[..., Awaitable[tuple[PrivateKey, CertificateIssued]]]


@pytest.fixture
async def stack(harness: Harness) -> Harness:
    return await harness.serve()


@pytest.fixture
def enroll_with_key(harness: Harness) -> EnrollWithKey:
    """Enroll like `Harness.enroll`, but keep the key (or use the one given): returns (key, issued)."""

    async def enroll(
        *names: str, key: PrivateKey | None = None, key_type: KeyType = "ec-p256", profile: str = "tls-server"
    ) -> tuple[PrivateKey, CertificateIssued]:
        key = key or generate_key(key_type)
        async with harness.client() as c:
            csr = build_csr(key, list(names)).decode()
            return key, await c.enroll(csr, harness.token(*names, profile=profile), profile=profile)

    return enroll


async def _migrated(database_url: str, schema: str, store_module: ModuleType) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a service's schema, migrated from the migrations beside its store module."""
    pool = await db.create_pool(database_url, schema)
    await db.migrate(pool, schema, [Path(str(store_module.__file__)).parent / "migrations"])
    yield pool
    await pool.close()


@pytest.fixture
async def audit_archive(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on audit's schema, migrated, with no service running (the archive alone)."""
    async for pool in _migrated(database_url, "audit", store):
        yield pool


@pytest.fixture
async def enrollment_schema(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on enrollment's schema, migrated, with no service running."""
    async for pool in _migrated(database_url, "enrollment", enrollment_store):
        yield pool


@pytest.fixture
async def signing(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on signing's schema, migrated, with no service running."""
    async for pool in _migrated(database_url, "signing", signing_store):
        yield pool


@pytest.fixture
async def acme_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on ACME's schema, migrated, with no service running."""
    async for pool in _migrated(database_url, "acme", acme_store):
        yield pool
