"""Enrollment's subscribers: thin, they parse, decide with `domain` and persist with `store`.

One durable consumer reads requests and the policy events that govern them (provisioners,
profiles, blocked keys, operator approvals) in log order, so a request is always judged by the
policy that was on the log before it: a provisioner disabled before a request refuses it. The
same consumer follows every certificate's life (issued, revoked, destroyed, and the schedule's own
events), so a renewal is judged by the certificate's state as the log had it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from cryptography import x509

from services.enrollment import domain, renewal, store
from services.enrollment.domain import profile_of
from services.enrollment.replay import LogPosition
from services.enrollment.schedule import RenewalSchedule
from shared.base.settings import EnrollmentSettings
from shared.contract.events import (
    ApprovalDenied,
    ApprovalGranted,
    CertificateDestroyed,
    CertificateExpired,
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    CertificateSuperseded,
    EnrollmentApproved,
    EnrollmentPending,
    EnrollmentRejected,
    EnrollmentRequested,
    Event,
    IssuanceRefused,
    KeyBlocked,
    ProfileApplied,
    ProfileLinted,
    ProvisionerDisabled,
    ProvisionerRegistered,
    ProvisionerRemoved,
    RenewalRequested,
)
from shared.contract.ingress import Kind
from shared.contract.profiles import Profile
from shared.contract.queries import (
    Failure,
    ProfileInfo,
    ProfilesAnswer,
    ProvisionerInfo,
    ProvisionersAnswer,
    RequestDetail,
    RequestQuery,
    RequestsAnswer,
    RequestsQuery,
    RequestSummary,
)
from shared.contract.reasons import Reason, printable
from shared.pki.crypto import csr_names, spki_sha256
from shared.pki.tokens import (
    TokenError,
    provisioner_id_of,
)
from shared.runtime.admission import Admission
from shared.runtime.consumer import Delivery, EventRejected, Projections, Together, applying, dispatching
from shared.runtime.outbox import OutboxEntry, enqueue, enqueue_many
from shared.runtime.service import Readiness, Runtime
from shared.trust.operators import recorded

NAME = "enrollment"
log = logging.getLogger("certbus.enrollment")


def register(rt: Runtime, settings: EnrollmentSettings, schedule: RenewalSchedule, position: LogPosition) -> None:
    """Attach enrollment's consumer, its admission of requests from the ingress stream, and its queries."""

    async def refuse(
        conn: asyncpg.Connection, kind: Kind, request_id: str, identity: str, reason: Reason, raw: bytes
    ) -> Event:
        return EnrollmentRejected.first(
            request_id, producer=NAME, at=rt.clock.now(), reasons=[reason], rejected_by=NAME, requester=identity
        )

    Admission(rt, ["enroll", "renew"], refuse, settings.admission_rate_per_min).register()
    rt.publishes(
        EnrollmentRequested,
        RenewalRequested,
        EnrollmentApproved,
        EnrollmentRejected,
        EnrollmentPending,
        CertificateRenewalDue,
        CertificateExpired,
        CertificateSuperseded,
    )

    async def unanswered(event: Event, delivery: Delivery) -> bool:
        """Whether to answer a request: it is judged again when the tables are rebuilt from the log,
        but answered only once."""
        return not await position.answered(event.aggregate_id, delivery.seq)

    # A request is judged at the time the ingress stream took it (admission records it).
    async def enrollment(conn: asyncpg.Connection, event: EnrollmentRequested, delivery: Delivery) -> list[OutboxEntry]:
        at = event.accepted_at or delivery.accepted_at
        return await _decide(conn, rt, settings, event, accepted_at=at, publish=await unanswered(event, delivery))

    async def enrollments(
        conn: asyncpg.Connection, run: list[tuple[EnrollmentRequested, Delivery]]
    ) -> list[OutboxEntry]:
        """A run of first enrollments decided together, or one by one where they could depend on each
        other (the same request id twice, a provisioner's hourly limit, a token used twice)."""
        if len(run) > 1 and len({event.aggregate_id for event, _ in run}) == len(run):
            items = [(e, e.accepted_at or d.accepted_at, await unanswered(e, d)) for e, d in run]
            entries = await _decide_run(conn, rt, settings, items)
            if entries is not None:
                return entries
        return [entry for event, delivery in run for entry in await enrollment(conn, event, delivery)]

    async def renewal(conn: asyncpg.Connection, event: RenewalRequested, delivery: Delivery) -> list[OutboxEntry]:
        at = event.accepted_at or delivery.accepted_at
        return await _renew(conn, rt, settings, event, accepted_at=at, publish=await unanswered(event, delivery))

    async def operator_decision(
        conn: asyncpg.Connection, event: ApprovalGranted | ApprovalDenied, delivery: Delivery
    ) -> list[OutboxEntry]:
        publish = await unanswered(event, delivery)
        return await _operator_decision(conn, rt, settings, event, operator=recorded(delivery.signers), publish=publish)

    async def issued(conn: asyncpg.Connection, run: list[tuple[CertificateIssued, Delivery]]) -> None:
        """Issued certificates, a run at a time: their requests marked issued in one statement, then
        the certificate projection (a request issued twice in one run is applied event by event)."""
        if len({event.aggregate_id for event, _ in run}) < len(run):
            for one in run:
                await issued(conn, [one])
            return
        renews = await store.mark_issued_many(
            conn, [(event.aggregate_id, event.serial, event.issuer_id, event.not_after) for event, _ in run]
        )
        await schedule.issued(conn, [(event, delivery.seq) for event, delivery in run], renews)

    async def lifecycle(conn: asyncpg.Connection, event: Event, delivery: Delivery) -> None:
        await schedule.project(conn, event, delivery.seq)

    # Requests, the policy that governs them, and what became of the certificates, in log order.
    projections: Projections = {
        EnrollmentRequested: Together(enrollments),
        RenewalRequested: renewal,
        ApprovalGranted: operator_decision,
        ApprovalDenied: operator_decision,
        ProvisionerRegistered: _provisioner_registered,
        ProvisionerDisabled: _provisioner_disabled,
        ProvisionerRemoved: _provisioner_removed,
        ProfileApplied: _profile_applied,
        ProfileLinted: _profile_linted,
        KeyBlocked: _key_blocked,
        CertificateIssued: Together(issued),
        IssuanceRefused: _issuance_refused,
        EnrollmentRejected: _rejected,
        # The certificate lifecycle events only the renewal schedule's projection applies.
        CertificateRevoked: lifecycle,
        CertificateDestroyed: lifecycle,
        CertificateRenewalDue: lifecycle,
        CertificateExpired: lifecycle,
        CertificateSuperseded: lifecycle,
    }

    async def committed(events: list[Event]) -> None:
        if any(isinstance(event, CertificateRevoked) and event.reason == "cACompromise" for event in events):
            schedule.wake()  # committed: their holders are told to renew at once
        else:
            schedule.wake_if_due_soon()  # an issued certificate renews another, or is due already

    requests = applying(lambda: rt.pool, rt.durable("requests"), dispatching(NAME, projections))
    rt.batch_consumer("requests", projections, requests, after=committed, tagged=True)

    @rt.query("requests")
    async def list_requests(query: RequestsQuery) -> RequestsAnswer:
        async with rt.pool.acquire() as conn:
            rows = await store.list_requests(conn, query.status, min(max(query.limit, 1), 1000))
        return RequestsAnswer(requests=[RequestSummary(**row) for row in rows])

    @rt.query("request")
    async def show_request(query: RequestQuery) -> RequestDetail | Failure:
        async with rt.pool.acquire() as conn:
            row = await store.request_detail(conn, query.request_id)
        if row is None:
            return Failure(error=f"no enrollment request {query.request_id!r}", code="request_unknown")
        return RequestDetail(**row)

    @rt.query("profiles")
    async def list_profiles() -> ProfilesAnswer:
        async with rt.pool.acquire() as conn:
            return ProfilesAnswer(profiles=[ProfileInfo(**row) for row in await store.profiles(conn)])

    @rt.query("provisioners")
    async def list_provisioners() -> ProvisionersAnswer:
        async with rt.pool.acquire() as conn:
            return ProvisionersAnswer(provisioners=[ProvisionerInfo(**row) for row in await store.provisioners(conn)])


