"""The one JetStream stream that holds the whole Certbus history, declared on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared.settings import CommonSettings


def stream_config(settings: CommonSettings) -> StreamConfig:
    """File storage, keep everything, deduplicate retried publishes by `Nats-Msg-Id`."""
    return StreamConfig(
        name=settings.stream,
        subjects=[f"{settings.subject_root}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
        allow_direct=True,
    )


async def ensure_stream(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the stream if it is missing; never silently rewrite an existing one."""
    wanted = stream_config(settings)
    try:
        info = await js.stream_info(settings.stream)
    except NotFoundError:
        await js.add_stream(wanted)
        return
    if set(info.config.subjects or []) != set(wanted.subjects or []):
        raise RuntimeError(
            f"stream {settings.stream} captures {info.config.subjects}, expected "
            f"{wanted.subjects}: fix the stream by hand, Certbus will not rewrite history"
        )


async def ensure_object_store(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the object-store bucket that holds CRLs if it is missing."""
    from nats.js.api import ObjectStoreConfig

    try:
        await js.object_store(settings.crl_bucket)
    except NotFoundError:
        await js.create_object_store(
            bucket=settings.crl_bucket,
            config=ObjectStoreConfig(
                bucket=settings.crl_bucket,
                storage=StorageType.FILE,
                replicas=settings.stream_replicas,
            ),
        )


async def ensure_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    filters: Sequence[str],
    *,
    ack_wait_s: float,
    max_deliver: int,
) -> None:
    """Give an existing durable consumer exactly `filters`, `ack_wait_s` and `max_deliver`, keeping
    its position and the rest of its config.

    A pull subscriber binds to an existing durable as it is, so a release whose service consumes a
    new event type would otherwise never receive it, and a changed setting would never apply.
    """
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return  # the subscriber creates it with these settings
    config = info.config
    current = config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
    if set(current) != set(filters) or config.ack_wait != ack_wait_s or config.max_deliver != max_deliver:
        await js.add_consumer(
            stream,
            config=replace(
                config,
                filter_subject=None,
                filter_subjects=list(filters),
                ack_wait=ack_wait_s,
                max_deliver=max_deliver,
            ),
        )


async def read_object(js: JetStreamContext, bucket: str, name: str) -> bytes:
    """An object's bytes from the object store, read to the end even if the caller is cancelled.

    nats-py reads an object through an ordered consumer that it unsubscribes only once the last
    chunk has arrived: cancelled half-way (a service stopping), the subscription is left with
    chunks nobody reads, and draining the connection then waits its whole timeout. An object
    (a CRL) is small, so the read is shielded and finishes; the caller's cancellation still
    propagates. Raises nats-py's errors (NotFoundError, DigestMismatchError, ...) as they are.
    """

    async def read() -> bytes:
        store = await js.object_store(bucket)
        result = await store.get(name)
        return bytes(result.data or b"")

    task = asyncio.ensure_future(read())
    # Once the caller is gone nobody awaits the task: its outcome is retrieved here, not warned about.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return await asyncio.shield(task)
