"""Signing's subscribers: issue for approved enrollments, remember revocations for CRLs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from faststream.nats.annotations import NatsMessage

from services.signing import domain, store
from services.signing.cas import CaRegistry
from services.signing.crl import CrlPublisher
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
    LintResult,
    ProfileApplied,
    ProfileLinted,
)
from shared.contract.profiles import Profile, ProfileKeyType, key_type_of
from shared.contract.queries import RetireCheckAnswer, RetireCheckQuery
from shared.contract.reasons import Reason
from shared.pki.crypto import fingerprint_sha256, serial_hex, signing_hash, spki_sha256
from shared.pki.lint import errors, lint_certificate
from shared.runtime.consumer import Delivery, EventRejected, GroupCommit, apply_events
from shared.runtime.outbox import OutboxEntry, enqueue
from shared.runtime.service import Runtime
from shared.trust.operators import REGISTRY

NAME = "signing"
log = logging.getLogger("certbus.signing")
# What the approvals consumer reads, applied a group at a time by `work`. A CA's compromise or
# retirement is read in the same consumer as the approvals, so that every approval after it on the
# log is judged with the replacement CA.
APPROVALS: tuple[type[Event], ...] = (EnrollmentApproved, ProfileApplied, CaCompromised, CaRetired)


class ProfileNotYetKnown(Exception):
    """An approval names a profile version this replica has not seen yet (another replica is
    applying it): the approval is nacked and redelivered, and parked if it never becomes known."""


@dataclass(frozen=True)
class Job:
    """An approval that passed signing's own policy checks: what to sign."""

    approved: EnrollmentApproved
    csr: x509.CertificateSigningRequest
    profile: Profile
    digest: str

    @property
    def key_type(self) -> ProfileKeyType:
        """The profile key type of the requested key (checked by policy_problems)."""
        kind = key_type_of(self.csr.public_key())
        assert kind is not None
        return kind


def register(rt: Runtime, cas: CaRegistry, crls: CrlPublisher, book: TemplateBook, retirements: Retirements) -> None:
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
    )
    approvals: GroupCommit[Event] = GroupCommit(
        lambda items: work(rt, cas, book, crls, retirements, items), rt.publish_pending
    )

    @rt.consumer("approved", APPROVALS)
    async def on_approved(event: Event, msg: NatsMessage) -> None:
        await approvals.submit(event, Delivery.of(msg))

    @rt.query("retire_check")
    async def retire_check(query: RetireCheckQuery) -> RetireCheckAnswer:
        """Why a CA cannot be retired now (empty: it can); `certbus ca retire` asks before publishing."""
        async with rt.pool.acquire() as conn:
            records = await store.ca_records(conn)
        return RetireCheckAnswer(reasons=domain.retirement_problems(query.ca_id, records))

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
            conn, event.issuer_id, int(event.serial, 16), event.revoked_at, event.reason, event.invalidity_date
        )

    revocations = rt.group_commit("revoked", remember)

    @rt.consumer("revoked", [CertificateRevoked])
    async def on_revoked(event: CertificateRevoked, msg: NatsMessage) -> None:
        await revocations.submit(event, Delivery.of(msg))
        crls.wake()


async def load_profiles(rt: Runtime, cas: CaRegistry, book: TemplateBook) -> None:
    """At start: know every profile version, lint the current ones under the issuing CA, and say so
    on the log for any (profile, issuer) pair not linted before."""
    async with rt.pool.acquire() as conn:
        rows = await store.profile_bodies(conn)
    current = [book.add(Profile.model_validate(body)) for _digest, body, is_current in rows if is_current]
    for _digest, body, is_current in rows:
        if not is_current:
            book.add(Profile.model_validate(body))
    entries = []
    for digest in current:
        verdict = await book.lint(digest, cas.issuing().ca_id, rt.clock.now())
        async with rt.pool.acquire() as conn, conn.transaction():
            entries += await _record_verdict(conn, rt, book, verdict, None)
    await rt.publish_pending(entries)


