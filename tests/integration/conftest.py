"""The five services running in this process over the session's NATS and a fresh database."""

from __future__ import annotations

import pytest

from harness import Harness


@pytest.fixture
async def stack(harness: Harness) -> Harness:
    await harness.start()
    await harness.register_provisioner()
    await harness.apply_profiles()
    return harness
