"""The NATS configuration the harness runs, served by a real nats-server: who may publish, hear and
ask what. It is `shared.trust.accounts.render` over NKey identities, the same configuration as
deploy/nats/accounts.conf (`certbus-admin render`) and `make run`.

A refused publish is seen in one of two ways. A user with publish permissions (a requester, the
operator, the admin) gets a "permissions violation" error from the server. A service's user has no
permissions: its account reaches the log only through what the log's account exports to it, so a
subject it was not given reaches nobody, and JetStream answers "no responders". Either way the log
is then read as the admin: what was refused is not on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
import pytest

from harness import Harness, eventually
from shared.contract.events import (
    EVENT_TYPES,
    CaCompromised,
    CaCreated,
    CaKeyDestroyed,
    CaRetired,
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    CertificateSuperseded,
    EnrollmentApproved,
    EnrollmentRequested,
    Event,
    IssuanceRefused,
    KeyDestroyed,
    ProfileApplied,
    RevocationOrdered,
    RevocationRequested,
)
from shared.contract.ingress import INTAKES
from shared.trust.accounts import SERVICES
from shared.trust.identities import new_seed

pytestmark = pytest.mark.e2e
# One identity of each role: the five services, the operator, a requester and the admin.
IDENTITIES = ("enrollment", "signing", "validation", "revocation", "audit", "operator", "tests", "admin")
# Users whose publishes the server checks against permissions (the others are services).
PERMISSIONED = ("operator", "requester", "admin")
NO_STREAM = (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError)


@pytest.fixture(scope="module")
async def bus(pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    """A harness's nats-server, identities and streams, without services (these tests only talk to NATS)."""
    h = Harness(pg_admin_url, tmp_path_factory.mktemp("bus"))
    try:
        await h.open()
        yield h
    finally:
        await h.close()


@dataclass
class Session:
    """A connection as one identity, with the errors the server sent it."""

    h: Harness
    name: str
    nc: nats.NATS
    errors: list[str] = field(default_factory=list)

    async def violation(self, action: str, subject: str) -> bool:
        """Whether the server reports a permissions violation for `action` ("publish" or
        "subscription") on `subject` (waited for: the error arrives after the flush)."""
        wanted = f'permissions violation for {action} to "{subject}"'.lower()
        await self.nc.flush()
        try:
            await eventually(lambda: asyncio.sleep(0, any(wanted in e for e in self.errors)), timeout=2, interval=0.01)
        except AssertionError:
            return False
        return True

    async def publish_refused(self, subject: str) -> bool:
        """Publish `{}` on `subject` and say whether the server refused it (see the module's docstring)."""
        if self.h.role_of(self.name) in PERMISSIONED:
            await self.nc.publish(subject, b"{}")
            return await self.violation("publish", subject)
        try:
            await self.h.js(self.nc, self.name).publish(subject, b"{}", timeout=2.0)
        except NO_STREAM:
            return True
        return False

    async def publish_stored(self, subject: str, stream: str) -> bool:
        """Publish `{}` on `subject` with JetStream; whether `stream` acknowledged it."""
        try:
            ack = await self.h.js(self.nc, self.name).publish(subject, b"{}", timeout=2.0)
        except (nats.errors.TimeoutError, *NO_STREAM):
            return False
        return ack.stream == stream


@asynccontextmanager
async def session(h: Harness, name: str) -> AsyncIterator[Session]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    nc = await h.connect(name, error_cb=on_error, allow_reconnect=False)
    try:
        yield Session(h, name, nc, errors)
    finally:
        await nc.close()


def token() -> str:
    return uuid.uuid4().hex


def subject_of(h: Harness, cls: type[Event], aggregate_id: str) -> str:
    return f"{h.root}.{cls.aggregate}.{aggregate_id}.{cls.verb}"


async def on_log(h: Harness, marker: str) -> set[str]:
    """The subjects on the log that contain `marker` (read as the admin)."""
    return {m.subject for m in await h.stream_messages(f"{h.root}.>") if marker in m.subject}


