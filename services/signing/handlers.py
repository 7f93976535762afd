"""Signing's subscribers: issue for approved enrollments, remember revocations for CRLs."""

from __future__ import annotations

import logging

import asyncpg
from cryptography import x509

from services.signing import domain, store
from services.signing.cas import CaRegistry
from services.signing.crl import CrlPublisher
from services.signing.issuance import Issuance
from services.signing.retire import Retirements
from services.signing.templates import TemplateBook, Verdict
from shared.contract.events import (
    CaCompromised,
    CaCreated,
    CaKeyDestroyed,
    CaRetired,
    CertificateIssued,
    CertificateLintFailed,
    CertificateRevoked,
    CrlPublished,
    EnrollmentApproved,
    Event,
    IssuanceRefused,
    IssuingCaCertified,
    IssuingCaKeyGenerated,
    ProfileApplied,
    ProfileLinted,
    RootCaCreated,
    RootCrlSigned,
)
from shared.contract.profiles import Profile
from shared.contract.queries import IssuingRequestAnswer, IssuingRequestQuery, RetireCheckAnswer, RetireCheckQuery
from shared.runtime.consumer import Delivery, EventRejected, Together, apply_events, applying, dispatching
from shared.runtime.outbox import OutboxEntry, enqueue
from shared.runtime.service import Runtime
from shared.trust.operators import REGISTRY

NAME = "signing"
log = logging.getLogger("certbus.signing")
# What the approvals consumer reads, applied a group at a time by `work`. A CA's compromise or
# retirement is read in the same consumer as the approvals, so that every approval after it on the
# log is judged with the replacement CA.
APPROVALS: tuple[type[Event], ...] = (EnrollmentApproved, ProfileApplied, CaCompromised, CaRetired)
# What the offline root's ceremony publishes through operators (docs/hsm.md): read in a consumer of
# its own, so that approvals waiting for an issuing CA never hold up the certificate they wait for.
CEREMONY: tuple[type[Event], ...] = (RootCaCreated, IssuingCaCertified, RootCrlSigned)


