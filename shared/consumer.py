"""Exactly-once effects on at-least-once delivery.

Durable pull consumers with explicit ack; FastStream's ack policy is NACK_ON_ERROR, chosen so
that an unexpected error is retried (up to `max_deliver`) rather than dropped on the first try.
Around every handler this middleware decides what a failure means:

- a malformed event or a broken invariant (`ValidationError`, `EventRejected`) can never be
  applied: it is parked in the service's `parked` table with its reason, and acked;
- an infrastructure outage (Postgres or NATS unreachable) is not the message's fault: the
  handler is retried in place with backoff, keeping the message in progress, so no delivery
  is spent and nothing accepted is ever parked because a database restarted;
- anything else is nacked and redelivered, and parked on its last delivery.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
from faststream import BaseMiddleware
from faststream.message import StreamMessage
from pydantic import ValidationError

from shared.db import claim_event
from shared.events import Event
from shared.metrics import EVENTS_CONSUMED, EVENTS_DUPLICATE, EVENTS_PARKED, HANDLER_SECONDS

log = logging.getLogger("certbus.consumer")
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.InsufficientResourcesError,
    ConnectionError,
    OSError,
    TimeoutError,  # includes nats.errors.TimeoutError
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
    nats.js.errors.NoStreamResponseError,
)


class EventRejected(Exception):
    """An event that can never be applied (a broken invariant); it is parked, not retried."""


PoolGetter = Callable[[], asyncpg.Pool]


def event_middleware(
    service: str,
    pool: PoolGetter,
    max_deliver: int,
    stopping: Callable[[], bool],
    max_backoff_s: float = 10.0,
) -> type[BaseMiddleware]:
    """Build the middleware class that parks, retries or nacks for `service`'s consumers.

    `stopping` says the service is shutting down: an in-place retry then gives up and the message
    is nacked for redelivery, so shutdown never waits on an outage.
    """

    async def park(msg: StreamMessage[Any], reason: str) -> None:
        raw = msg.raw_message
        seq = raw.metadata.sequence.stream
        async with pool().acquire() as conn:
            await conn.execute(
                "INSERT INTO parked (consumer, subject, stream_seq, payload, reason) VALUES ($1, $2, $3, $4, $5)",
                raw.metadata.consumer,
                raw.subject,
                seq,
                raw.data,
                reason[:4000],
            )
        EVENTS_PARKED.labels(service).inc()
        log.error(
            "parked a message that cannot be applied",
            extra={"subject": raw.subject, "stream_seq": seq, "reason": reason[:500]},
        )

    class EventMiddleware(BaseMiddleware):
        async def consume_scope(
            self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            delay = 0.2
            while True:
                try:
                    return await call_next(msg)
                except (ValidationError, EventRejected) as exc:
                    await park(msg, f"{type(exc).__name__}: {exc}")
                    return None
                except TRANSIENT_ERRORS as exc:
                    if stopping():
                        raise
                    log.warning(
                        "infrastructure unavailable, retrying in place",
                        extra={"error": repr(exc), "retry_in_s": delay},
                    )
                    await msg.in_progress()  # type: ignore[attr-defined]
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff_s)
                except Exception as exc:
                    delivered = msg.raw_message.metadata.num_delivered
                    if delivered >= max_deliver:
                        await park(msg, f"failed {delivered} deliveries: {exc!r}")
                        return None
                    log.exception("handler failed; the message will be redelivered")
                    raise

    return EventMiddleware


async def apply_once(
    pool: asyncpg.Pool,
    consumer: str,
    event: Event,
    stream_seq: int | None,
    apply: Callable[[asyncpg.Connection], Awaitable[None]],
) -> bool:
    """Run `apply` and record the event as applied, in one transaction.

    Returns False (and changes nothing) when this consumer already applied the event.
    """
    correlation_id.set(event.correlation_id)
    with HANDLER_SECONDS.labels(consumer, event.event_type).time():
        async with pool.acquire() as conn, conn.transaction():
            if not await claim_event(conn, consumer, event.event_id, stream_seq):
                EVENTS_DUPLICATE.labels(consumer).inc()
                return False
            await apply(conn)
    EVENTS_CONSUMED.labels(consumer, event.event_type).inc()
    return True