async def readiness(rt: Runtime) -> Readiness:
    """Ready once a usable profile is applied (until then every request is refused: profile_unknown)."""
    async with rt.pool.acquire() as conn:
        applied, usable = await store.profile_counts(conn)
    return Readiness(missing=domain.readiness_missing(applied, usable), facts={"profiles_usable": usable})


# Provisioners, profiles, blocked keys, and what became of approved requests. Provisioner and
# profile changes carry their stream sequence: a late older event never undoes a newer one. The
# operator recorded for a change is whoever signed it (never what the command says).


async def _provisioner_registered(conn: asyncpg.Connection, event: ProvisionerRegistered, delivery: Delivery) -> None:
    by = recorded(delivery.signers)
    await store.save_provisioner(
        conn, event.aggregate_id, event.name, event.public_key_pem, event.occurred_at, by, delivery.seq
    )
    await store.save_scope(conn, event.aggregate_id, domain.Scope.of(event))


async def _provisioner_disabled(conn: asyncpg.Connection, event: ProvisionerDisabled, delivery: Delivery) -> None:
    by = recorded(delivery.signers)
    await store.set_provisioner_status(
        conn, event.aggregate_id, "disabled", event.reason, by, event.occurred_at, delivery.seq
    )


async def _provisioner_removed(conn: asyncpg.Connection, event: ProvisionerRemoved, delivery: Delivery) -> None:
    by = recorded(delivery.signers)
    await store.set_provisioner_status(conn, event.aggregate_id, "removed", "", by, event.occurred_at, delivery.seq)