def register(rt: Runtime, *, cas: CaRegistry, crls: CrlPublisher, book: TemplateBook, retirements: Retirements) -> None:
    """Attach signing's consumers. Signing accepts work only from approvals and revocations, and
    reads profiles in the same consumer so that an approval is judged by the profiles before it."""
    rt.publishes(
        CertificateIssued,
        IssuanceRefused,
        CaCreated,
        CrlPublished,
        CaKeyDestroyed,
        ProfileLinted,
        CertificateLintFailed,
        IssuingCaKeyGenerated,
    )

    async def approvals(items: list[tuple[Event, Delivery]]) -> list[OutboxEntry]:
        return await work(rt, items, cas=cas, book=book, crls=crls, retirements=retirements)

    rt.batch_consumer("approved", APPROVALS, approvals)

    @rt.query("retire_check")
    async def retire_check(query: RetireCheckQuery) -> RetireCheckAnswer:
        """Why a CA cannot be retired now (empty: it can); `certbus ca retire` asks before publishing."""
        async with rt.pool.acquire() as conn:
            records = await store.ca_records(conn)
        return RetireCheckAnswer(reasons=domain.retirement_problems(query.ca_id, records))

    @rt.query("issuing_request")
    async def issuing_request(_: IssuingRequestQuery) -> IssuingRequestAnswer:
        """The issuing CA key waiting for the offline root's ceremony, and what the root's next CRL
        must name (`certbus ca csr`)."""
        async with rt.pool.acquire() as conn:
            waiting = await store.waiting_issuing_request(conn)
            roots = await store.offline_roots(conn)
            root = roots[0] if roots else None
            revoked, _through = await store.revoked_entries(conn, root["ca_id"]) if root is not None else ([], 0)
        return IssuingRequestAnswer(
            ca_id=waiting["ca_id"] if waiting is not None else None,
            parent_id=waiting["parent_id"] if waiting is not None else None,
            csr_pem=waiting["csr_pem"] if waiting is not None else None,
            requested_at=waiting["requested_at"] if waiting is not None else None,
            root_id=root["ca_id"] if root is not None else None,
            root_revoked=[
                domain.ceremony_revoked(domain.RevokedEntry(int(r["serial"]), r["revoked_at"], r["reason"]))
                for r in revoked
            ],
            root_crl_number=int(root["crl_number"]) if root is not None else 0,
            root_crl_next_update=root["next_update"] if root is not None and root["crl_number"] else None,
        )

    async def ceremony(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> None:
        if isinstance(event, RootCaCreated):
            await cas.adopt_root(conn, rt, event)
        elif isinstance(event, IssuingCaCertified):
            await cas.adopt_issuing(conn, rt, event)
        elif isinstance(event, RootCrlSigned):
            await crls.relay_root_crl(conn, event)
        else:
            raise EventRejected(f"signing's ceremony consumer does not take {event.event_type}")

    linted_under: set[str] = set()  # the issuing CAs this consumer had the current profiles linted under

    async def adopted(_: list[Event]) -> None:
        await rt.publish_pending()  # CaCreated / IssuingCaKeyGenerated / CrlPublished
        async with rt.pool.acquire() as conn:
            await cas.load(conn)
        if cas.issuing_id is not None and cas.issuing_id not in linted_under:
            await load_profiles(rt, cas, book)  # the current profiles linted under a new issuing CA
            linted_under.add(cas.issuing_id)
        crls.wake()  # a new issuing CA's first CRL

    rt.batch_consumer("ceremony", CEREMONY, applying(lambda: rt.pool, rt.durable("ceremony"), ceremony), after=adopted)

    async def remember(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> None:
        if not isinstance(event, CertificateRevoked):
            raise EventRejected(f"signing's revocation consumer does not take {event.event_type}")
        if await store.ca_status(conn, event.issuer_id) == "retired":
            log.warning(
                "revocation of a certificate of a retired CA: its final CRL is out and its key destroyed, "
                "so no CRL will list it (validation and OCSP still answer revoked)",
                extra={"issuer": event.issuer_id, "serial": event.serial},
            )
        await store.add_revoked(
            conn,
            event.issuer_id,
            int(event.serial, 16),
            revoked_at=event.revoked_at,
            reason=event.reason,
            invalidity_date=event.invalidity_date,
        )

    async def revoked(_: list[Event]) -> None:
        crls.wake()

    revocations = applying(lambda: rt.pool, rt.durable("revoked"), remember)
    rt.batch_consumer("revoked", [CertificateRevoked], revocations, after=revoked)


async def load_profiles(rt: Runtime, cas: CaRegistry, book: TemplateBook) -> None:
    """At start: know every profile version, lint the current ones under the issuing CA, and say so
    on the log for any (profile, issuer) pair not linted before."""
    async with rt.pool.acquire() as conn:
        rows = await store.profile_bodies(conn)
    current = [book.add(Profile.model_validate(body)) for _digest, body, is_current in rows if is_current]
    for _digest, body, is_current in rows:
        if not is_current:
            book.add(Profile.model_validate(body))
    issuer_id = cas.issuing_id  # read once: another consumer may replace it meanwhile
    if issuer_id is None:
        return  # an offline root's issuing CA is not certified yet: linted once it is
    entries = []
    for digest in current:
        verdict = await book.lint(digest, issuer_id, rt.clock.now())
        async with rt.pool.acquire() as conn, conn.transaction():
            entries += await _record_verdict(conn, rt, book, verdict, cause=None)
    await rt.publish_pending(entries)


async def _record_verdict(
    conn: asyncpg.Connection, rt: Runtime, book: TemplateBook, verdict: Verdict, *, cause: Event | None
) -> list[OutboxEntry]:
    findings = [f.model_dump() for f in verdict.findings]
    first = await store.record_lint(
        conn, verdict.digest, verdict.issuer_id, usable=verdict.usable, findings=findings, at=rt.clock.now()
    )
    if not first and cause is None:
        return []  # linted before under this issuer, and nobody is waiting for the answer
    profile = book.profiles[verdict.digest]
    now = rt.clock.now()
    found = list(verdict.findings)
    linted = (
        ProfileLinted.caused_by(
            cause,
            producer=NAME,
            at=now,
            aggregate_id=profile.name,
            digest=verdict.digest,
            issuer_id=verdict.issuer_id,
            usable=verdict.usable,
            findings=found,
        )
        if cause is not None
        else ProfileLinted.first(
            profile.name,
            producer=NAME,
            at=now,
            correlation_id=f"lint-{verdict.digest[:16]}",
            digest=verdict.digest,
            issuer_id=verdict.issuer_id,
            usable=verdict.usable,
            findings=found,
        )
    )
    return [await enqueue(conn, linted, rt.root)]


async def work(
    rt: Runtime,
    items: list[tuple[Event, Delivery]],
    *,
    cas: CaRegistry,
    book: TemplateBook,
    crls: CrlPublisher,
    retirements: Retirements,
) -> list[OutboxEntry]:
    """Apply a group in log order: what comes before a CA's compromise or retirement, that event,
    what comes after."""
    for at, (event, _) in enumerate(items):
        if isinstance(event, CaCompromised | CaRetired):
            entries = await issue(rt, cas, book, items[:at])
            if isinstance(event, CaCompromised):
                entries += await compromise(rt, cas, crls, items[at])
            else:
                entries += await retire(rt, items[at], cas=cas, crls=crls, retirements=retirements)
            rest = items[at + 1 :]
            return entries + await work(rt, rest, cas=cas, book=book, crls=crls, retirements=retirements)
    return await issue(rt, cas, book, items)


async def retire(
    rt: Runtime, item: tuple[Event, Delivery], *, cas: CaRegistry, crls: CrlPublisher, retirements: Retirements
) -> list[OutboxEntry]:
    """An operator retired a CA: it issues nothing more from here on the log; its final CRL and key
    destruction follow in the background (resumable, see retire.py)."""

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        assert isinstance(event, CaRetired)
        await retirements.retire(conn, event, delivery)
        return []

    async with rt.pool.acquire() as conn, conn.transaction():
        entries = await apply_events(conn, rt.durable("approved"), [item], apply)
    async with rt.pool.acquire() as conn:
        await cas.load(conn)
    await rt.publish_pending()  # a replacement's CaCreated is on the log before anything it issues
    crls.wake()  # the replacement's first CRL
    retirements.loop.wake()
    return entries


async def compromise(
    rt: Runtime, cas: CaRegistry, crls: CrlPublisher, item: tuple[Event, Delivery]
) -> list[OutboxEntry]:
    """An operator declared a CA compromised: never sign with it again, revoke its certificate in
    its parent's CRL (cACompromise) and, if it was the issuing CA, create its replacement."""
    event = item[0]
    assert isinstance(event, CaCompromised)

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        assert isinstance(event, CaCompromised)
        row = await store.lock_ca(conn, event.ca_id)
        if row is None or row["status"] != "active":
            log.warning("compromise of a CA that is unknown or not active", extra={"ca": event.ca_id})
            return []
        if row["role"] == "root":
            # Replacing a root means new trust anchors everywhere: an operator's job, not this service's.
            log.error("a root CA was declared compromised: stop trusting it", extra={"ca": event.ca_id})
            await store.set_ca_status(conn, event.ca_id, "compromised")
            return []
        await store.set_ca_status(conn, event.ca_id, "compromised")
        cert = x509.load_der_x509_certificate(row["cert_der"])
        await store.add_revoked(
            conn, row["parent_id"], cert.serial_number, revoked_at=event.occurred_at, reason="cACompromise"
        )
        log.error("CA declared compromised; replacing it", extra={"ca": event.ca_id, "by": event.declared_by})
        if cas.issuing_id == event.ca_id:
            await cas.replace_issuing(conn, rt, row["parent_id"], event.correlation_id)
        return []

    async with rt.pool.acquire() as conn, conn.transaction():
        entries = await apply_events(conn, rt.durable("approved"), [item], apply)
    async with rt.pool.acquire() as conn:
        await cas.load(conn)
    # The replacement's CaCreated (or, under an offline root, its IssuingCaKeyGenerated) on the log
    # now, before anything it issues, not when the relay next looks.
    await rt.publish_pending()
    crls.wake()
    return entries


async def issue(
    rt: Runtime, cas: CaRegistry, book: TemplateBook, items: list[tuple[Event, Delivery]]
) -> list[OutboxEntry]:
    """Apply profiles, then issue at most one certificate per approved request (`Issuance`): the
    intents are committed before anything is signed, each certificate is checked against its
    linted template before release, and what is released is written with the tracking rows."""
    if not items:
        return []
    now = rt.clock.now()
    verdicts: dict[str, Verdict] = {}
    issuance = Issuance(rt, cas, book, now)

    async def profile_applied(conn: asyncpg.Connection, event: ProfileApplied, delivery: Delivery) -> list[OutboxEntry]:
        body = event.profile.model_dump(mode="json")
        await store.save_profile(conn, event.digest, event.profile.name, body, event.occurred_at)
        return await _record_verdict(conn, rt, book, verdicts[event.digest], cause=event)

    async def approved(conn: asyncpg.Connection, run: list[tuple[EnrollmentApproved, Delivery]]) -> list[OutboxEntry]:
        return await issuance.release_run(conn, [event for event, _ in run])

    apply = dispatching(NAME, {ProfileApplied: profile_applied, EnrollmentApproved: Together(approved)})
    # One connection for the group's steps (each pool release costs a reset round trip); the
    # intents are still committed in their own transaction before anything is signed.
    async with rt.pool.acquire() as conn:
        if await store.current_issuing(conn) != cas.issuing_id:
            await cas.load(conn)  # another replica replaced a compromised CA
        issuer_id = cas.issuing().ca_id
        for event, _ in items:
            if isinstance(event, ProfileApplied):
                if event.profile.digest() != event.digest or event.profile.name != event.aggregate_id:
                    raise EventRejected("the profile's digest or name does not match its content")
                book.add(event.profile)
                verdicts[event.digest] = await book.lint(event.digest, issuer_id, now)
            elif isinstance(event, EnrollmentApproved):
                await issuance.prepare(event, issuer_id)
            elif not isinstance(event, REGISTRY):  # the operators' registry: applied by apply_events
                raise EventRejected(f"signing does not take {event.event_type} as an approval")
        await issuance.record_intents(conn)
        await issuance.sign()
        async with conn.transaction():
            return await apply_events(conn, rt.durable("approved"), items, apply)
