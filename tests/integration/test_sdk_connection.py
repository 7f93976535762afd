"""A client waiting for an outcome learns at once that its NATS connection is gone (a node of the
cluster was killed), instead of waiting for its timeout: it can send the same request again
through another node straight away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from deploy.local.devstack import NatsServer
from shared.base.settings import CommonSettings
from shared.client.errors import Unreachable
from shared.client.sdk import QUERY_FIRST_ATTEMPT_S, CertbusClient
from shared.contract.queries import RequestsAnswer


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


@pytest.fixture
async def client() -> AsyncIterator[CertbusClient]:
    """A client connected to a throwaway nats-server of its own."""
    server = NatsServer(monitor=False).start()
    try:
        connected = CertbusClient(CommonSettings(nats_url=server.url))
        await connected.connect()
        yield connected
        await connected.close()
    finally:
        server.stop()
        server.cleanup()


async def _lossy_responder(client: CertbusClient, subject: str, lose: int) -> list[float]:
    """A query responder that never answers the first `lose` queries (as a replica killed while it
    held them), then answers; returns when each query arrived."""
    arrived: list[float] = []

    async def answer(msg: Msg) -> None:
        arrived.append(time.monotonic())
        if len(arrived) > lose:
            await msg.respond(RequestsAnswer(requests=[]).model_dump_json().encode())

    await client.nc.subscribe(subject, queue="enrollment", cb=answer)
    await client.nc.flush()
    return arrived


async def test_a_query_lost_with_a_killed_replica_is_asked_again_within_its_timeout(client: CertbusClient) -> None:
    arrived = await _lossy_responder(client, client._subject("enrollment", "requests"), lose=1)
    started = time.monotonic()
    answer = await client._ask("enrollment", "requests", None, RequestsAnswer, timeout=5.0)
    assert answer.requests == []
    assert len(arrived) == 2
    assert arrived[1] - started == pytest.approx(QUERY_FIRST_ATTEMPT_S, abs=0.5)


async def test_a_query_asked_once_is_not_sent_again(client: CertbusClient) -> None:
    """A long query that must not run twice (a replay, a full check) waits its whole timeout."""
    arrived = await _lossy_responder(client, client._subject("audit", "check"), lose=1)
    with pytest.raises(Unreachable, match="did not answer 'check'"):
        await client._ask("audit", "check", None, RequestsAnswer, timeout=2.5, once=True)
    assert len(arrived) == 1


async def test_a_slow_answer_to_the_first_copy_of_a_query_is_still_taken(client: CertbusClient) -> None:
    """A replica that answers after the first attempt (a loaded machine) is not thrown away for the
    copy sent meanwhile: the answer to the first copy is read."""
    arrived: list[float] = []

    async def slow(msg: Msg) -> None:
        arrived.append(time.monotonic())
        if len(arrived) == 1:
            await asyncio.sleep(QUERY_FIRST_ATTEMPT_S + 1.0)
            await msg.respond(RequestsAnswer(requests=[]).model_dump_json().encode())

    await client.nc.subscribe(client._subject("enrollment", "requests"), queue="enrollment", cb=slow)
    await client.nc.flush()
    started = time.monotonic()
    answer = await client._ask("enrollment", "requests", None, RequestsAnswer, timeout=5.0)
    assert answer.requests == []
    assert time.monotonic() - started == pytest.approx(QUERY_FIRST_ATTEMPT_S + 1.0, abs=0.5)


async def test_a_query_nobody_listens_to_fails_at_once(client: CertbusClient) -> None:
    started = time.monotonic()
    with pytest.raises(Unreachable, match="did not answer 'requests'"):
        await client._ask("enrollment", "requests", None, RequestsAnswer, timeout=5.0)
    assert time.monotonic() - started < 1.0