async def _record_verdict(
    conn: asyncpg.Connection, rt: Runtime, book: TemplateBook, verdict: Verdict, cause: Event | None
) -> list[OutboxEntry]:
    findings = [f.model_dump() for f in verdict.findings]
    first = await store.record_lint(conn, verdict.digest, verdict.issuer_id, verdict.usable, findings, rt.clock.now())
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


async def _profile_for(rt: Runtime, book: TemplateBook, approved: EnrollmentApproved) -> tuple[Profile, str] | None:
    digest = approved.profile_digest
    if digest is None or digest not in book.profiles:
        async with rt.pool.acquire() as conn:
            if digest is None:
                digest = await store.current_digest(conn, approved.profile)
            if digest is not None and digest not in book.profiles:
                for known, body, _ in await store.profile_bodies(conn):
                    if known == digest:
                        book.add(Profile.model_validate(body))
    if digest is None:
        return None
    if digest not in book.profiles:
        raise ProfileNotYetKnown(f"profile version {digest[:12]} of {approved.profile!r} is not known here yet")
    return book.profiles[digest], digest


async def work(
    rt: Runtime,
    cas: CaRegistry,
    book: TemplateBook,
    crls: CrlPublisher,
    retirements: Retirements,
    items: list[tuple[Event, Delivery]],
) -> list[OutboxEntry]:
    """Apply a group in log order: what comes before a CA's compromise or retirement, that event,
    what comes after."""
    for at, (event, _) in enumerate(items):
        if isinstance(event, CaCompromised | CaRetired):
            entries = await issue(rt, cas, book, items[:at])
            if isinstance(event, CaCompromised):
                entries += await compromise(rt, cas, crls, items[at])
            else:
                entries += await retire(rt, cas, crls, retirements, items[at])
            return entries + await work(rt, cas, book, crls, retirements, items[at + 1 :])
    return await issue(rt, cas, book, items)