async def _profile_applied(conn: asyncpg.Connection, event: ProfileApplied, delivery: Delivery) -> None:
    if event.profile.digest() != event.digest or event.profile.name != event.aggregate_id:
        raise EventRejected("the profile's digest or name does not match its content")
    body = event.profile.model_dump(mode="json")
    by = recorded(delivery.signers)
    await store.save_profile(conn, event.aggregate_id, event.digest, body, event.occurred_at, by, delivery.seq)


async def _profile_linted(conn: asyncpg.Connection, event: ProfileLinted, delivery: Delivery) -> None:
    findings = [f.model_dump() for f in event.findings]
    await store.record_lint(conn, event.digest, event.usable, findings)


async def _key_blocked(conn: asyncpg.Connection, event: KeyBlocked, delivery: Delivery) -> None:
    await store.block_key(conn, event.spki_sha256, event.reason, recorded(delivery.signers), event.occurred_at)


async def _issuance_refused(conn: asyncpg.Connection, event: IssuanceRefused, delivery: Delivery) -> None:
    await store.mark_rejected_by_signing(conn, event.aggregate_id, event.reasons)


async def _rejected(conn: asyncpg.Connection, event: EnrollmentRejected, delivery: Delivery) -> None:
    """Record a rejection that nothing else on the log records: signing's, admission's and the timer's
    (enrollment's other rejections were recorded when what caused them was judged)."""
    # On logs from before IssuanceRefused, signing refused with an EnrollmentRejected of its own.
    if event.rejected_by == "signing":
        await store.mark_rejected_by_signing(conn, event.aggregate_id, event.reasons)
    elif event.requester is not None:
        # Refused at admission: the request never reached the log; its refusal is its record.
        await store.record_request(
            conn,
            store.RequestRecord(
                request_id=event.aggregate_id,
                requester=event.requester,
                profile="",
                status="rejected",
                requested_at=event.occurred_at,
                decided_at=event.occurred_at,
                reasons=list(event.reasons),
                decided_by=NAME,
            ),
        )
    elif event.rejected_by == NAME and event.causation_id is None:
        # The approval-expiry timer's: nothing on the log caused it, so the log re-read (a rebuild)
        # leaves the request pending until this event says it expired, and then the timer need not.
        record = await store.request(conn, event.aggregate_id, lock=True)
        if record is not None and record.status == "pending":
            await store.decide(
                conn, record.request_id, "expired", list(event.reasons), decided_by=NAME, at=event.occurred_at
            )


