"""The five services running in this process over the session's NATS and a fresh database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from harness import Harness
from services.audit import store
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


@pytest.fixture
async def audit_archive(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on audit's schema, migrated, with no service running (the archive alone)."""
    pool = await db.create_pool(database_url, "audit")
    await db.migrate(pool, "audit", [Path(store.__file__).parent / "migrations"])
    yield pool
    await pool.close()


@pytest.fixture
async def signing(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on signing's schema, migrated, with no service running."""
    pool = await db.create_pool(database_url, "signing")
    await db.migrate(pool, "signing", [Path(signing_store.__file__).parent / "migrations"])
    yield pool
    await pool.close()