async def retire(
    rt: Runtime, cas: CaRegistry, crls: CrlPublisher, retirements: Retirements, item: tuple[Event, Delivery]
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
        await store.add_revoked(conn, row["parent_id"], cert.serial_number, event.occurred_at, "cACompromise")
        log.error("CA declared compromised; replacing it", extra={"ca": event.ca_id, "by": event.declared_by})
        if cas.issuing_id == event.ca_id:
            await cas.create_issuing(conn, rt, row["parent_id"], event.correlation_id)
        return []

    async with rt.pool.acquire() as conn, conn.transaction():
        entries = await apply_events(conn, rt.durable("approved"), [item], apply)
    async with rt.pool.acquire() as conn:
        await cas.load(conn)
    crls.wake()
    return entries


async def issue(
    rt: Runtime, cas: CaRegistry, book: TemplateBook, items: list[tuple[Event, Delivery]]
) -> list[OutboxEntry]:
    """Apply profiles, then issue at most one certificate per approved request.

    Intents (request id -> serial, validity) are committed before anything is signed, so a
    redelivered or repeated approval signs the recorded serial again, or nothing if it was stored
    or refused. Each signed certificate is checked against its linted template before release.
    """
    if not items:
        return []
    now = rt.clock.now()
    async with rt.pool.acquire() as conn:
        if await store.current_issuing(conn) != cas.issuing_id:
            await cas.load(conn)  # another replica replaced a compromised CA
    issuer_id = cas.issuing().ca_id
    verdicts: dict[str, Verdict] = {}
    work: dict[str, Job | list[Reason]] = {}
    for event, _ in items:
        if isinstance(event, ProfileApplied):
            if event.profile.digest() != event.digest or event.profile.name != event.aggregate_id:
                raise EventRejected("the profile's digest or name does not match its content")
            book.add(event.profile)
            verdicts[event.digest] = await book.lint(event.digest, issuer_id, now)
        elif isinstance(event, EnrollmentApproved):
            if event.aggregate_id not in work:
                work[event.aggregate_id] = await _judge(rt, book, event, issuer_id, now)
        elif not isinstance(event, REGISTRY):  # the operators' registry: applied by apply_events
            raise EventRejected(f"signing does not take {event.event_type} as an approval")
    to_sign = {rid: job for rid, job in work.items() if isinstance(job, Job)}
    intents = await _record_intents(rt, cas, to_sign) if to_sign else {}
    signed: dict[str, x509.Certificate] = {}
    refused: dict[str, tuple[x509.Certificate, list[Reason]]] = {}
    stale: set[str] = set()  # planned under a CA declared compromised or retired since: never signed
    for rid, intent in intents.items():
        if intent.cert_der is None and not intent.refused and intent.issuer_id not in cas.ids():
            stale.add(rid)
        elif intent.cert_der is None and not intent.refused:
            cert, deviations = await _sign_checked(cas, book, to_sign[rid], intent, now)
            if deviations:
                refused[rid] = (cert, deviations)
            else:
                signed[rid] = cert
    if len(signed) + len(refused) < len(intents):
        rt.relay.notify()  # a redelivery of something decided before: make sure its event is out

    async def apply(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> list[OutboxEntry]:
        if isinstance(event, ProfileApplied):
            body = event.profile.model_dump(mode="json")
            await store.save_profile(conn, event.digest, event.profile.name, body, event.occurred_at)
            return await _record_verdict(conn, rt, book, verdicts[event.digest], event)
        assert isinstance(event, EnrollmentApproved)
        item = work[event.aggregate_id]
        if isinstance(item, list):
            return [await _reject(conn, rt, event, item)]
        if event.aggregate_id in refused:
            bad, deviations = refused[event.aggregate_id]
            return await _refuse(conn, rt, item, bad, deviations)
        cert = signed.get(event.aggregate_id)
        if cert is None and event.aggregate_id not in stale:
            return []  # decided before: its event is already in the outbox
        intent = intents[event.aggregate_id]
        status = await store.ca_status(conn, intent.issuer_id)
        if cert is None or status != "active":
            # Its CA was declared compromised or retired after the intent: the certificate is never released.
            return [await _reject(conn, rt, event, [_closed_issuer(intent.issuer_id, status)])]
        return await _store_signed(conn, rt, cas, event, intent, cert)

    async with rt.pool.acquire() as conn, conn.transaction():
        return await apply_events(conn, rt.durable("approved"), items, apply)


def _closed_issuer(issuer_id: str, status: str | None) -> Reason:
    """Why a certificate planned under a CA closed since is not released."""
    if status == "retired":
        return Reason(code="issuer_retired", message=f"issuer {issuer_id} was retired before release: request again")
    return Reason(
        code="issuer_compromised",
        message=f"issuer {issuer_id} was declared compromised before release: request again",
    )


async def _judge(
    rt: Runtime, book: TemplateBook, approved: EnrollmentApproved, issuer_id: str, now: datetime
) -> Job | list[Reason]:
    """Signing's own verdict on an approval, whatever enrollment decided."""
    try:
        csr = x509.load_pem_x509_csr(approved.csr_pem.encode())
    except ValueError as exc:
        raise EventRejected(f"the approved CSR cannot be parsed: {exc}") from exc
    found = await _profile_for(rt, book, approved)
    if found is None:
        return [Reason(code="profile_unknown", message=f"signing knows no profile {approved.profile!r}")]
    profile, digest = found
    verdict = await book.lint(digest, issuer_id, now)
    if not verdict.usable:
        codes = ", ".join(sorted({f.code for f in verdict.findings}))
        return [
            Reason(
                code="profile_unusable",
                message=f"profile {profile.name!r} cannot be used: its certificate template fails lint ({codes})",
            )
        ]
    problems = domain.policy_problems(approved, csr, profile)
    return problems or Job(approved, csr, profile, digest)


async def _sign_checked(
    cas: CaRegistry, book: TemplateBook, job: Job, intent: store.Intent, now: datetime
) -> tuple[x509.Certificate, list[Reason]]:
    """Sign the planned certificate and check it against its template (and pkilint, if the profile
    asks for full lint) before anyone sees it."""
    issuer = cas.get(intent.issuer_id)
    template = book.template(job.digest, issuer.ca_id, job.key_type)
    if template is None:
        await book.lint(job.digest, issuer.ca_id, now)
        template = book.template(job.digest, issuer.ca_id, job.key_type)
    assert template is not None
    plan = domain.LeafPlan(intent.serial, intent.not_before, intent.not_after)
    names = domain.Sans.of(job.approved)
    public_key = job.csr.public_key()
    key = cas.key(issuer.ca_id)
    cert = domain.leaf_builder(job.profile, names, public_key, issuer, plan, cas.urls).sign(key, signing_hash(key))  # type: ignore[arg-type]
    deviations = domain.template_deviations(cert, template.cert, job.profile, names, public_key, plan)  # type: ignore[arg-type]
    if not deviations and job.profile.lint == "full":
        der = cert.public_bytes(serialization.Encoding.DER)
        deviations = [
            Reason(code="lint_failed", message=f"pkilint {f.severity} {f.code}: {f.message or f.path}")
            for f in errors(await asyncio.to_thread(lint_certificate, der))
        ]
    return cert, deviations


async def _refuse(
    conn: asyncpg.Connection, rt: Runtime, job: Job, cert: x509.Certificate, deviations: list[Reason]
) -> list[OutboxEntry]:
    """Keep a failed certificate unpublished: reject the enrollment and raise an operator alert."""
    approved = job.approved
    findings = [LintResult(severity="ERROR", code=r.code, message=r.message) for r in deviations]
    if not await store.record_refused(conn, approved.aggregate_id, [f.model_dump() for f in findings]):
        return []
    log.error(
        "refused to release a certificate that failed its pre-release check",
        extra={"request": approved.aggregate_id, "serial": serial_hex(cert), "profile": job.profile.name},
    )
    alert = CertificateLintFailed.caused_by(
        approved,
        producer=NAME,
        at=rt.clock.now(),
        aggregate_id=str(uuid.uuid4()),
        stage="pre-release",
        request_id=approved.aggregate_id,
        serial=serial_hex(cert),
        profile=job.profile.name,
        findings=findings,
    )
    return [await enqueue(conn, alert, rt.root), await _reject(conn, rt, approved, deviations)]


async def _record_intents(rt: Runtime, cas: CaRegistry, to_sign: dict[str, Job]) -> dict[str, store.Intent]:
    issuer = cas.issuing()
    now = rt.clock.now()
    plans = []
    for rid, job in to_sign.items():
        plan = domain.plan_leaf(issuer, job.approved.validity_days, now)
        spki = spki_sha256(job.csr.public_key())  # type: ignore[arg-type]
        plans.append((rid, issuer.ca_id, plan.serial, plan.not_before, plan.not_after, spki, job.approved.event_id))
    async with rt.pool.acquire() as conn, conn.transaction():
        return await store.record_intents(conn, plans, now)


async def _store_signed(
    conn: asyncpg.Connection,
    rt: Runtime,
    cas: CaRegistry,
    approved: EnrollmentApproved,
    intent: store.Intent,
    cert: x509.Certificate,
) -> list[OutboxEntry]:
    der = cert.public_bytes(serialization.Encoding.DER)
    issued = CertificateIssued.caused_by(
        approved,
        producer=NAME,
        at=rt.clock.now(),
        event_id=intent.issued_event_id,
        serial=serial_hex(cert),
        issuer_id=intent.issuer_id,
        profile=approved.profile,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        chain_pem=cas.chain_pem(intent.issuer_id),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=approved.dns_names,
        ip_addresses=approved.ip_addresses,
        emails=approved.emails,
        spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
        fingerprint_sha256=fingerprint_sha256(cert),
        supersedes=approved.supersedes,
    )
    tbs = hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()
    if not await store.record_signed(conn, approved.aggregate_id, der, tbs, rt.clock.now()):
        return []  # another replica stored its signature of this intent first
    log.info("issued certificate", extra={"serial": issued.serial, "issuer": intent.issuer_id})
    return [await enqueue(conn, issued, rt.root)]


async def _reject(
    conn: asyncpg.Connection, rt: Runtime, approved: EnrollmentApproved, problems: list[Reason]
) -> OutboxEntry:
    rejected = IssuanceRefused.caused_by(approved, producer=NAME, at=rt.clock.now(), reasons=problems)
    return await enqueue(conn, rejected, rt.root)