@dataclass
class _Judging:
    """A first enrollment judged by the review, before its token is spent (see `_settled`)."""

    request: EnrollmentRequested
    record: store.RequestRecord
    verdict: domain.EnrollmentDecision
    accepted_at: datetime
    publish: bool

    def token_use(self, at: datetime) -> tuple[str, str, str, datetime]:
        """The row that spends its token (only when the review verified one)."""
        assert self.verdict.claims is not None and self.record.token_id is not None
        return (self.record.token_id, self.verdict.claims.provisioner_id, self.request.aggregate_id, at)


def _review(
    rt: Runtime,
    settings: EnrollmentSettings,
    request: EnrollmentRequested,
    csr: x509.CertificateSigningRequest | Reason,
    ctx: domain.EnrollmentContext | None,
    *,
    accepted_at: datetime,
    publish: bool,
) -> _Judging:
    """Judge a first enrollment (`domain.review_enrollment`) by its context; nothing written yet."""
    record = store.RequestRecord(
        request_id=request.aggregate_id,
        # Requester-supplied text is made printable before it reaches SQL (Postgres refuses NUL).
        requester=printable(request.requester),
        profile=printable(request.profile),
        status="rejected",
        requested_at=request.occurred_at,
        decided_at=rt.clock.now(),
        validity_days=request.validity_days,
        decided_by=NAME,
        accepted_at=accepted_at,
    )
    max_ttl = timedelta(seconds=settings.max_token_ttl_s)
    verdict = domain.review_enrollment(request, csr, ctx, at=accepted_at, max_token_ttl=max_ttl)
    if verdict.claims is not None:
        record.provisioner_id, record.token_id = verdict.claims.provisioner_id, printable(verdict.claims.token_id)
    return _Judging(request, record, verdict, accepted_at, publish)


def _settled(judging: _Judging, spent: bool, refused: Reason | None = None) -> Event:
    """The decision once the token is spent (`spent`: it had not been used before); the token is
    spent by a primary key, whatever else is wrong with the request. `refused`: why the
    certificate it replaces may not be replaced by it."""
    verdict, record = judging.verdict, judging.record
    outcome: tuple[domain.Approval, Profile] | list[Reason]
    if isinstance(verdict.outcome, list):
        outcome = verdict.outcome if refused is None else [*verdict.outcome, refused]
    elif refused is not None:
        outcome = [refused]
    else:
        assert verdict.profile is not None  # an approval is always under a profile
        outcome = (verdict.outcome, verdict.profile)
    claims = verdict.claims
    if claims is not None:
        if spent:
            record.profile_digest = verdict.profile_digest
        else:
            outcome = [domain.TOKEN_REUSED]
    return _judged(
        record,
        judging.request,
        outcome,
        accepted_at=judging.accepted_at,
        at=record.decided_at,
        provisioner_id=claims.provisioner_id if claims is not None else "",
        token_id=claims.token_id if claims is not None else "",
    )


async def _decide(
    conn: asyncpg.Connection,
    rt: Runtime,
    settings: EnrollmentSettings,
    request: EnrollmentRequested,
    *,
    accepted_at: datetime,
    publish: bool = True,
) -> list[OutboxEntry]:
    """Decide a first enrollment: read its context, judge it (`domain.review_enrollment`), spend
    its token, then record and answer the decision."""
    csr = domain.load_csr(request.csr_pem)
    wanted = _context_wanted(request, csr, accepted_at)
    ctx = _context(wanted, await store.context(conn, *wanted)) if wanted is not None else None
    judging = _review(rt, settings, request, csr, ctx, accepted_at=accepted_at, publish=publish)
    refused = None
    if request.replaces is not None:
        refused = await _replacement_refused(conn, request, csr)
        if refused is None:
            judging.record.renews_serial = request.replaces  # approved, it supersedes that certificate
    spent = judging.verdict.claims is not None and await store.spend_token(conn, *judging.token_use(rt.clock.now()))
    decision = _settled(judging, spent, refused)
    await store.record_request(conn, judging.record)
    return await _answer(conn, rt, decision, publish)