async def on_ingress(h: Harness, subjects: Iterable[str]) -> set[str]:
    """Which of `subjects` hold a message on the ingress stream (read as the admin)."""
    nc = await h.connect("admin")
    found = set()
    try:
        js = h.js(nc)
        for subject in subjects:
            try:
                await js.get_last_msg(h.common["ingress_stream"], subject)
            except nats.js.errors.NotFoundError:
                continue
            found.add(subject)
    finally:
        await nc.close()
    return found


# --- publishing events ---------------------------------------------------------------------


@pytest.mark.parametrize("name", IDENTITIES)
async def test_an_identity_may_publish_exactly_the_events_it_is_the_publisher_of(bus: Harness, name: str) -> None:
    """Every event type on its own subject: its one publisher's is stored on the log; anyone else's
    is refused by the server and never reaches the log."""
    h, marker = bus, token()
    stored, wrongly_stored, not_refused = set(), [], []
    async with session(h, name) as s:
        for i, cls in enumerate(EVENT_TYPES):
            subject = subject_of(h, cls, f"{marker}-{i}")
            if cls.publisher == h.role_of(name):
                if not await s.publish_stored(subject, h.common["stream"]):
                    wrongly_stored.append(f"{cls.__name__} was not stored")
                stored.add(subject)
            elif not await s.publish_refused(subject):
                not_refused.append(cls.__name__)
    assert not wrongly_stored and not not_refused, (wrongly_stored, not_refused)
    assert await on_log(h, marker) == stored
    if name in ("tests", "admin", "validation"):
        assert stored == set()  # a requester, the admin and validation publish no event at all


@pytest.mark.parametrize(
    ("name", "cls", "allowed"),
    [
        # Decisions and facts come from the one service that makes them ...
        ("signing", CertificateIssued, True),
        ("signing", IssuanceRefused, True),
        ("signing", CaCreated, True),
        ("signing", CaKeyDestroyed, True),
        ("enrollment", EnrollmentApproved, True),
        ("enrollment", CertificateRenewalDue, True),
        ("enrollment", CertificateSuperseded, True),
        ("revocation", CertificateRevoked, True),
        # ... requests reach the log only as their admitting service puts them there ...
        ("enrollment", EnrollmentRequested, True),
        ("revocation", RevocationRequested, True),
        ("revocation", KeyDestroyed, True),
        # ... and operator commands only from the operator (who must also sign them).
        ("operator", RevocationOrdered, True),
        ("operator", CaCompromised, True),
        ("operator", CaRetired, True),
        ("operator", ProfileApplied, True),
        # Nobody else.
        ("tests", CertificateIssued, False),
        ("tests", CertificateRevoked, False),
        ("tests", EnrollmentRequested, False),
        ("tests", RevocationRequested, False),
        ("tests", KeyDestroyed, False),
        ("tests", CertificateRenewalDue, False),
        ("tests", CaCompromised, False),
        ("enrollment", CertificateIssued, False),
        ("validation", CertificateRevoked, False),
        ("audit", EnrollmentApproved, False),
        ("revocation", CaCreated, False),
        ("enrollment", RevocationOrdered, False),
        ("revocation", RevocationOrdered, False),
        ("signing", CaCompromised, False),
        ("signing", CaRetired, False),
        ("signing", CertificateRevoked, False),
        ("revocation", CertificateRenewalDue, False),
        ("operator", CertificateIssued, False),
        ("operator", EnrollmentApproved, False),
        ("operator", CaKeyDestroyed, False),
        ("admin", CaCompromised, False),
        ("admin", CertificateIssued, False),
    ],
)
async def test_who_may_publish_which_event(bus: Harness, name: str, cls: type[Event], allowed: bool) -> None:
    """Spot checks, written out by hand, of the publishers the matrix above derives from the code."""
    h, marker = bus, token()
    subject = subject_of(h, cls, marker)
    async with session(h, name) as s:
        if allowed:
            assert await s.publish_stored(subject, h.common["stream"])
        else:
            assert await s.publish_refused(subject)
    assert await on_log(h, marker) == ({subject} if allowed else set())


