"""Reading an object from the object store never leaves a subscription behind, even when cancelled
half-way, so that a stopping service drains its NATS connection at once."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import nats
import pytest

from shared.devstack import NatsServer
from shared.stream import read_object

SIZE = 3 * 1024 * 1024  # many chunks (nats-py writes 128 KiB each)


async def test_a_cancelled_read_finishes_and_unsubscribes_and_the_connection_drains_at_once(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"t{uuid.uuid4().hex[:12]}"
    body = os.urandom(SIZE)
    try:
        store = await js.create_object_store(bucket)
        await store.put("crl", body)
        assert await read_object(js, bucket, "crl") == body
        baseline = len(nc._subs)

        reading = asyncio.ensure_future(read_object(js, bucket, "crl"))
        async with asyncio.timeout(10):
            while len(nc._subs) == baseline:  # cancelled once the chunks' subscription exists
                await asyncio.sleep(0)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        deadline = time.monotonic() + 10
        while len(nc._subs) > baseline:  # the shielded read finishes and unsubscribes
            assert time.monotonic() < deadline, "the cancelled read left its subscription behind"
            await asyncio.sleep(0.01)
        await js.delete_object_store(bucket)
    except BaseException:
        await nc.close()
        raise
    started = time.monotonic()
    await nc.drain()
    assert time.monotonic() - started < 2  # nats-py's drain would otherwise wait its 30 s timeout