async def _replacement_refused(
    conn: asyncpg.Connection, request: EnrollmentRequested, csr: x509.CertificateSigningRequest | Reason
) -> Reason | None:
    """Why a request may not replace the certificate it names (ACME's ARI `replaces`), or None: the
    certificate must be one Certbus issued to the same requester (the identity NATS authenticated),
    not destroyed, not replaced already, and share a DNS name with the request."""
    assert request.replaces is not None
    serial = request.replaces
    cert = await store.certificate_by_serial(conn, serial)
    if cert is None:
        return Reason(code="replaces_unknown", message=f"no certificate with serial {serial} was issued here")
    if await store.requester_of(conn, cert.cert_id) != printable(request.requester):
        return Reason(
            code="replaces_not_authorised",
            message=f"certificate {serial} was obtained by another requester: only the requester that obtained a "
            "certificate may replace it",
        )
    if cert.destroyed:
        return Reason(code="replaces_destroyed", message=f"certificate {serial} was destroyed")
    if cert.superseded_by is not None or cert.renewal_in_flight is not None:
        already = cert.superseded_by or f"request {cert.renewal_in_flight}"
        return Reason(code="replaces_already_replaced", message=f"certificate {serial} is replaced already ({already})")
    if not isinstance(csr, Reason) and not set(csr_names(csr)[0]) & set(cert.names.dns):
        return Reason(
            code="replaces_no_shared_name",
            message=f"the request shares no DNS name with certificate {serial} ({', '.join(cert.names.dns)})",
        )
    return None


async def _decide_run(
    conn: asyncpg.Connection,
    rt: Runtime,
    settings: EnrollmentSettings,
    run: list[tuple[EnrollmentRequested, datetime, bool]],
) -> list[OutboxEntry] | None:
    """Decide a run of first enrollments (request, accepted at, publish) as `_decide` would one by
    one, in four statements: every context read at once, every token spent at once, every request
    recorded and every decision enqueued at once. None (nothing written) when the requests of the
    run could depend on each other, which only one by one gets right: a provisioner with an hourly
    limit (each approval counts against the next), or one token used twice."""
    if any(request.replaces is not None for request, _, _ in run):
        return None  # the certificates they replace are read (and locked) one request at a time
    csrs = [domain.load_csr(request.csr_pem) for request, _, _ in run]
    wanted = [_context_wanted(request, csr, at) for (request, at, _), csr in zip(run, csrs, strict=True)]
    read = iter(await store.contexts(conn, [w for w in wanted if w is not None]))
    contexts = [_context(w, next(read)) if w is not None else None for w in wanted]
    if any(ctx is not None and ctx.scope.max_per_hour is not None for ctx in contexts):
        return None
    judgings = [
        _review(rt, settings, request, csr, ctx, accepted_at=at, publish=publish)
        for (request, at, publish), csr, ctx in zip(run, csrs, contexts, strict=True)
    ]
    now = rt.clock.now()
    uses = [j.token_use(now) for j in judgings if j.verdict.claims is not None]
    if len({token for token, *_ in uses}) < len(uses):
        return None
    spent = await store.spend_tokens(conn, uses)
    decisions = [_settled(j, j.request.aggregate_id in spent) for j in judgings]
    await store.record_requests(conn, [j.record for j in judgings])
    answered = [d for d, j in zip(decisions, judgings, strict=True) if j.publish]
    return await enqueue_many(conn, answered, rt.root)


def _context_wanted(
    request: EnrollmentRequested, csr: x509.CertificateSigningRequest | Reason, at: datetime
) -> tuple[str, str, str | None, datetime] | None:
    """What a first enrollment's context is read by (provisioner, profile, key, time); None (nothing
    read) if the CSR cannot be parsed or the token names no provisioner: the request is refused for
    that alone."""
    if isinstance(csr, Reason):
        return None
    try:
        provisioner_id = provisioner_id_of(request.token)
    except TokenError:
        return None
    return (printable(provisioner_id), printable(request.profile), domain.key_id(csr), at)