# --- requests on the ingress stream ----------------------------------------------------------


async def test_a_requester_may_put_requests_only_on_its_own_ingress_subjects(bus: Harness) -> None:
    h = bus
    root = h.common["ingress_root"]
    own = [f"{root}.alice.{kind}" for kind in INTAKES]
    bobs = [f"{root}.bob.{kind}" for kind in INTAKES]
    async with session(h, "alice") as s:
        for subject in own:
            assert await s.publish_stored(subject, h.common["ingress_stream"]), subject
        for subject in [*bobs, f"{root}.validation.enroll"]:
            assert await s.publish_refused(subject), subject
    assert await on_ingress(h, own + bobs) == set(own)


@pytest.mark.parametrize("name", [n for n in IDENTITIES if n != "tests"])
async def test_no_service_operator_or_admin_puts_a_request_in_anothers_name(bus: Harness, name: str) -> None:
    """Only validation sends requests (for its OCSP responder's certificate), and only as itself."""
    h = bus
    root = h.common["ingress_root"]
    own = [f"{root}.validation.enroll"] if name == "validation" else []
    others = [f"{root}.tests.enroll", f"{root}.tests.revoke", f"{root}.alice.renew"]
    if name != "validation":
        others.append(f"{root}.{name}.renew")  # not even in its own name
    async with session(h, name) as s:
        for subject in own:
            assert await s.publish_stored(subject, h.common["ingress_stream"]), subject
        for subject in others:
            assert await s.publish_refused(subject), subject


# --- replies set by hand -------------------------------------------------------------------------


async def listen(s: Session, subject: str) -> asyncio.Future[bytes]:
    """The next message `s` hears on `subject`."""
    heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        if not heard.done():
            heard.set_result(msg.data)

    await s.nc.subscribe(subject, cb=on_msg)
    await s.nc.flush()
    return heard


async def ask(s: Session, subject: str, timeout: float = 5.0) -> bytes:
    """Request `subject` as `s` until a responder answers. A subscription just flushed in another
    account can take a moment to be seen through the import that carries the query there (the
    server answered "no responders" once in CI); within `timeout` seconds it must be."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return (await s.nc.request(subject, b"{}", timeout=timeout)).data
        except nats.errors.NoRespondersError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def barrier(h: Harness) -> None:
    """Store one more message on the log: once it is acknowledged, anything routed to the log
    before it is stored too (the log takes its messages in order)."""
    await h.publish_raw(subject_of(h, CaCreated, f"barrier-{token()}"), b"{}")


async def test_a_reply_subject_on_a_query_never_lands_in_the_log(bus: Harness) -> None:
    """A requester asks a service, naming as the reply subject an event subject: the answer goes
    back to the requester's own account (where it hears it), never into the log."""
    h, marker = bus, token()
    query = f"{h.common['query_root']}.validation.health"
    forged = subject_of(h, CertificateIssued, marker)
    async with session(h, "validation") as service, session(h, "tests") as asker:
        answered = asyncio.Event()

        async def answer(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b'{"event_type": "CertificateIssued"}')
            answered.set()

        await service.nc.subscribe(query, cb=answer)
        await service.nc.flush()
        assert await ask(asker, query)  # the query works at all
        heard = await listen(asker, forged)
        await asker.nc.publish(query, b"{}", reply=forged)
        assert await asyncio.wait_for(heard, timeout=5) == b'{"event_type": "CertificateIssued"}'
        assert answered.is_set()
        assert asker.errors == []
    await barrier(h)
    assert await on_log(h, marker) == set()


@pytest.mark.parametrize(
    ("name", "forged_cls"),
    [("signing", CertificateIssued), ("enrollment", CertificateSuperseded), ("revocation", CertificateRevoked)],
)
async def test_a_reply_subject_on_a_jetstream_api_call_never_lands_in_the_log(
    bus: Harness, name: str, forged_cls: type[Event]
) -> None:
    """A service that may publish an event subject names it as the reply to a JetStream API call
    (stream info): the answer comes back to the service's own account, not into the log."""
    h, marker = bus, token()
    forged = subject_of(h, forged_cls, marker)
    async with session(h, name) as s:
        heard = await listen(s, forged)
        await s.nc.publish(f"{h.common_settings.js_prefix}.STREAM.INFO.{h.common['stream']}", b"", reply=forged)
        assert b'"config"' in await asyncio.wait_for(heard, timeout=5)  # the stream info, at home
    await barrier(h)
    assert await on_log(h, marker) == set()


