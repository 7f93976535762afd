"""Reading an object (a CRL) from the object store with stream "get" requests: a service in another
account than the store's reads the exact bytes with no consumer, a chunk that does not match the
digest in the object's metadata is detected, and a read cancelled half-way leaves nothing behind,
so a stopping service drains its NATS connection at once."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.errors import DigestMismatchError, NotFoundError

from harness import Harness
from shared.runtime.stream import read_object

SIZE = 3 * 1024 * 1024  # many chunks (nats-py writes 128 KiB each)


async def _put(h: Harness, name: str, body: bytes) -> None:
    """Store an object in the CRL bucket as signing (the only identity that may write there)."""
    nc = await h.connect("signing")
    try:
        store = await h.js(nc, "signing").object_store(h.common["crl_bucket"])
        await store.put(name, body)
    finally:
        await nc.close()


async def _consumers(h: Harness) -> int:
    """How many consumers the object store's stream has (asked as the admin)."""
    nc = await h.connect("admin")
    try:
        info = await h.js(nc).stream_info(h.names.object_stream)
        return int(info.state.consumer_count)
    finally:
        await nc.close()


class _CountingGets:
    """A JetStream context that counts the "get" requests made through it and signals the `after`th."""

    def __init__(self, js: JetStreamContext, after: int) -> None:
        self._js = js
        self._after = after
        self.calls = 0
        self.reached = asyncio.Event()

    async def get_msg(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self._after:
            self.reached.set()
        return await self._js.get_msg(*args, **kwargs)


async def test_a_read_from_another_account_returns_the_exact_bytes_without_a_consumer(harness: Harness) -> None:
    body = os.urandom(SIZE)
    await _put(harness, "crl", body)
    for reader in ("validation", "audit"):
        nc = await harness.connect(reader)
        try:
            js = harness.js(nc, reader)
            assert await read_object(js, harness.common["crl_bucket"], "crl") == body
            with pytest.raises(NotFoundError):
                await read_object(js, harness.common["crl_bucket"], "no-such-crl")
        finally:
            await nc.close()
    assert await _consumers(harness) == 0


async def test_a_chunk_that_does_not_match_the_digest_is_detected(harness: Harness) -> None:
    """Someone replaces a chunk of a stored CRL with bytes of the same length: the metadata still
    names the original digest, and the read refuses what it got."""
    bucket = harness.common["crl_bucket"]
    await _put(harness, "crl", os.urandom(SIZE))
    admin = await harness.connect("admin")
    try:
        js = harness.js(admin)
        info = await (await js.object_store(bucket)).get_info("crl")
        chunks = f"$O.{bucket}.C.{info.nuid}"
        first = await js.get_msg(harness.names.object_stream, seq=1, subject=chunks, next=True)
        assert first.seq is not None and first.data
        await js.delete_msg(harness.names.object_stream, first.seq)
        signing = await harness.connect("signing")
        try:
            await harness.js(signing, "signing").publish(chunks, os.urandom(len(first.data)))
        finally:
            await signing.close()
    finally:
        await admin.close()
    nc = await harness.connect("validation")
    try:
        with pytest.raises(DigestMismatchError):
            await read_object(harness.js(nc, "validation"), bucket, "crl")
    finally:
        await nc.close()


async def test_a_cancelled_read_leaves_nothing_behind_and_the_connection_drains_at_once(harness: Harness) -> None:
    body = os.urandom(SIZE)
    await _put(harness, "crl", body)
    bucket = harness.common["crl_bucket"]
    nc = await harness.connect("validation")
    try:
        js = harness.js(nc, "validation")
        assert await read_object(js, bucket, "crl") == body
        baseline = len(nc._subs)  # the connection's request inbox exists from here on

        counting = _CountingGets(js, after=5)  # the metadata, then a few of the 24 chunks
        reading = asyncio.ensure_future(read_object(counting, bucket, "crl"))  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            await counting.reached.wait()
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert counting.calls == 5, "the read was not cut short half-way"
        assert len(nc._subs) == baseline, "the cancelled read left a subscription behind"
        assert await _consumers(harness) == 0, "the read made a consumer on the server"
    except BaseException:
        await nc.close()
        raise
    started = time.monotonic()
    await nc.drain()
    assert time.monotonic() - started < 2  # nats-py's drain would wait its 30 s timeout for a stuck read