def _context(wanted: tuple[str, str, str | None, datetime], row: store.Context) -> domain.EnrollmentContext:
    """What a first enrollment is judged by: the token's provisioner, the profile and whether the
    CSR's key is blocked."""
    spki = wanted[2]
    return domain.EnrollmentContext(
        provisioner_key_pem=row.provisioner_key_pem,
        provisioner_status=row.provisioner_status,
        profile_body=row.profile_body,
        profile_digest=row.profile_digest,
        profile_unusable=row.profile_lint_failed,
        blocked_keys=frozenset({spki}) if row.key_blocked and spki else frozenset(),
        scope=row.scope,
        issued_last_hour=row.issued_last_hour,
    )


def _judged(
    record: store.RequestRecord,
    request: EnrollmentRequested | RenewalRequested,
    outcome: tuple[domain.Approval, Profile] | list[Reason],
    *,
    accepted_at: datetime,
    at: datetime,
    provisioner_id: str = "",
    token_id: str = "",
) -> Event:
    """The decision on a judged enrollment or renewal (rejected, pending or approved), noted on `record`."""
    if isinstance(outcome, list):
        record.reasons = outcome
        return EnrollmentRejected.caused_by(request, producer=NAME, at=at, reasons=outcome, rejected_by=NAME)
    approval, profile = outcome
    record.csr_pem = request.csr_pem  # a parsed CSR: PEM text without NUL
    record.dns_names = approval.dns_names
    record.ip_addresses = list(approval.ip_addresses)
    record.emails = list(approval.emails)
    record.validity_days = approval.validity_days
    if profile.require_approval:
        record.status = "pending"
        record.decided_by = None
        record.expires_at = accepted_at + timedelta(hours=profile.approval_timeout_hours)
        return EnrollmentPending.caused_by(
            request,
            producer=NAME,
            at=at,
            profile=profile.name,
            dns_names=approval.dns_names,
            ip_addresses=list(approval.ip_addresses),
            emails=list(approval.emails),
            validity_days=approval.validity_days,
            requester=request.requester,
            expires_at=record.expires_at,
            approvals_required=profile.approvals_required,
        )
    record.status = "approved"
    return _approved(
        record, cause=request, at=at, csr_pem=request.csr_pem, provisioner_id=provisioner_id, token_id=token_id
    )


def _approved(
    record: store.RequestRecord,
    *,
    cause: Event,
    at: datetime,
    csr_pem: str,
    provisioner_id: str,
    token_id: str,
    by: str = "policy",
) -> EnrollmentApproved:
    """The approval of `record`'s request (`by`: policy, or the operators who approved it)."""
    return EnrollmentApproved.caused_by(
        cause,
        producer=NAME,
        at=at,
        csr_pem=csr_pem,
        profile=record.profile,
        profile_digest=record.profile_digest,
        dns_names=record.dns_names,
        ip_addresses=record.ip_addresses,
        emails=record.emails,
        validity_days=record.validity_days or 0,
        provisioner_id=provisioner_id,
        token_id=token_id,
        requester=record.requester,
        approved_by=by,
        supersedes=record.renews_serial,
    )


async def _renew(
    conn: asyncpg.Connection,
    rt: Runtime,
    settings: EnrollmentSettings,
    request: RenewalRequested,
    *,
    accepted_at: datetime,
    publish: bool = True,
) -> list[OutboxEntry]:
    """Decide a renewal: approve (or hold for an operator) a new key for the same names, or refuse."""
    if await store.request(conn, request.aggregate_id) is not None:
        # A request id is decided once: a retry of it (or a clash with another request) changes nothing.
        log.warning("a request with this id was already decided", extra={"request": request.aggregate_id})
        return []
    now = rt.clock.now()
    record = store.RequestRecord(
        request_id=request.aggregate_id,
        requester=printable(request.requester),
        profile=printable(request.profile or ""),
        status="rejected",
        requested_at=request.occurred_at,
        decided_at=now,
        validity_days=request.validity_days,
        # Not a token: marks the request as a renewal (never spent in token_uses).
        token_id=f"renewal:{request.aggregate_id}",
        decided_by=NAME,
        renews_serial=request.renews_serial,
    )
    # Judged at the time the log accepted the request, like a token: not refused for enrollment's delay.
    grace = timedelta(seconds=settings.renewal_grace_s)
    outcome = await _check_renewal(conn, request, record, at=accepted_at, grace=grace)
    decision = _judged(
        record,
        request,
        outcome,
        accepted_at=accepted_at,
        at=now,
        provisioner_id=record.provisioner_id or "",
        token_id=record.token_id or "",
    )
    await store.record_request(conn, record)
    return await _answer(conn, rt, decision, publish)