async def test_not_even_the_admin_can_get_an_answer_into_the_log(bus: Harness) -> None:
    """The admin reaches the log's JetStream API through an import too (no identity lives in the
    log's own account): a reply subject it names is rewritten, so the answer stays at home."""
    h, marker = bus, token()
    forged = subject_of(h, CertificateIssued, marker)
    nc = await h.connect("admin")
    try:
        heard: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        answered = await nc.request(f"{h.common_settings.js_prefix}.STREAM.INFO.{h.common['stream']}", b"", timeout=5)
        assert b'"config"' in answered.data  # the admin's API works
        inbox = f"_INBOX_admin.{marker}"

        async def on_answer(msg: nats.aio.msg.Msg) -> None:
            if not heard.done():
                heard.set_result(msg.data)

        await nc.subscribe(inbox, cb=on_answer)
        await nc.publish(f"{h.common_settings.js_prefix}.STREAM.INFO.{h.common['stream']}", b"", reply=inbox)
        assert b'"config"' in await asyncio.wait_for(heard, timeout=5)
        await nc.publish(f"{h.common_settings.js_prefix}.STREAM.INFO.{h.common['stream']}", b"", reply=forged)
        await nc.flush()
    finally:
        await nc.close()
    await barrier(h)
    assert await on_log(h, marker) == set()


async def test_a_reply_subject_on_a_published_event_never_gets_the_acknowledgement_into_the_log(
    bus: Harness,
) -> None:
    """Enrollment publishes one of its events asking for the log's acknowledgement on another of its
    event subjects: the event is stored, the acknowledgement is not."""
    h, marker = bus, token()
    event = subject_of(h, CertificateRenewalDue, marker)
    forged = subject_of(h, CertificateSuperseded, marker)
    async with session(h, "enrollment") as s:
        heard = await listen(s, forged)
        await s.nc.publish(event, b"{}", reply=forged)
        assert b'"stream"' in await asyncio.wait_for(heard, timeout=5)  # the PubAck, at home
    await barrier(h)
    assert await on_log(h, marker) == {event}


async def test_a_reply_subject_on_a_request_never_gets_the_acknowledgement_into_the_ingress_stream(
    bus: Harness,
) -> None:
    """The same for a request: the ingress stream stores the request, not its acknowledgement sent
    to another ingress subject of the sender's (validation: the one sender whose account lets it
    also listen there)."""
    h = bus
    root = h.common["ingress_root"]
    request, forged = f"{root}.validation.revoke", f"{root}.validation.key_destroyed"
    async with session(h, "validation") as s:
        heard = await listen(s, forged)
        await s.nc.publish(request, b"{}", reply=forged)
        assert b'"stream"' in await asyncio.wait_for(heard, timeout=5)
        assert await s.publish_stored(f"{root}.validation.renew", h.common["ingress_stream"])  # a barrier
    assert await on_ingress(h, [request, forged]) == {request}


# --- reading the log --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVICES)
async def test_a_service_may_read_the_log_by_sequence_but_not_the_ingress_stream(bus: Harness, name: str) -> None:
    """Every service's outbox reads back the message the log holds under an event id it was answered
    `duplicate` for (shared.runtime.outbox): STREAM.MSG.GET on the log, granted to each service."""
    h = bus
    async with session(h, name) as s:
        js = h.js(s.nc, name)
        held = await js.get_msg(h.common["stream"], 1)  # the genesis: the operator's registration
        assert held.seq == 1 and held.subject.startswith(f"{h.root}.")
        with pytest.raises(nats.js.errors.ServiceUnavailableError):  # nats-py's "no responders" for the API
            await js.get_msg(h.common["ingress_stream"], 1)


