"""What every Certbus service process is made of: a FastStream app over NATS, a Postgres pool on
its own schema, an outbox relay, a heartbeat, a health query (listing every replica of the service)
and an HTTP endpoint with /healthz (this replica alive), /readyz (able to do its job) and /metrics.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import operator
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web
from faststream import AckPolicy, ExceptionMiddleware, FastStream
from faststream.message import StreamMessage
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsRouter, PullSub
from faststream.nats.annotations import NatsMessage
from faststream.nats.security import NatsNKey, NatsUserPassword
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field, ValidationError

from shared.base import logs
from shared.base.clock import Clock, SystemClock
from shared.base.settings import ServiceSettings
from shared.contract.binding import bind
from shared.contract.events import EVENT_CLASSES, EVENT_TYPES, Event, OperatorCommand
from shared.contract.ingress import Kind, ingress_filter
from shared.contract.queries import Failure
from shared.runtime import db, rebuild, replicas
from shared.runtime.batch import After, BatchApplier, BatchConsumer, PullFeed, ensure_durable
from shared.runtime.consumer import Apply, Delivery, GroupCommit, Process, applying, event_middleware
from shared.runtime.inflight import InFlight
from shared.runtime.metrics import LOG_USED
from shared.runtime.outbox import OutboxEntry, OutboxRelay
from shared.runtime.rebuild import FRESH_SCHEMA, Adopt, acknowledged
from shared.runtime.replicas import Heartbeat
from shared.runtime.stream import ensure_consumer, require_log
from shared.trust.operators import REGISTRY

log = logging.getLogger("certbus.service")
VERSION = "0.1.0"

Hook = Callable[["Runtime"], Awaitable[None]]


@dataclass(frozen=True)
class Readiness:
    """What a live service still lacks to do its job (nothing: ready), and facts the CLI compares
    across services (for example the issuing CA signing uses, the CAs validation has responders for)."""

    missing: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # ready, but something needs an operator soon


ReadinessCheck = Callable[["Runtime"], Awaitable[Readiness]]


@dataclass
class Runtime:
    """A running service's resources, created once by the composition root."""

    name: str
    settings: ServiceSettings
    broker: NatsBroker
    events: NatsRouter
    queries: NatsRouter
    in_flight: InFlight  # the messages its handlers hold, kept in progress while it lives
    documented: NatsRouter = field(default_factory=NatsRouter)  # batch consumers, for the AsyncAPI document
    clock: Clock = field(default_factory=SystemClock)
    started_at: float = field(default_factory=time.monotonic)
    stopping: bool = False
    _assembled: bool = False
    _pool: asyncpg.Pool | None = None
    consumers: dict[str, list[str]] = field(default_factory=dict)  # durable -> filter subjects
    ingress_consumers: dict[str, list[str]] = field(default_factory=dict)  # the same, on the ingress stream
    _relay: OutboxRelay | None = None
    _heartbeat: Heartbeat | None = None
    readiness: ReadinessCheck | None = None  # the service's own conditions, beyond being alive
    rebuilding: bool = False  # its database is being rebuilt from the log: timers must not act yet
    rebuild_through: int = 0  # the log's last sequence when that rebuild began
    schema: int | None = None  # the oid of the schema this process started on (a new one: the database was lost)
    _watch: asyncio.Task[None] | None = None
    _rebuilder: rebuild.Rebuilder = field(init=False)
    # Consumers run by Certbus's own batch loop (shared.runtime.batch) rather than FastStream.
    _batch_specs: list[_BatchSpec] = field(default_factory=list)
    batch_consumers: list[BatchConsumer[Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rebuilder = rebuild.Rebuilder(self.settings.database_url, self.name)

    @property
    def pool(self) -> asyncpg.Pool:
        """The service's Postgres pool (available once the service has started)."""
        if self._pool is None:
            raise RuntimeError(f"{self.name}: the database pool is not open yet")
        return self._pool

    @property
    def relay(self) -> OutboxRelay:
        """The service's outbox relay."""
        if self._relay is None:
            raise RuntimeError(f"{self.name}: the outbox relay is not running yet")
        return self._relay

    @property
    def instance(self) -> str:
        """Which replica of the service this process is (`CERTBUS_INSTANCE`, else `<hostname>:<pid>`)."""
        return self.settings.instance_name

    @property
    def js(self) -> JetStreamContext:
        """JetStream on the broker's own connection (its API reached under the deployment's prefix)."""
        return self.broker.connection.jetstream(prefix=self.settings.js_prefix)

    @property
    def root(self) -> str:
        """The root of event subjects."""
        return self.settings.subject_root

    def decided_at(self, delivery: Delivery) -> datetime:
        """The time a decision on the event at `delivery` is made as: now, or, for an event read
        again while the database is rebuilt from the log, the time the log took it, so that the
        decision made again is the one made then (a certificate that expired since is not refused
        the revocation it got)."""
        if self.rebuilding and delivery.seq <= self.rebuild_through:
            return delivery.accepted_at
        return self.clock.now()

    def query_subject(self, query: str, service: str | None = None) -> str:
        """The request-reply subject of a query (not captured by the stream)."""
        return f"{self.settings.query_root}.{service or self.name}.{query}"

    def consumer(
        self,
        purpose: str,
        consumes: Iterable[type[Event]] | None,
        *,
        tagged: bool = False,
        router: NatsRouter | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate a handler as a durable pull consumer of the event types `consumes` on the log (a
        service's table of projections, or the types themselves; None: every message, undecoded:
        audit's archive).

        The subject filters and the type of the handler's first parameter (what FastStream parses the
        message into, and documents) are derived from `consumes`: the handler declares it as `Event`.
        A consumer of operator commands also reads the operators' registry that authorises them.
        `tagged` parses by `event_type` (a discriminated union: a malformed event is reported against
        its own type only) rather than trying each type in turn.

        Every message is bound to its subject before it is parsed (`shared.contract.binding.bind`): an event
        on a subject other than its own, or over the bounds, never reaches the handler but is parked
        with the reason. FastStream runs the handlers of one pull (up to `fetch_batch` messages)
        concurrently; handlers hand their events to a `GroupCommit` so that they share one transaction.
        Each message of the pull is kept in progress (`in_flight`) until its handler returns, so a
        group that takes longer than ack_wait is not redelivered while this process lives.
        """
        durable = self.durable(purpose)
        if consumes is None:
            self.consumers[durable] = [f"{self.root}.>"]
            return self._pull(self.settings.stream, self.root, durable, self.consumers[durable], _undecoded, router)
        accept, root = _with_registry(consumes), self.root
        filters = [cls.filter(root) for cls in accept]
        self.consumers[durable] = filters

        async def bound(msg: StreamMessage[Any]) -> Any:
            return bind(msg.raw_message.subject, root, msg.body, accept)

        subscribe = self._pull(self.settings.stream, self.root, durable, filters, bound, router)
        message = _message_type(accept, tagged=tagged)

        def decorate(handler: Callable[..., Any]) -> Any:
            first = next(iter(inspect.signature(handler).parameters))
            handler.__annotations__[first] = message
            return subscribe(handler)

        return decorate

    def batch_consumer(
        self,
        purpose: str,
        consumes: Iterable[type[Event]] | None,
        process: Process[Any],
        *,
        after: After[Any] | None = None,
        tagged: bool = False,
        description: str | None = None,
    ) -> None:
        """A durable pull consumer of the event types `consumes` (None: every message, undecoded as
        (subject, body): audit's archive), run by Certbus's own batch loop: what a pull delivered is
        bound to its subjects and parsed, and applied by `process` in one transaction (see
        `shared.runtime.batch`); `after` runs once a batch is committed and acked."""
        # Declared as FastStream handlers too: on the running broker without batch consumers, else
        # only in the AsyncAPI document (`documented`, never attached to a running broker).
        batched = self.settings.batch_consumers
        router = self.documented if batched else None
        self._grouped(purpose, consumes, process, after, tagged=tagged, router=router, description=description)
        if not batched:
            return
        durable = self.durable(purpose)
        if consumes is None:
            self.consumers[durable] = [f"{self.root}.>"]
            self._batch_specs.append(_BatchSpec(self.settings.stream, durable, _raw, process, after))
            return
        accept, root = _with_registry(consumes), self.root
        self.consumers[durable] = [cls.filter(root) for cls in accept]

        def prepare(msg: Msg) -> Event:
            # Validated as the one class its body names (which `bind` checked against its subject and
            # `accept`), never tried against each type in turn: a union of eight event types cost
            # 62 us an event in pydantic's smart mode, its own class 4 us.
            data = bind(msg.subject, root, msg.data, accept)
            return EVENT_CLASSES[data["event_type"]].model_validate(data)

        self._batch_specs.append(_BatchSpec(self.settings.stream, durable, prepare, process, after))

    def _grouped(
        self,
        purpose: str,
        consumes: Iterable[type[Event]] | None,
        process: Process[Any],
        after: After[Any] | None,
        *,
        tagged: bool,
        router: NatsRouter | None,
        description: str | None,
    ) -> None:
        """The same consumer as FastStream per-message handlers meeting in a `GroupCommit` (the
        release before the batch loop; `CERTBUS_BATCH_CONSUMERS=false`, to compare)."""
        group: GroupCommit[Any] = GroupCommit(process, self.publish_pending, held=self.held(purpose))

        async def settle(item: Any, msg: NatsMessage) -> None:
            await group.submit(item, Delivery.of(msg))
            if after is not None:
                await after([item])

        if consumes is None:

            async def on_raw(msg: NatsMessage) -> None:
                await settle((msg.raw_message.subject, msg.raw_message.data), msg)

            on_raw.__doc__ = description
            self.consumer(purpose, None, router=router)(on_raw)
            return

        async def on_event(event: Event, msg: NatsMessage) -> None:
            await settle(event, msg)

        on_event.__doc__ = description
        self.consumer(purpose, consumes, tagged=tagged, router=router)(on_event)

    def ingress_batch_consumer(self, purpose: str, kinds: Sequence[Kind], process: Process[Any]) -> None:
        """The ingress stream's durable of requests of `kinds`, run by the batch loop (undecoded)."""
        batched = self.settings.batch_consumers
        group: GroupCommit[Any] = GroupCommit(process, self.publish_pending)

        @self.ingress_consumer(purpose, kinds, router=self.documented if batched else None)
        async def on_request(msg: NatsMessage) -> None:
            await group.submit((msg.raw_message.subject, msg.raw_message.data), Delivery.of(msg))

        if not batched:
            return
        durable = self.durable(purpose)
        self.ingress_consumers[durable] = [ingress_filter(self.settings.ingress_root, kind) for kind in kinds]
        self._batch_specs.append(_BatchSpec(self.settings.ingress_stream, durable, _raw, process, None))

    async def _start_batch_consumers(self) -> None:
        """Start the batch loops (after the start-up hooks, where FastStream starts its subscribers)."""
        settings = self.settings
        for spec in self._batch_specs:
            filters = (self.ingress_consumers if spec.stream == settings.ingress_stream else self.consumers)[
                spec.durable
            ]
            await ensure_durable(
                self.js,
                spec.stream,
                spec.durable,
                filters,
                ack_wait_s=settings.ack_wait_s,
                max_deliver=settings.max_deliver,
            )
            feed = PullFeed(
                self.broker.connection,
                api_prefix=settings.js_prefix,
                stream=spec.stream,
                durable=spec.durable,
                inbox_prefix=settings.inbox_prefix,
                in_flight=self.in_flight,
                batch=settings.batch_pull,
            )
            applier = BatchApplier(
                self.name,
                spec.durable,
                prepare=spec.prepare,
                process=spec.process,
                publish=self.publish_pending,
                pool=lambda: self.pool,
                max_deliver=settings.max_deliver,
                stopping=lambda: self.stopping,
                after=spec.after,
            )
            consumer = BatchConsumer(feed, applier, self.in_flight, max_batch=settings.batch_max)
            await consumer.start()
            self.batch_consumers.append(consumer)

    async def _stop_batch_consumers(self) -> None:
        await asyncio.gather(*(consumer.stop() for consumer in self.batch_consumers))
        self.batch_consumers = []

    def ingress_consumer(
        self, purpose: str, kinds: Sequence[Kind], *, router: NatsRouter | None = None
    ) -> Callable[[Any], Any]:
        """Decorate a handler as the durable pull consumer of the ingress stream's requests of
        `kinds` (every identity's): the handler gets each message undecoded (see `shared.runtime.admission`)."""
        durable = self.durable(purpose)
        filters = [ingress_filter(self.settings.ingress_root, kind) for kind in kinds]
        self.ingress_consumers[durable] = filters
        return self._pull(
            self.settings.ingress_stream, self.settings.ingress_root, durable, filters, _undecoded, router
        )

    def _pull(
        self,
        stream: str,
        root: str,
        durable: str,
        filters: list[str],
        decoder: Callable[[Any], Any],
        router: NatsRouter | None = None,
    ) -> Callable[[Any], Any]:
        """A FastStream pull subscriber on a durable of `stream`, with this service's settings."""
        return (router or self.events).subscriber(
            f"{root}.>",
            stream=JStream(stream, declare=False),
            durable=durable,
            pull_sub=PullSub(batch_size=self.settings.fetch_batch, timeout=5.0),
            inbox_prefix=f"{self.settings.inbox_prefix}.".encode(),
            ack_policy=AckPolicy.NACK_ON_ERROR,
            config=ConsumerConfig(
                filter_subjects=filters,
                max_deliver=self.settings.max_deliver,
                ack_wait=self.settings.ack_wait_s,
            ),
            decoder=decoder,
            title=durable,
        )

    def group_commit(self, purpose: str, apply: Apply) -> GroupCommit[Event]:
        """Group commit for a consumer whose events are applied one by one with `apply`."""
        return GroupCommit(
            applying(lambda: self.pool, self.durable(purpose), apply), self.publish_pending, held=self.held(purpose)
        )

    def held(self, purpose: str) -> Callable[[], set[int]]:
        """What a `GroupCommit` of the consumer `purpose` waits for to keep log order: the stream
        sequences of its messages this process is handling."""
        durable = self.durable(purpose)
        return lambda: self.in_flight.sequences(durable)

    def publishes(self, *event_types: type[Event]) -> None:
        """Declare the events this service publishes (through its outbox), for the AsyncAPI document."""
        for event_type in event_types:
            self.broker.publisher(
                f"{self.root}.{event_type.aggregate}.{{{event_type.aggregate}_id}}.{event_type.verb}",
                schema=event_type,
                title=event_type.__name__,
                description=(event_type.__doc__ or "").strip(),
            )

    def assemble(self, *, documenting: bool = False) -> None:
        """Attach the event and query routers to the broker (once; after every handler is declared);
        `documenting` adds the batch consumers as FastStream handlers, for a broker never started."""
        if not self._assembled:
            self.broker.include_router(self.events)
            self.broker.include_router(self.queries)
            if documenting:
                self.broker.include_router(self.documented)
            self._assembled = True

    def durable(self, purpose: str) -> str:
        """The name of one of this service's durable consumers (and of its tracking rows)."""
        return f"{self.name}-{purpose}"

    def query(self, query: str) -> Callable[[Any], Any]:
        """Decorate a handler that answers a request-reply query (one replica answers)."""
        return self.queries.subscriber(self.query_subject(query), queue=self.name)

    async def publish_pending(self, entries: Sequence[OutboxEntry] | None = None) -> None:
        """Publish what a transaction just committed to the outbox (all pending rows if None).

        A failure is logged, not raised: the relay publishes the rows later with the same ids.
        """
        try:
            if entries is None:
                await self.relay.flush()
            elif entries:
                await self.relay.publish(entries)
        except Exception as exc:  # noqa: BLE001 - the relay publishes it later
            log.warning("immediate publish failed; relay will retry", extra={"error": repr(exc)})
            self.relay.notify()


def create_service(
    name: str,
    settings: ServiceSettings,
    migrations: Path,
    *,
    clock: Clock | None = None,
    on_start: Hook | None = None,
    on_stop: Hook | None = None,
    routes: Callable[[Runtime], list[web.RouteDef]] | None = None,
    readiness: ReadinessCheck | None = None,
    lost_database: Literal["rebuild", "ignore"] = "rebuild",
    adopt: Adopt | None = None,
    reuse_port: bool = False,
) -> tuple[FastStream, Runtime]:
    """Wire one service: broker, app, lifespan hooks, health query and HTTP endpoint. `readiness`
    says what the service still lacks to do its job (reported by health, /readyz). A start on a
    database that lost what the service's durables had consumed rebuilds it
    from the log (shared.runtime.rebuild, with the service's `adopt` step); `lost_database` "ignore"
    is for a service that rebuilds itself otherwise (audit). `reuse_port` binds the HTTP port with
    SO_REUSEPORT, for processes of the same service that share it (validation's OCSP workers)."""
    logs.configure(settings.log_level, settings.log_format)
    broker = NatsBroker(
        settings.nats_servers,
        name=f"certbus-{name}",
        logger=None,
        max_reconnect_attempts=-1,
        graceful_timeout=15.0,
        drain_timeout=settings.drain_timeout_s,
        js_options={"prefix": settings.js_prefix},
        inbox_prefix=settings.inbox_prefix,
        security=_security(settings),
    )
    in_flight = InFlight(settings.ack_wait_s)
    middleware = event_middleware(
        name, lambda: runtime.pool, settings.max_deliver, lambda: runtime.stopping, in_flight=in_flight
    )
    runtime: Runtime = Runtime(
        name=name,
        settings=settings,
        broker=broker,
        events=NatsRouter(middlewares=[middleware]),
        queries=NatsRouter(middlewares=[_query_errors()]),
        in_flight=in_flight,
        readiness=readiness,
    )
    if clock is not None:
        runtime.clock = clock
    app = FastStream(broker, logger=logging.getLogger(f"certbus.{name}"))
    http_runner: list[web.AppRunner] = []

    @runtime.query("health")
    async def health() -> dict[str, Any]:
        return await _health(runtime)

    @app.on_startup
    async def start() -> None:
        await db.ensure_database(settings.database_url)
        runtime._pool = await db.create_pool(settings.database_url, name, settings.db_pool_min, settings.db_pool_max)
        await broker.connect()
        used = [settings.stream, f"OBJ_{settings.crl_bucket}"]
        await require_log(runtime.js, used + [settings.ingress_stream] * bool(runtime.ingress_consumers))
        # One replica at a time creates or rebuilds the schema: the others wait here, then find it
        # made (a session lock on a connection of its own, released if this process dies).
        async with runtime.pool.acquire() as guard:
            await guard.execute("SELECT pg_advisory_lock(hashtext($1))", f"certbus-start:{name}")
            try:
                applied = await db.migrate(runtime.pool, name, [migrations])
                if applied:
                    log.info("applied migrations", extra={"migrations": applied})
                # A schema made now while a durable had acknowledged events: the database was lost.
                fresh = FRESH_SCHEMA in applied and lost_database == "rebuild"
                if fresh and (floors := await acknowledged(runtime.js, settings.stream, runtime.consumers)):
                    await rebuild.begin(
                        runtime.pool,
                        runtime.js,
                        service=name,
                        stream=settings.stream,
                        root=runtime.root,
                        filters=published_subjects(name, runtime.root),
                        durables=floors,
                        adopt=adopt,
                    )
                runtime.schema = await guard.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", name)
            finally:
                await guard.execute("SELECT pg_advisory_unlock(hashtext($1))", f"certbus-start:{name}")
            if await guard.fetchval("SELECT current_setting('autovacuum') = 'off'"):
                log.warning(
                    "PostgreSQL runs without autovacuum: statements keep the plans chosen while the tables "
                    "were small until the tables are analyzed, and slow down as they grow; turn autovacuum "
                    "on, or ANALYZE this schema's tables regularly",
                    extra={"schema": name},
                )
        under_way = await rebuild.unfinished(runtime.pool)
        runtime.rebuilding = under_way is not None
        runtime.rebuild_through = under_way["through_seq"] if under_way is not None else 0
        durables = [(settings.stream, runtime.consumers), (settings.ingress_stream, runtime.ingress_consumers)]
        for stream, consumers in durables:
            for durable, filters in consumers.items():
                # A durable made by an earlier release (or other settings) keeps its config unless told otherwise.
                await ensure_consumer(
                    runtime.js,
                    stream,
                    durable,
                    filters,
                    ack_wait_s=settings.ack_wait_s,
                    max_deliver=settings.max_deliver,
                )
        runtime._relay = OutboxRelay(runtime.pool, runtime.js, settings.stream, name)
        runtime.relay.loop.start()
        runtime._heartbeat = Heartbeat(lambda: runtime.pool, runtime.instance, lambda: _own_health(runtime))
        runtime._heartbeat.start()
        if runtime.rebuilding:  # one replica at a time applies the log again (rebuild.Rebuilder)
            await runtime._rebuilder.wait_turn(runtime.pool)
            runtime.rebuilding = await rebuild.unfinished(runtime.pool) is not None
        if on_start is not None:
            await on_start(runtime)
        runtime.assemble()
        runtime.in_flight.start()  # before the subscribers: the broker starts them after this hook
        await runtime._start_batch_consumers()

    @app.after_startup
    async def serve_http() -> None:
        async def watch() -> None:
            try:
                await rebuild.watch(runtime.pool, runtime.js, settings.stream)
                runtime.rebuilding = False
            finally:
                await runtime._rebuilder.release()

        runtime._watch = asyncio.create_task(watch(), name=f"{name}-rebuild-watch")
        web_app = web.Application()
        web_app.add_routes(_common_routes(runtime))
        if routes is not None:
            web_app.add_routes(routes(runtime))
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port, reuse_port=reuse_port or None)
        await site.start()
        http_runner.append(runner)
        log.info(
            "service ready",
            extra={"service": name, "http": f"{settings.http_host}:{settings.http_port}"},
        )

    @app.on_shutdown
    async def stop() -> None:
        runtime.stopping = True
        if runtime._heartbeat is not None:
            await runtime._heartbeat.stop()  # its row goes first: the other replicas stop listing it
        await runtime._stop_batch_consumers()  # the batch under way is finished, the rest handed back
        for runner in http_runner:
            await runner.cleanup()
        if on_stop is not None:
            await on_stop(runtime)
        if runtime._relay is not None:
            await runtime.relay.loop.stop()
        if runtime._watch is not None:
            runtime._watch.cancel()

    @app.after_shutdown
    async def close_pool() -> None:
        # Only now: the broker has stopped, and its handlers (which the heartbeat kept in progress
        # through the graceful stop) are done or cancelled.
        await runtime.in_flight.stop()
        if runtime._pool is not None:
            await runtime.pool.close()

    return app, runtime


def published_subjects(service: str, root: str) -> list[str]:
    """The log subjects of the event types `service` publishes (no other identity may publish there)."""
    return sorted(cls.filter(root) for cls in EVENT_TYPES if cls.publisher == service)


def _with_registry(consumes: Iterable[type[Event]]) -> tuple[type[Event], ...]:
    """The event types a consumer reads: `consumes`, after the operators' registry if any of them is
    an operator command (it is authorised by the registry as the same consumer read it)."""
    types = tuple(consumes)
    if any(issubclass(cls, OperatorCommand) for cls in types):
        types = (*REGISTRY, *(cls for cls in types if cls not in REGISTRY))
    return types


def _message_type(types: tuple[type[Event], ...], *, tagged: bool) -> Any:
    """The type a consumer's messages are parsed into: one event type, or their union."""
    union = functools.reduce(operator.or_, types)
    return Annotated[union, Field(discriminator="event_type")] if tagged and len(types) > 1 else union


async def _undecoded(msg: StreamMessage[Any]) -> bytes:
    """A message's body as it came: a raw consumer's handler reads it itself (FastStream would parse
    it as JSON first, and a hostile body nested deep enough would fail there, never handled)."""
    body: bytes = msg.body
    return body


def _raw(msg: Msg) -> tuple[str, bytes]:
    """A raw batch consumer's item: the message's subject and body as they came."""
    return msg.subject, msg.data


@dataclass(frozen=True)
class _BatchSpec:
    """A batch consumer declared by a service, started with it."""

    stream: str
    durable: str
    prepare: Callable[[Msg], Any]
    process: Process[Any]
    after: After[Any] | None


def _security(settings: ServiceSettings) -> NatsNKey | NatsUserPassword | None:
    """How the service proves who it is to NATS (its NKey seed, or a user and password)."""
    if settings.nats_seed_file is not None:
        return NatsNKey.from_file(settings.nats_seed_file)
    if settings.nats_user and settings.nats_password:
        return NatsUserPassword(settings.nats_user, settings.nats_password.get_secret_value())
    return None


LOG_WARN_AT = 0.8  # how full the log may be before health warns (at 100% new events are refused)


async def _log_usage(runtime: Runtime) -> float | None:
    """How full the log is (the larger of its byte and message limits' shares), or None if unknown."""
    try:
        info = await runtime.js.stream_info(runtime.settings.stream)
    except Exception:  # noqa: BLE001 - reported as unknown, not raised
        return None
    limits = [(info.state.bytes, info.config.max_bytes or 0), (info.state.messages, info.config.max_msgs or 0)]
    used = max(value / limit if limit > 0 else 0.0 for value, limit in limits)
    LOG_USED.set(used)
    return used


async def _health(runtime: Runtime) -> dict[str, Any]:
    """The answer to the health query: the answering replica's own report, and under `replicas`
    every replica's latest (this one's as of now; `silent` if not seen for SILENT_AFTER_S). Without
    the database only this replica is listed; past MAX_LISTED, `replicas_left_off` says how many
    were not."""
    own = await _own_health(runtime)
    started = runtime._heartbeat.started if runtime._heartbeat is not None else None
    listed = [{**own, **({"started": started.isoformat()} if started else {}), "seen_s": 0.0, "silent": False}]
    left_off = 0
    if own["database"]:
        try:
            others, left_off = await replicas.others(runtime.pool, runtime.instance)
            listed.extend(others)
        except Exception as exc:  # noqa: BLE001 - health answers with what it knows
            log.warning("could not list the replicas", extra={"error": repr(exc)})
    listed.sort(key=lambda r: str(r.get("instance")))
    return {**own, "replicas": listed, **({"replicas_left_off": left_off} if left_off else {})}


async def _own_health(runtime: Runtime) -> dict[str, Any]:
    """This replica's liveness (`status`: ok while the database answers and the log takes events)
    and readiness (`ready`, with one line per thing `missing` for the service to do its job)."""
    db_ok = True
    try:
        async with runtime.pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
    except Exception:  # noqa: BLE001 - reported, not raised
        db_ok = False
    used = await _log_usage(runtime)
    warnings = []
    if used is not None and used >= 1.0:
        warnings.append("the log is full: new events are refused (raise its limits: CERTBUS_STREAM_MAX_BYTES)")
    elif used is not None and used >= LOG_WARN_AT:
        warnings.append(f"the log is {used:.0%} full: raise its limits before it refuses new events")
    connected = runtime.broker.connection.is_connected
    readiness = await _readiness(runtime) if db_ok else Readiness()
    lost = db_ok and await _schema_replaced(runtime)
    rebuilding = await rebuild.unfinished(runtime.pool) if db_ok and not lost else None
    missing = [
        *(["its database does not answer"] if not db_ok else []),
        *(["its database was dropped or replaced under it: restart it to rebuild it from the log"] if lost else []),
        *(
            [f"rebuilding its database from the log (through sequence {rebuilding['through_seq']})"]
            if rebuilding is not None
            else []
        ),
        *(["its NATS connection is down"] if not connected else []),
        *(f"its consumer {c.applier.durable} has stopped" for c in runtime.batch_consumers if not c.running),
        *(["the log is full: new events are refused"] if used is not None and used >= 1.0 else []),
        *readiness.missing,
    ]
    return {
        "service": runtime.name,
        "instance": runtime.instance,
        "status": "ok" if db_ok and not lost and (used is None or used < 1.0) else "degraded",
        "ready": not missing,
        "missing": missing,
        **readiness.facts,
        "database": db_ok,
        "log_used": None if used is None else round(used, 4),
        "warnings": [*warnings, *readiness.warnings],
        "nats": connected,
        "version": VERSION,
        "pid": os.getpid(),
        "uptime_s": round(time.monotonic() - runtime.started_at, 1),
    }


_STOP_ON_LOST_SCHEMA = False  # set by run(): a replica in a process of its own stops itself


async def _schema_replaced(runtime: Runtime) -> bool:
    """Whether the service's schema is gone or another than the one this process started on (the
    database was lost under it). In a process of its own the replica then stops (SIGTERM to itself),
    so that its supervisor starts it again and the start rebuilds the database from the log; its
    handlers meanwhile fail and retry in place, deciding nothing on the new tables."""
    try:
        async with runtime.pool.acquire(timeout=2) as conn:
            oid = await conn.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", runtime.name)
    except Exception:  # noqa: BLE001 - reported by the database check
        return False
    if runtime.schema is None or oid == runtime.schema:
        return False
    if _STOP_ON_LOST_SCHEMA and not runtime.stopping:
        log.error("the service's database was dropped or replaced under it; stopping so that a restart rebuilds it")
        os.kill(os.getpid(), signal.SIGTERM)
    return True


async def _readiness(runtime: Runtime) -> Readiness:
    """The service's own readiness check, if it has one; a check that fails is reported as missing."""
    if runtime.readiness is None:
        return Readiness()
    try:
        async with asyncio.timeout(3):
            return await runtime.readiness(runtime)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        log.warning("readiness check failed", extra={"error": repr(exc)})
        return Readiness(missing=[f"its readiness could not be checked ({type(exc).__name__})"])


def _query_errors() -> ExceptionMiddleware:
    """Answer a query that failed with a Failure saying why, instead of leaving the caller to time out."""
    middleware = ExceptionMiddleware()

    @middleware.add_handler(ValidationError, publish=True)
    async def bad_query(exc: ValidationError) -> dict[str, str]:
        return Failure(error=f"malformed query: {exc.error_count()} error(s): {exc.errors()[0]['msg']}").model_dump()

    @middleware.add_handler(Exception, publish=True)
    async def failed(exc: Exception) -> dict[str, str]:
        log.error("query failed", exc_info=exc)
        return Failure(error=f"the service could not answer: {type(exc).__name__}").model_dump()

    return middleware


def _common_routes(runtime: Runtime) -> list[web.RouteDef]:
    # A probe asks one replica about itself (a load balancer or Kubernetes steers by it).
    async def healthz(_: web.Request) -> web.Response:
        report = await _own_health(runtime)
        return web.json_response(report, status=200 if report["status"] == "ok" else 503)

    async def readyz(_: web.Request) -> web.Response:
        report = await _own_health(runtime)
        return web.json_response(report, status=200 if report["ready"] else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


def run(app: FastStream) -> None:
    """Run a service until SIGINT or SIGTERM (or until its database is lost under it)."""
    global _STOP_ON_LOST_SCHEMA  # one service per process
    _STOP_ON_LOST_SCHEMA = True
    asyncio.run(app.run())
