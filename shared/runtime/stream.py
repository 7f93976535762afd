"""The one JetStream stream that holds the whole Certbus history, declared on purpose."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ObjectInfo,
    ObjectStoreConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadObjectMetaError, DigestMismatchError, NotFoundError

from shared.base.settings import CommonSettings
from shared.contract.bounds import MAX_REQUEST_BYTES, STREAM_MAX_MSG_BYTES


def stream_config(settings: CommonSettings) -> StreamConfig:
    """File storage, keep everything, deduplicate retried publishes by `Nats-Msg-Id`. Bounded: once
    the log holds `stream_max_bytes` or `stream_max_msgs`, new events are refused (discard NEW),
    never old ones deleted; no message may exceed STREAM_MAX_MSG_BYTES."""
    return StreamConfig(
        name=settings.stream,
        subjects=[f"{settings.subject_root}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        max_msgs=settings.stream_max_msgs,
        max_bytes=settings.stream_max_bytes,
        max_msg_size=STREAM_MAX_MSG_BYTES,
        max_age=0,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
        allow_direct=True,
        # What the log stored is republished (as core messages) for subscribers in other accounts.
        republish=RePublish(src=f"{settings.subject_root}.>", dest=f"{settings.events_root}.{settings.subject_root}.>"),
    )


def ingress_stream_config(settings: CommonSettings) -> StreamConfig:
    """The requests waiting for admission: a work queue (an admitted request leaves it), at most
    `ingress_backlog` per identity and kind (the server refuses more, per subject), requests of at
    most MAX_REQUEST_BYTES; retried publishes deduplicated by the requester's event id."""
    return StreamConfig(
        name=settings.ingress_stream,
        subjects=[f"{settings.ingress_root}.>"],
        storage=StorageType.FILE,
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=settings.ingress_backlog,
        discard_new_per_subject=True,
        max_bytes=settings.ingress_max_bytes,
        max_msg_size=MAX_REQUEST_BYTES,
        max_age=0,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
    )


async def ensure_stream(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the log and the ingress stream if they are missing, and bring their limits to the
    settings; never rewrite an existing stream's subjects (that would change what history is)."""
    for wanted in (stream_config(settings), ingress_stream_config(settings)):
        assert wanted.name is not None
        try:
            info = await js.stream_info(wanted.name)
        except NotFoundError:
            await js.add_stream(wanted)
            continue
        if set(info.config.subjects or []) != set(wanted.subjects or []):
            raise RuntimeError(
                f"stream {wanted.name} captures {info.config.subjects}, expected "
                f"{wanted.subjects}: fix the stream by hand, Certbus will not rewrite history"
            )
        limits = (
            "max_msgs",
            "max_bytes",
            "max_msg_size",
            "max_msgs_per_subject",
            "discard_new_per_subject",
            "republish",
            "num_replicas",  # a log grown from one server to a cluster is replicated on its nodes
        )
        if any(getattr(info.config, name) != getattr(wanted, name) for name in limits):
            await js.update_stream(replace(info.config, **{name: getattr(wanted, name) for name in limits}))


async def ensure_object_store(js: JetStreamContext, settings: CommonSettings) -> None:
    """Create the object-store bucket that holds CRLs if it is missing."""
    try:
        await js.object_store(settings.crl_bucket)
    except NotFoundError:
        await js.create_object_store(
            bucket=settings.crl_bucket,
            config=ObjectStoreConfig(
                bucket=settings.crl_bucket,
                storage=StorageType.FILE,
                replicas=settings.stream_replicas,
                max_bytes=settings.crl_store_max_bytes,
            ),
        )


class LogNotReady(RuntimeError):
    """The log, the ingress stream or the CRL store does not exist yet (the admin creates them)."""


async def require_log(js: JetStreamContext, streams: Sequence[str]) -> None:
    """Check that the streams a service uses exist; raise LogNotReady saying how to create them.

    Services never create, change or delete the log: only the admin (the log account's user) may,
    with `certbus-admin init` (`make run` and the deployment's stream-init job run it)."""
    for stream in streams:
        try:
            await js.stream_info(stream)
        except NotFoundError:
            raise LogNotReady(
                f"stream {stream} does not exist: create the log first (`certbus-admin init` as the NATS admin)"
            ) from None


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
    if (
        set(current) != set(filters)
        or not _same_duration(config.ack_wait, ack_wait_s)
        or config.max_deliver != max_deliver
    ):
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


def _same_duration(server_s: float | None, wanted_s: float) -> bool:
    """Whether a duration the server reports (nats-py converts its nanoseconds to float seconds, after
    truncating what it sent to whole nanoseconds) is the one configured, to the microsecond."""
    return server_s is not None and abs(server_s - wanted_s) < 1e-6


async def read_object(js: JetStreamContext, bucket: str, name: str) -> bytes:
    """An object's bytes from the object store, read chunk by chunk with stream "get" requests and
    checked against the digest its metadata names.

    No consumer is created, so a reader in another account than the store's needs only the
    stream's "get" API (see `shared.trust.accounts`), and a read cut short (the caller cancelled) leaves
    nothing behind on the server. Raises nats-py's NotFoundError (no such object, or deleted),
    BadObjectMetaError and DigestMismatchError.
    """
    stream = f"OBJ_{bucket}"
    meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    meta = await js.get_msg(stream, subject=meta_subject)
    info = ObjectInfo.from_response(json.loads(meta.data or b"{}"))
    if info.deleted:
        raise NotFoundError(description=f"object {name!r} was deleted")
    if not info.nuid:
        raise BadObjectMetaError
    chunk_subject = f"$O.{bucket}.C.{info.nuid}"
    data, digest, seq = bytearray(), hashlib.sha256(), 0
    while len(data) < (info.size or 0):
        chunk = await js.get_msg(stream, seq=seq + 1, subject=chunk_subject, next=True)
        assert chunk.seq is not None
        seq = chunk.seq
        data += chunk.data or b""
        digest.update(chunk.data or b"")
    expected = (info.digest or "").split("=", 1)[-1]
    if base64.urlsafe_b64decode(expected + "=" * (-len(expected) % 4)) != digest.digest():
        raise DigestMismatchError
    return bytes(data)