async def _check_renewal(
    conn: asyncpg.Connection,
    request: RenewalRequested,
    record: store.RequestRecord,
    *,
    at: datetime,
    grace: timedelta,
) -> tuple[domain.Approval, Profile] | list[Reason]:
    csr = domain.load_csr(request.csr_pem)
    if isinstance(csr, Reason):
        return [csr]
    new_key = domain.key_id(csr)
    cert = await store.certificate_by_serial(conn, request.renews_serial)
    name = printable(request.profile or (cert.profile if cert is not None else ""))
    policy = await store.renewal_policy(conn, name, new_key, cert.provisioner_id if cert is not None else None)
    profile = profile_of(policy.profile_body, policy.profile_digest or "") if policy.profile_body is not None else None
    ctx = renewal.RenewalContext(
        certificate=cert,
        profile=profile,
        profile_name=name,
        profile_unusable=policy.profile_lint_failed,
        key_certified_as=policy.key_certified_as,
        key_blocked=policy.key_blocked,
        provisioner_status=policy.provisioner_status,
    )
    ask = renewal.RenewalRequest(request.aggregate_id, request.renews_serial, request.proof, request.validity_days)
    record.profile = name
    if cert is not None:
        record.provisioner_id = cert.provisioner_id
    outcome = renewal.review_renewal(ask, csr, ctx, at, grace)
    if isinstance(outcome, list):
        return outcome
    assert profile is not None
    record.profile_digest = policy.profile_digest
    return outcome, profile


async def _still_renewable(conn: asyncpg.Connection, serial: str, at: datetime, grace: timedelta) -> list[Reason]:
    """Why a pending renewal can no longer be approved: its certificate changed while it waited."""
    cert = await store.certificate_by_serial(conn, serial)
    if cert is None:
        return [Reason(code="certificate_unknown", message=f"no certificate with serial {serial} is known")]
    problem = renewal.certificate_problem(cert, at, grace)
    return [] if problem is None else [problem]


async def _operator_decision(
    conn: asyncpg.Connection,
    rt: Runtime,
    settings: EnrollmentSettings,
    event: ApprovalGranted | ApprovalDenied,
    *,
    operator: str,
    publish: bool = True,
) -> list[OutboxEntry]:
    """An operator (`operator`: whoever signed the decision) approves or refuses a pending request
    (anything else is recorded and ignored). One refusal rejects it; it is approved once as many
    distinct operators as its profile asks (`approvals_required`) have approved it. Re-read from the
    log (`publish` False) it is judged at the time the operator decided."""
    record = await store.request(conn, event.aggregate_id, lock=True)
    if record is None or record.status != "pending":
        log.warning(
            "operator decision for a request that is not pending",
            extra={"request": event.aggregate_id, "status": record.status if record else "unknown"},
        )
        return []
    now = rt.clock.now()
    at = now if publish else event.occurred_at
    assert record.expires_at is not None
    if event.occurred_at > record.expires_at or at > record.expires_at:
        return await _expire(conn, rt, record, cause=event, at=now, publish=publish)
    if isinstance(event, ApprovalDenied):
        reason = Reason(code="operator_rejected", message=f"rejected by {operator}: {event.reason}")
        await store.decide(conn, record.request_id, "rejected", [reason], decided_by=operator, at=now)
        denied = EnrollmentRejected.caused_by(event, producer=NAME, at=now, reasons=[reason], rejected_by=operator)
        return await _answer(conn, rt, denied, publish)
    approvers = await store.approve(conn, record.request_id, operator.split("+"), event.occurred_at)
    required = await store.approvals_required(conn, record.profile)
    if len(approvers) < required:
        log.info(
            "approved by too few operators yet",
            extra={"request": record.request_id, "approvers": approvers, "required": required},
        )
        return []
    # Judge again under the profile as it is now: it may have changed while the request waited.
    reasons, digest = await _still_acceptable(conn, record)
    if not reasons and record.renews_serial is not None:
        reasons = await _still_renewable(conn, record.renews_serial, at, timedelta(seconds=settings.renewal_grace_s))
    if reasons:
        await store.decide(conn, record.request_id, "rejected", reasons, decided_by=NAME, at=now)
        rejected = EnrollmentRejected.caused_by(event, producer=NAME, at=now, reasons=reasons, rejected_by=NAME)
        return await _answer(conn, rt, rejected, publish)
    record.profile_digest = digest
    by = recorded(approvers)
    await store.decide(conn, record.request_id, "approved", [], decided_by=by, at=now, profile_digest=digest)
    approved = _approved(
        record,
        cause=event,
        at=now,
        csr_pem=record.csr_pem or "",
        provisioner_id=record.provisioner_id or "",
        token_id=record.token_id or "",
        by=by,
    )
    approved = approved.model_copy(update={"approvers": approvers})
    return await _answer(conn, rt, approved, publish)