# --- inboxes, hearing and asking --------------------------------------------------------------


async def test_a_requester_cannot_read_or_answer_in_another_requesters_inbox(bus: Harness) -> None:
    h = bus
    async with session(h, "alice") as alice, session(h, "bob") as bob:
        for subject in ("_INBOX_bob.>", "_INBOX_bob.*", "_INBOX.>", ">", "*.>"):
            await alice.nc.subscribe(subject)
            assert await alice.violation("subscription", subject), subject
        assert await alice.publish_refused("_INBOX_bob.forged-answer")
        # Alice listens where she may; bob's query gets its answer, which alice does not hear.
        caught: list[str] = []

        async def catch(msg: nats.aio.msg.Msg) -> None:
            caught.append(msg.subject)

        await alice.nc.subscribe("_INBOX_alice.>", cb=catch)
        async with session(h, "validation") as service:

            async def answer(msg: nats.aio.msg.Msg) -> None:
                await msg.respond(b"{}")

            query = f"{h.common['query_root']}.validation.health"
            await service.nc.subscribe(query, cb=answer)
            await service.nc.flush()
            assert await ask(bob, query) == b"{}"
        await alice.nc.flush()
        assert caught == []
        assert bob.errors == []


async def test_an_agent_hears_renewal_due_and_revocations_and_may_fetch_its_certificate_but_not_a_history(
    bus: Harness,
) -> None:
    """What `certbus agent` needs as a requester: its certificates' renewal-due and revoked events
    (republished from the log) and audit's `issued` query (to fetch a certificate issued while it was
    not listening; nobody answers here, which is not a permission error), but neither a
    certificate's whole history (operators' names, comments, requests) nor events not meant for it."""
    h, marker = bus, token()
    async with session(h, "agent") as agent:
        heard: list[str] = []

        async def hear(msg: nats.aio.msg.Msg) -> None:
            heard.append(msg.subject)

        for subject in (f"{h.root}.cert.*.renewal_due", f"{h.root}.cert.*.revoked"):
            await agent.nc.subscribe(subject, cb=hear)
        await agent.nc.flush()
        renewal_due = subject_of(h, CertificateRenewalDue, marker)
        revoked = subject_of(h, CertificateRevoked, marker)
        await h.publish_raw(renewal_due, b"{}")  # as enrollment, onto the log
        await h.publish_raw(revoked, b"{}")  # as revocation
        await eventually(lambda: asyncio.sleep(0, len(heard) == 2), timeout=5)
        assert sorted(heard) == sorted([renewal_due, revoked])

        query_root = h.common["query_root"]
        with pytest.raises(nats.errors.NoRespondersError):  # allowed: nobody answers here
            await agent.nc.request(f"{query_root}.audit.issued", b"{}", timeout=2.0)
        assert agent.errors == []
        assert await agent.publish_refused(f"{query_root}.audit.history")
        approved = f"{h.root}.cert.*.approved"
        await agent.nc.subscribe(approved)
        assert await agent.violation("subscription", approved)


async def test_a_requesters_query_reaches_the_service_once(bus: Harness) -> None:
    h = bus
    query = f"{h.common['query_root']}.validation.health"
    async with session(h, "validation") as service, session(h, "tests") as asker:
        received: list[str] = []

        async def answer(msg: nats.aio.msg.Msg) -> None:
            received.append(msg.subject)
            await msg.respond(b"{}")

        await service.nc.subscribe(query, cb=answer)
        await service.nc.flush()
        await ask(asker, query)
        await barrier(h)  # time for a second delivery to arrive, if there is one
        await service.nc.flush()
    assert received == [query]


# --- authentication ------------------------------------------------------------------------------


async def test_an_anonymous_connection_is_refused(bus: Harness) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(bus.nats_url, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3)


async def test_a_connection_with_an_unknown_nkey_is_refused(bus: Harness) -> None:
    seed = bus.tmp / "stranger.nk"
    seed.write_bytes(new_seed())
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            bus.nats_url, nkeys_seed=str(seed), allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3
        )
