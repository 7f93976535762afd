"""A client waiting for an outcome learns at once that its NATS connection is gone (a node of the
cluster was killed), instead of waiting for its timeout: it can send the same request again
through another node straight away."""

from __future__ import annotations

import asyncio
import time

import pytest

from deploy.local.devstack import NatsServer
from shared.base.settings import CommonSettings
from shared.client.errors import Unreachable
from shared.client.sdk import CertbusClient


async def test_waiting_for_an_outcome_fails_at_once_when_the_connection_is_lost() -> None:
    server = NatsServer(monitor=False).start()
    try:
        client = CertbusClient(CommonSettings(nats_url=server.url))
        await client.connect()
        async with client._outcomes(["pki.cert.r1.issued"]) as outcome:
            waiting = asyncio.create_task(client._within(outcome, 30.0, "r1"))
            await asyncio.sleep(0.2)
            assert not waiting.done()
            killed = time.monotonic()
            await asyncio.to_thread(server.stop, True)
            with pytest.raises(Unreachable, match="connection to NATS was lost"):
                await waiting
            assert time.monotonic() - killed < 5.0
        assert not client.connected
    finally:
        server.cleanup()