async def _still_acceptable(conn: asyncpg.Connection, record: store.RequestRecord) -> tuple[list[Reason], str | None]:
    current = await store.current_profile(conn, record.profile)
    csr = domain.load_csr(record.csr_pem or "")
    if current is None or isinstance(csr, Reason):
        return [Reason(code="profile_unknown", message=f"profile {record.profile!r} no longer exists")], None
    body, digest, lint_failed = current
    if lint_failed:
        return [Reason(code="profile_unusable", message=f"profile {record.profile!r} failed its lint check")], None
    profile = profile_of(body, digest)
    spki = spki_sha256(csr.public_key())  # type: ignore[arg-type]
    blocked = frozenset({spki}) if await store.blocked(conn, spki) else frozenset()
    outcome = domain.judge(csr, profile, record.validity_days, blocked)
    return (outcome, None) if isinstance(outcome, list) else ([], digest)


async def _expire(
    conn: asyncpg.Connection,
    rt: Runtime,
    record: store.RequestRecord,
    *,
    cause: Event | None,
    at: datetime,
    publish: bool = True,
) -> list[OutboxEntry]:
    """Reject a pending request whose approval window closed (`cause`: the late operator decision, if any)."""
    assert record.expires_at is not None
    reason = Reason(
        code="approval_expired",
        message=f"no operator approved the request before {record.expires_at:%Y-%m-%d %H:%M} UTC: request again",
    )
    await store.decide(conn, record.request_id, "expired", [reason], decided_by=NAME, at=rt.clock.now())
    rejected = (
        EnrollmentRejected.first(record.request_id, producer=NAME, at=at, reasons=[reason], rejected_by=NAME)
        if cause is None
        else EnrollmentRejected.caused_by(cause, producer=NAME, at=at, reasons=[reason], rejected_by=NAME)
    )
    return await _answer(conn, rt, rejected, publish)


async def _answer(conn: asyncpg.Connection, rt: Runtime, decision: Event, publish: bool) -> list[OutboxEntry]:
    """Put a decision in the outbox; unless the log already has the answer (the tables are being
    rebuilt from it), in which case the decision only rebuilt them."""
    if not publish:
        log.debug("already answered on the log", extra={"request": decision.aggregate_id})
        return []
    return [await enqueue(conn, decision, rt.root)]


async def expire_overdue(rt: Runtime, position: LogPosition, batch: int = 100) -> int:
    """Reject pending requests whose approval window closed; returns how many. Not before the
    consumer has caught up with the log: a request pending in rebuilt tables may have been decided
    later on the log."""
    if not await position.caught_up():
        return 0
    expired = 0
    while True:
        async with rt.pool.acquire() as conn, conn.transaction():
            overdue = await store.overdue_pending(conn, rt.clock.now(), batch)
            entries = []
            for record in overdue:
                entries.extend(await _expire(conn, rt, record, cause=None, at=rt.clock.now()))
        await rt.publish_pending(entries)
        expired += len(overdue)
        if len(overdue) < batch:
            return expired
