"""The Certbus client SDK for requesting services, operators and auditors (async).

async with CertbusClient() as cb:
    issued = await cb.enroll(csr_pem, token)
    print(issued.serial, (await cb.status(issued.serial)).status)
    renewed = await cb.renew(issued.cert_pem, key)  # a new key, proven by the current one
    await cb.attest_key_destroyed(issued.serial, key, "me")  # then destroy the old key file
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Container
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import nats
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import BaseModel

from shared.base.settings import CommonSettings
from shared.client.errors import ACME
from shared.client.errors import SERVICES as SERVICES  # these names are the SDK's, kept light for the CLI
from shared.client.errors import CertbusError as CertbusError
from shared.client.errors import Pending as Pending
from shared.client.errors import Rejected as Rejected
from shared.client.errors import Throttled as Throttled
from shared.client.errors import UnknownRequest as UnknownRequest
from shared.client.errors import Unreachable as Unreachable
from shared.client.readiness import judge_readiness as judge_readiness
from shared.client.readiness import readyz_report
from shared.contract.binding import bind
from shared.contract.events import (
    ApprovalDenied,
    ApprovalGranted,
    CaKeyDestroyed,
    CaRetired,
    CertificateDestroyed,
    CertificateIssued,
    CertificateRenewalDue,
    CertificateRevoked,
    DestructionOrdered,
    EnrollmentPending,
    EnrollmentRejected,
    EnrollmentRequested,
    Event,
    IssuanceRefused,
    KeyDestroyed,
    OperatorCommand,
    ProfileApplied,
    ProfileLinted,
    RenewalRequested,
    RevocationOrdered,
    RevocationRejected,
    RevocationRequested,
    event_from,
    revocation_message,
    utcnow,
)
from shared.contract.ingress import KIND_OF, ingress_subject
from shared.contract.profiles import Profile
from shared.contract.queries import (
    CheckAnswer,
    CrlAnswer,
    CrlQuery,
    Failure,
    FindingsAnswer,
    FindingsQuery,
    HistoryAnswer,
    HistoryQuery,
    IssuedAnswer,
    IssuedQuery,
    IssuingRequestAnswer,
    IssuingRequestQuery,
    LintCoverage,
    ProfilesAnswer,
    ProvisionersAnswer,
    ReplayAnswer,
    ReplayProgress,
    ReplayQuery,
    ReportAnswer,
    ReportQuery,
    RequestDetail,
    RequestQuery,
    RequestsAnswer,
    RequestsQuery,
    RetireCheckAnswer,
    RetireCheckQuery,
    RevocationsAnswer,
    RevocationsQuery,
    StatusAnswer,
    StatusQuery,
    ValidateAnswer,
    ValidateQuery,
    VerifyAnswer,
)
from shared.contract.reasons import Reason, printable
from shared.pki.crypto import PrivateKey, normalise_serial, sign_message
from shared.pki.holder import (
    enrollment_request,
    key_destroyed_attestation,
    load_private_key,
    new_key_like,
    renewal_csr,
    renewal_request,
)
from shared.trust import operators

log = logging.getLogger("certbus.client")
BACKLOG_FULL = 10077  # JetStream: "maximum messages per subject exceeded" (discard new per subject)
A = TypeVar("A", bound=BaseModel)
# A quick query's first attempt: a replica answers one in milliseconds when it lives; one killed
# while it held the query never answers, and the query is asked again of another replica.
QUERY_FIRST_ATTEMPT_S = 1.5
NO_RESPONDERS = "503"  # the status the server answers a request with when nobody listens on its subject


@dataclass(frozen=True)
class Renewed:
    """A renewal's outcome: the new certificate and its new private key (write the key 0600)."""

    issued: CertificateIssued
    key: PrivateKey = field(repr=False)

    @property
    def request_id(self) -> str:
        """The renewal's request id, which is the new certificate's id."""
        return self.issued.aggregate_id


LifecycleEvent = CertificateRenewalDue | CertificateRevoked


async def _quiet(exc: Exception) -> None:
    """nats-py prints connection errors with tracebacks by default; the client raises instead."""
    log.debug("nats client error", extra={"error": repr(exc)})


class CertbusClient:
    """One NATS connection to Certbus: publish requests, wait for outcomes, run queries."""

    def __init__(self, settings: CommonSettings | None = None, requester: str = "cli") -> None:
        self.settings = settings or CommonSettings()
        self.requester = requester
        self._nc: Client | None = None
        self._waiting: set[asyncio.Future[Event]] = set()  # outcomes awaited now

    async def __aenter__(self) -> CertbusClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 3.0) -> None:
        """Connect to NATS (raises Unreachable)."""
        s = self.settings
        try:
            self._nc = await nats.connect(
                s.nats_servers,
                connect_timeout=timeout,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # 0 would mean "retry forever" in nats-py
                error_cb=_quiet,
                closed_cb=self._lost,
                name=f"certbus-client-{self.identity}",
                **s.connect_options(),
            )
        except (OSError, NatsTimeout, nats.errors.NoServersError) as exc:
            raise Unreachable(f"cannot reach NATS at {s.nats_url}: {exc}") from exc

    async def _lost(self) -> None:
        """The connection closed (the server went away; it is not re-established): every call
        waiting for an outcome fails now with Unreachable instead of at its timeout. A request
        sent may still be decided: send the same one again (`submit`) or `follow` it."""
        for outcome in list(self._waiting):
            if not outcome.done():
                outcome.set_exception(Unreachable("the connection to NATS was lost while waiting for an outcome"))

    async def close(self) -> None:
        """Drain and close the connection."""
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.drain()

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up (it is not re-established: connect again)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def nc(self) -> Client:
        """The NATS connection."""
        if self._nc is None:
            raise CertbusError("not connected: use `async with CertbusClient()`")
        return self._nc

    def _subject(self, service: str, query: str) -> str:
        return f"{self.settings.query_root}.{service}.{query}"

    async def _ask(
        self,
        service: str,
        query: str,
        body: BaseModel | None,
        answer: type[A],
        timeout: float = 5.0,
        *,
        once: bool = False,
    ) -> A:
        """Ask `service` a query and read its answer within `timeout`. A query is answered by one
        of the service's replicas; one killed while it held the query never answers, so a query
        not answered within QUERY_FIRST_ATTEMPT_S is sent again (then after twice as long each
        time) and reaches a live replica, while an answer to any earlier copy is still taken (a
        slow answer is not thrown away). `once` for a long query that must not run twice (a
        replay, a full check): sent once, for the whole timeout."""
        payload = body.model_dump_json().encode() if body is not None else b""
        subject = self._subject(service, query)
        unreachable = Unreachable(f"the {service} service did not answer {query!r}")
        first_s = timeout if once else min(QUERY_FIRST_ATTEMPT_S, timeout)
        reply = await self._hedged(subject, payload, timeout, first_s, unreachable)
        data = json.loads(reply.data)
        if isinstance(data, dict) and "error" in data and set(data) <= {"error", "code"}:
            failure = Failure(**data)
            raise CertbusError(failure.error, failure.code)
        return answer.model_validate(data)

    def signed(self, command: OperatorCommand) -> OperatorCommand:
        """`command` signed with this client's operator key, as the operator this client is."""
        key_file = self.settings.operator_key_file
        if key_file is None:
            raise CertbusError(
                "an operator command must be signed by a registered operator's key: set "
                "CERTBUS_OPERATOR_KEY_FILE (or keep it in $CERTBUS_HOME/operators/<name>.key.pem)"
            )
        return operators.sign(command, self.identity, load_private_key(key_file.read_bytes()))

    @property
    def identity(self) -> str:
        """Who this client is on the bus: its configured identity (its NATS user), else `requester`."""
        return self.settings.who or self.requester

    async def publish(self, event: Event, timeout: float = 5.0) -> int:
        """Send an event with `Nats-Msg-Id` (its event id, so a retry is deduplicated); returns its
        stream sequence. A request (enrollment, renewal, revocation, key destroyed) goes to the
        ingress stream under this client's identity, for its service to admit onto the log; an
        operator's command goes onto the log itself. Raises Throttled when this identity's backlog
        of requests waiting for admission is full."""
        if isinstance(event, OperatorCommand) and not event.signatures:
            event = self.signed(event)
        kind = KIND_OF.get(type(event))
        if kind is not None:
            subject, stream = (
                ingress_subject(self.settings.ingress_root, self.identity, kind),
                self.settings.ingress_stream,
            )
        else:
            subject, stream = event.subject(self.settings.subject_root), self.settings.stream
        try:
            ack = await self.nc.jetstream().publish(
                subject,
                event.model_dump_json().encode(),
                stream=stream,
                headers={"Nats-Msg-Id": str(event.event_id)},
                timeout=timeout,
            )
        except (NatsTimeout, NoRespondersError) as exc:
            raise Unreachable("the Certbus stream did not acknowledge the request") from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == BACKLOG_FULL:
                raise Throttled(
                    f"{self.identity} already has {self.settings.ingress_backlog} requests of this kind waiting "
                    "for admission: wait for their outcomes, then send again",
                    "backlog_full",
                ) from None
            raise CertbusError(f"the Certbus stream refused the event: {exc.description}") from exc
        return ack.seq

    @contextlib.asynccontextmanager
    async def _outcomes(
        self, subjects: list[str], accept: Callable[[Event], bool] = lambda _: True
    ) -> AsyncIterator[asyncio.Future[Event]]:
        """While open, subscribed to `subjects`: the future gets the first accepted outcome."""
        outcome: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg) -> None:
            if outcome.done():
                return
            event = self._event(msg)
            if event is not None and accept(event):
                outcome.set_result(event)

        subs = [await self.nc.subscribe(s, cb=on_msg) for s in subjects]
        self._waiting.add(outcome)
        try:
            yield outcome
        finally:
            self._waiting.discard(outcome)
            if not outcome.done():
                outcome.cancel()
            elif not outcome.cancelled():
                outcome.exception()  # retrieved, so asyncio does not log it as lost
            for sub in subs:
                with contextlib.suppress(nats.errors.ConnectionClosedError):
                    await sub.unsubscribe()

    def _event(self, msg: Msg) -> Event | None:
        """The event a message on the log is, or None (logged) if it is not a valid event on its own
        subject: a junk message on an outcome subject never fails a waiting call."""
        try:
            return event_from(bind(msg.subject, self.settings.subject_root, msg.data))
        except ValueError as exc:  # Unbound and pydantic's ValidationError
            log.warning(
                "ignored a message that is not a valid event on its subject",
                extra={"subject": printable(msg.subject[:200]), "error": printable(str(exc)[:300])},
            )
            return None

    @staticmethod
    async def _within(outcome: asyncio.Future[Event], timeout: float, request_id: str) -> Event:
        try:
            return await asyncio.wait_for(asyncio.shield(outcome), timeout)
        except TimeoutError as exc:
            raise Unreachable(f"no outcome for request {request_id} within {timeout:.0f} s") from exc

    async def _await_outcome(
        self, subjects: list[str], publish: Event, timeout: float, accept: Callable[[Event], bool] = lambda _: True
    ) -> Event:
        """Subscribe to the outcome subjects, publish the request, wait for the first accepted outcome."""
        async with self._outcomes(subjects, accept) as outcome:
            await self.publish(publish)
            return await self._within(outcome, timeout, publish.aggregate_id)

    async def enroll(
        self,
        csr_pem: str,
        token: str,
        profile: str = "tls-server",
        timeout: float = 30.0,
        wait_visible: bool = True,
        validity_days: int | None = None,
        wait_for_approval: bool = False,
    ) -> CertificateIssued:
        """Request a certificate for a CSR with a one-time token; returns the issued event.

        Raises Rejected with the reasons, or Pending if the profile needs an operator's approval
        (unless `wait_for_approval`, which waits for the operator up to `timeout`). With
        `wait_visible`, it returns once validation answers for the new serial too.
        """
        request = enrollment_request(csr_pem, token, self.requester, profile, validity_days)
        return await self._issued(request, request, timeout, wait_visible, wait_for_approval)

    async def _issued(
        self, request_id_of: Event, publish: Event, timeout: float, wait_visible: bool, wait_for_approval: bool
    ) -> CertificateIssued:
        """Publish `publish` and wait for the certificate of request `request_id_of.aggregate_id`."""
        request_id = request_id_of.aggregate_id
        result = await self._await_outcome(
            self._outcome_subjects(request_id),
            publish,
            timeout,
            accept=lambda e: not (wait_for_approval and isinstance(e, EnrollmentPending)),
        )
        return await self._certificate(result, request_id, timeout, wait_visible)

    def _outcome_subjects(self, request_id: str) -> list[str]:
        root = self.settings.subject_root
        return [f"{root}.cert.{request_id}.{verb}" for verb in ("issued", "rejected", "refused", "pending")]

    async def _certificate(
        self, result: Event, request_id: str, timeout: float, wait_visible: bool
    ) -> CertificateIssued:
        """The certificate an outcome gives, or the Rejected / Pending it means."""
        if isinstance(result, EnrollmentRejected | IssuanceRefused):
            raise Rejected(result.reasons)
        if isinstance(result, EnrollmentPending):
            raise Pending(request_id, result.expires_at)
        if not isinstance(result, CertificateIssued):
            raise CertbusError(f"unexpected outcome {result.event_type} for request {request_id}")
        if wait_visible:
            await self._until_validation_says(result.serial, {"good", "revoked"}, timeout)
        return result

    async def renew(
        self,
        cert_pem: str,
        current_key: PrivateKey,
        new_key: PrivateKey | None = None,
        profile: str | None = None,
        validity_days: int | None = None,
        request_id: str | None = None,
        timeout: float = 30.0,
        wait_visible: bool = True,
    ) -> Renewed:
        """Renew a certificate with a new key (default: a new one of the current key's type), proving
        possession of the current key; no token is needed. Returns the new certificate and key.

        Raises Rejected with the reasons (e.g. `certificate_revoked`), Pending, or Unreachable. To
        retry after Unreachable or Pending, pass the same `new_key` and `request_id`
        (`Pending.request_id`): enrollment is asked first, so the request is never sent twice.
        """
        new_key = new_key or new_key_like(current_key)
        csr_pem = renewal_csr(cert_pem, new_key)
        request = renewal_request(cert_pem, current_key, csr_pem, self.requester, profile, validity_days, request_id)
        if request_id is None:
            issued = await self._issued(request, request, timeout, wait_visible, wait_for_approval=False)
        else:
            issued = await self.submit(request, timeout, wait_visible)
        return Renewed(issued, new_key)

    async def submit(
        self, request: EnrollmentRequested | RenewalRequested, timeout: float = 30.0, wait_visible: bool = True
    ) -> CertificateIssued:
        """Send a request, or follow it if enrollment already knows its id: a retry never sends it twice.

        Keep the request event (its id, event id and CSR) and call again with the SAME event after
        Unreachable; if enrollment has not recorded it, it is published again with the same
        `Nats-Msg-Id`, so the stream drops a copy it already holds. Raises like `enroll`.
        """
        return await self._follow(request.aggregate_id, request, timeout, wait_visible)

    async def follow(self, request_id: str, timeout: float = 30.0, wait_visible: bool = True) -> CertificateIssued:
        """What became of a request sent before: its certificate, or Rejected / Pending; waits up to
        `timeout` for an outcome still to come (then Unreachable). UnknownRequest if enrollment has
        no such request."""
        return await self._follow(request_id, None, timeout, wait_visible)

    async def _follow(
        self, request_id: str, resend: Event | None, timeout: float, wait_visible: bool
    ) -> CertificateIssued:
        async with self._outcomes(self._outcome_subjects(request_id)) as outcome:
            try:
                detail = await self.request(request_id)
            except UnknownRequest:
                if resend is None:
                    raise
                await self.publish(resend)
            else:
                if detail.status == "issued" and detail.serial is not None:
                    issued = await self._issued_event(request_id, detail.serial)
                    return await self._certificate(issued, request_id, timeout, wait_visible)
                if detail.status == "rejected":
                    raise Rejected([Reason(**r) for r in detail.reasons])
                if detail.status == "pending":
                    raise Pending(request_id, detail.expires_at or utcnow())
                if detail.status == "expired":
                    message = f"request {request_id} waited for an operator's approval and expired: send a new one"
                    raise Rejected([Reason(code="request_expired", message=message)])
            result = await self._within(outcome, timeout, request_id)
            return await self._certificate(result, request_id, timeout, wait_visible)

    async def _issued_event(self, request_id: str, serial: str) -> CertificateIssued:
        """The issued event of an issued request, from the audit archive."""
        issued = await self.issued_certificate(request_id)
        if issued is None:
            raise Unreachable(f"request {request_id} is issued (serial {serial}) but audit has not archived it yet")
        return issued

    async def issued_certificate(self, request_id: str) -> CertificateIssued | None:
        """The certificate issued for request `request_id` (None if audit has archived none).

        What a requester may read of the archive: its own request's certificate, not a whole history."""
        answer = await self._ask("audit", "issued", IssuedQuery(request_id=request_id), IssuedAnswer)
        return CertificateIssued.model_validate(answer.event) if answer.event is not None else None

    async def approve(
        self, request_id: str, operator: str, comment: str = "", timeout: float = 30.0
    ) -> CertificateIssued:
        """Approve a pending request as `operator`; returns the certificate issued for it."""
        await self._pending(request_id)
        grant = ApprovalGranted.first(request_id, producer="operator", at=utcnow(), operator=operator, comment=comment)
        return await self._issued(grant, grant, timeout, wait_visible=True, wait_for_approval=False)

    async def reject(self, request_id: str, operator: str, reason: str, timeout: float = 15.0) -> EnrollmentRejected:
        """Refuse a pending request as `operator`, saying why."""
        await self._pending(request_id)
        deny = ApprovalDenied.first(request_id, producer="operator", at=utcnow(), operator=operator, reason=reason)
        subject = f"{self.settings.subject_root}.cert.{request_id}.rejected"
        result = await self._await_outcome([subject], deny, timeout)
        assert isinstance(result, EnrollmentRejected)
        return result

    async def _pending(self, request_id: str) -> None:
        """Raise unless the request waits for an operator (deciding anything else has no effect)."""
        detail = await self.request(request_id)
        if detail.status != "pending":
            raise CertbusError(f"request {request_id} is {detail.status}, not pending")

    async def apply_profile(self, profile: Profile, applied_by: str, timeout: float = 30.0) -> ProfileLinted:
        """Apply a profile; returns signing's lint verdict on its templates."""
        digest = profile.digest()
        applied = ProfileApplied.first(
            profile.name,
            producer="operator",
            at=utcnow(),
            correlation_id=f"profile-{profile.name}-{digest[:12]}",
            profile=profile,
            digest=digest,
            applied_by=applied_by,
        )
        subject = f"{self.settings.subject_root}.profile.{profile.name}.linted"
        result = await self._await_outcome(
            [subject], applied, timeout, accept=lambda e: isinstance(e, ProfileLinted) and e.digest == digest
        )
        assert isinstance(result, ProfileLinted)
        return result

    async def requests(self, status: str | None = None, limit: int = 100) -> RequestsAnswer:
        """Enrollment requests, newest first."""
        return await self._ask("enrollment", "requests", RequestsQuery(status=status, limit=limit), RequestsAnswer)

    async def request(self, request_id: str) -> RequestDetail:
        """One enrollment request's whole state (UnknownRequest if enrollment has none by that id)."""
        try:
            return await self._ask("enrollment", "request", RequestQuery(request_id=request_id), RequestDetail)
        except Unreachable:
            raise
        except CertbusError as exc:
            if exc.code == "request_unknown":
                raise UnknownRequest(str(exc), exc.code) from None
            raise

    async def profiles(self) -> ProfilesAnswer:
        """Every current profile and its lint verdict."""
        return await self._ask("enrollment", "profiles", None, ProfilesAnswer)

    async def provisioners(self) -> ProvisionersAnswer:
        """Every provisioner and its status."""
        return await self._ask("enrollment", "provisioners", None, ProvisionersAnswer)

    async def revoke(
        self,
        serial: str,
        reason: str,
        timeout: float = 15.0,
        *,
        key: PrivateKey | None = None,
        invalidity_date: datetime | None = None,
        proof_jws: str | None = None,
    ) -> CertificateRevoked:
        """Ask for a certificate to be revoked; returns the revoked event or raises Rejected.

        `key` is the certificate's private key: it signs the request (this request id, serial and
        reason), which is how revocation knows the holder asks. `proof_jws` is the other proof a
        holder gives: an ACME revokeCert request signed with the certificate's key (compact JWS).
        Without either, only the requester that obtained the certificate may ask, and not for
        keyCompromise or cACompromise (`not_authorised` otherwise); an operator uses `revoke_as_operator`.
        """
        request_id = str(uuid.uuid4())
        serial = normalise_serial(serial)
        proof = None
        if key is not None:
            proof = base64.b64encode(sign_message(key, revocation_message(request_id, serial, reason))).decode()
        request = RevocationRequested.first(
            request_id,
            producer="requester",
            at=utcnow(),
            serial=serial,
            reason=reason,
            requested_by=self.requester,
            proof=proof,
            invalidity_date=invalidity_date,
            proof_jws=proof_jws,
        )
        return await self._revocation(request, timeout)

    async def revoke_as_operator(
        self,
        serial: str,
        reason: str,
        operator: str,
        timeout: float = 15.0,
        *,
        invalidity_date: datetime | None = None,
    ) -> CertificateRevoked:
        """Order, as `operator` (recorded on the revocation), a certificate revoked; raises Rejected if refused.

        NATS lets only the operator user publish orders: connect with the operator's credentials.
        """
        request_id = str(uuid.uuid4())
        order = RevocationOrdered.first(
            request_id,
            producer="operator",
            at=utcnow(),
            serial=normalise_serial(serial),
            reason=reason,
            operator=operator,
            invalidity_date=invalidity_date,
        )
        return await self._revocation(order, timeout)

    async def _revocation(self, request: RevocationRequested | RevocationOrdered, timeout: float) -> CertificateRevoked:
        """Publish a revocation request or order and wait until validation shows the certificate revoked."""
        request_id, root = request.aggregate_id, self.settings.subject_root
        # Revocations are public (every CRL lists them): watch them all, keep the one that answers us
        # (a keyCompromise revocation also revokes the key's other certificates under the same request id).
        result = await self._await_outcome(
            [f"{root}.revoke.{request_id}.rejected", f"{root}.cert.*.revoked"],
            request,
            timeout,
            accept=lambda e: (
                not isinstance(e, CertificateRevoked)
                or (e.revocation_request_id == request_id and e.serial == request.serial)
            ),
        )
        if isinstance(result, RevocationRejected):
            raise Rejected([result.reason])
        assert isinstance(result, CertificateRevoked)
        await self._until_validation_says(result.serial, {"revoked", "destroyed"}, timeout)
        return result

    async def _until_validation_says(self, serial: str, statuses: set[str], timeout: float) -> None:
        """Wait until validation's read model shows `serial` in one of `statuses` (read your writes)."""
        deadline = asyncio.get_running_loop().time() + timeout
        delay = 0.005
        while (await self.status(serial)).status not in statuses:
            if asyncio.get_running_loop().time() > deadline:
                raise Unreachable(f"validation does not show {serial} as {'/'.join(statuses)} yet")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def revocations(
        self, since: datetime | None = None, issuer_id: str | None = None
    ) -> AsyncIterator[CertificateRevoked]:
        """Yield revocations as they happen, in log order (optionally only one issuer's).

        A subscription to `<root>.cert.*.revoked` (what the log republishes, which any requester may
        hear). With `since`, the revocations from that time on are first read from audit's archive
        (its `revocations` query), then the live ones, so nothing is missed; whenever a live one
        arrives, what the archive holds before it is read first. Without `since`, revocations while
        disconnected are missed: check `status` after a reconnect.
        """
        subject = CertificateRevoked.filter(self.settings.subject_root)
        sub = await self.nc.subscribe(subject)
        last = 0  # the stream sequence of the last revocation yielded

        async def archived_until(seq: int | None) -> AsyncIterator[CertificateRevoked]:
            """The archive's revocations after `last`, and before stream sequence `seq` if given
            (then waiting, up to 10 s, for audit to have archived everything before it)."""
            nonlocal last
            waited = 0.0
            while True:
                page = await self._ask(
                    "audit", "revocations", RevocationsQuery(after=last, since=since), RevocationsAnswer
                )
                for at, data in page.events:
                    if seq is not None and at >= seq:
                        return
                    last = at
                    revoked = CertificateRevoked.model_validate(data)
                    if issuer_id is None or revoked.issuer_id == issuer_id:
                        yield revoked
                if len(page.events) == RevocationsQuery().limit:
                    continue  # more pages
                if seq is None or page.through >= seq - 1:
                    return
                if waited >= 10.0:
                    raise Unreachable(f"audit has not archived the log up to sequence {seq - 1} yet")
                await asyncio.sleep(0.2)
                waited += 0.2

        try:
            if since is not None:
                async for revoked in archived_until(None):
                    yield revoked
            async for msg in sub.messages:
                seq = int((msg.headers or {}).get("Nats-Sequence", 0))
                if since is not None and seq > last + 1:
                    async for revoked in archived_until(seq):
                        yield revoked
                if seq and seq <= last:
                    continue  # read from the archive already
                event = self._event(msg)
                if isinstance(event, CertificateRevoked) and (issuer_id is None or event.issuer_id == issuer_id):
                    last = max(last, seq)
                    yield event
        finally:
            await sub.unsubscribe()

    async def lifecycle(self, serials: Container[str]) -> AsyncIterator[LifecycleEvent]:
        """Yield renewal-due and revocation events of the certificates in `serials` as they happen.

        `serials` is consulted on each event, so a set the caller updates (after a renewal) works.
        Plain subscriptions to `<root>.cert.*.renewal_due` and `<root>.cert.*.revoked` (what a
        requester may read): events while disconnected are missed, so check `status` after
        reconnecting. The iterator ends when the connection closes.
        """
        root = self.settings.subject_root
        queue: asyncio.Queue[Msg | None] = asyncio.Queue()

        async def pump(subject: str) -> None:
            try:
                sub = await self.nc.subscribe(subject)
                async for msg in sub.messages:
                    queue.put_nowait(msg)
            finally:
                queue.put_nowait(None)

        subjects = (CertificateRenewalDue.filter(root), CertificateRevoked.filter(root))
        pumps = [asyncio.create_task(pump(subject)) for subject in subjects]
        try:
            while (msg := await queue.get()) is not None:
                event = self._event(msg)
                if isinstance(event, LifecycleEvent) and event.serial in serials:
                    yield event
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def attest_key_destroyed(
        self, serial: str, key: PrivateKey, destroyed_by: str, destroyed_at: datetime | None = None
    ) -> KeyDestroyed:
        """Publish the key's own signed attestation that it is being destroyed; call it BEFORE
        destroying the key file (`shared.base.files.destroy_file`), while the key can still sign."""
        event = key_destroyed_attestation(serial, key, destroyed_by, destroyed_at)
        await self.publish(event)
        return event

    async def status(self, serial: str) -> StatusAnswer:
        """What validation knows of a serial."""
        return await self._ask("validation", "status", StatusQuery(serial=serial), StatusAnswer)

    async def validate(self, cert_pem: str) -> ValidateAnswer:
        """Validate a certificate: chain, time, revocation."""
        return await self._ask("validation", "validate", ValidateQuery(cert_pem=cert_pem), ValidateAnswer)

    async def crl(self, ca_id: str | None = None, *, shard: int | None = None) -> CrlAnswer:
        """The newest CRL of an issuer, or of one of its shards (a sharded issuer's CRLs are
        per shard: `crl_of_certificate` says which one lists a given certificate)."""
        return await self._ask("validation", "crl", CrlQuery(ca_id=ca_id, shard=shard), CrlAnswer)

    async def crl_for(self, cert_pem: str | bytes) -> CrlAnswer:
        """The newest CRL that would list this certificate (its issuer's shard named in its CRL
        distribution point)."""
        ca_id, shard = crl_of_certificate(cert_pem)
        return await self.crl(ca_id, shard=shard)

    async def history(self, serial: str) -> HistoryAnswer:
        """Every archived event of a certificate, in log order."""
        return await self._ask("audit", "history", HistoryQuery(serial=serial), HistoryAnswer)

    async def findings(self, limit: int = 100) -> FindingsAnswer:
        """Lint findings (pre-release refusals, post-issuance pkilint errors) and profile lint verdicts."""
        return await self._ask("audit", "findings", FindingsQuery(limit=limit), FindingsAnswer)

    async def lint_coverage(self) -> LintCoverage:
        """Post-issuance pkilint's coverage: issued, linted clean / failing, passed over, waiting."""
        return await self._ask("audit", "lint", None, LintCoverage)

    async def _hedged(
        self, subject: str, payload: bytes, timeout: float, first_s: float, unreachable: Unreachable
    ) -> Msg:
        """Send a query on `subject`, again each time an attempt goes unanswered (the first after
        `first_s`, each later one twice as long), all to one inbox, and return the first answer to
        any of them (Unreachable at `timeout`, or at once if no replica listens: the server's
        no-responders status)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt_s, send_at = first_s, loop.time()
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            while True:
                if loop.time() >= send_at:
                    await self.nc.publish(subject, payload, reply=inbox)
                    send_at, attempt_s = loop.time() + attempt_s, attempt_s * 2
                wait = min(send_at, deadline) - loop.time()
                try:
                    msg = await sub.next_msg(timeout=max(wait, 0.001))
                except NatsTimeout:
                    if loop.time() >= deadline:
                        raise unreachable from None
                    continue
                if not msg.data and msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
                    raise unreachable
                return msg
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def check(self, timeout: float = 600.0) -> CheckAnswer:
        """Run audit's consistency checks over the whole archive."""
        return await self._ask("audit", "check", None, CheckAnswer, timeout=timeout, once=True)

    async def report(
        self, expiring_days: int = 30, limit: int = 1000, now: datetime | None = None, timeout: float = 600.0
    ) -> ReportAnswer:
        """The certificate inventory from audit's archive: counts by issuer, profile, state and requester,
        revocations by reason, issuance per day, and the (first `limit`) certificates expiring within
        `expiring_days`; `now` (default: audit's clock) judges expiry."""
        query = ReportQuery(expiring_days=expiring_days, limit=limit, now=now)
        return await self._ask("audit", "report", query, ReportAnswer, timeout=timeout, once=True)

    async def verify(self, timeout: float = 600.0) -> VerifyAnswer:
        """Ask audit to verify its archive against the stream and the signed checkpoints."""
        return await self._ask("audit", "verify", None, VerifyAnswer, timeout=timeout, once=True)

    async def replay(
        self,
        timeout: float = 3600.0,
        on_progress: Callable[[ReplayProgress], None] | None = None,
        verify: bool = False,
    ) -> ReplayAnswer:
        """Ask audit to rebuild its archive from the stream and compare (and, with `verify`, to verify
        the result); `on_progress` is called about three times a second with how far it is."""
        query = ReplayQuery(verify=verify)
        task = asyncio.create_task(self._ask("audit", "replay", query, ReplayAnswer, timeout=timeout, once=True))
        try:
            while on_progress is not None and not task.done():
                await asyncio.wait({task}, timeout=0.3)
                if not task.done():
                    on_progress(await self._ask("audit", "replay_progress", None, ReplayProgress))
            return await task
        finally:
            task.cancel()

    async def destroy(
        self, serial: str, operator: str, reason: str = "", timeout: float = 15.0
    ) -> CertificateDestroyed:
        """Order, as `operator`, a certificate retired for good (revoked first if it is not yet); returns
        its `CertificateDestroyed` once validation shows it destroyed, or raises Rejected
        (`certificate_unknown`, `certificate_destroyed`). NATS lets only the operator user publish the order."""
        request_id, root = str(uuid.uuid4()), self.settings.subject_root
        order = DestructionOrdered.first(
            request_id,
            producer="operator",
            at=utcnow(),
            serial=normalise_serial(serial),
            operator=operator,
            reason=reason,
        )
        result = await self._await_outcome(
            [f"{root}.revoke.{request_id}.rejected", CertificateDestroyed.filter(root)],
            order,
            timeout,
            accept=lambda e: not isinstance(e, CertificateDestroyed) or e.destruction_request_id == request_id,
        )
        if isinstance(result, RevocationRejected):
            raise Rejected([result.reason])
        assert isinstance(result, CertificateDestroyed)
        await self._until_validation_says(result.serial, {"destroyed"}, timeout)
        return result

    async def retire_ca(self, ca_id: str, reason: str, operator: str, timeout: float = 60.0) -> CaKeyDestroyed:
        """Retire a CA as `operator`: signing publishes its final CRL, then destroys its key; returns
        the CaKeyDestroyed event. Raises Rejected (codes ca_unknown, ca_already_retired, ca_not_active,
        ca_has_live_issuing_cas, ca_no_replacement) before publishing anything if signing refuses."""
        check = await self._ask("signing", "retire_check", RetireCheckQuery(ca_id=ca_id), RetireCheckAnswer)
        if check.reasons:
            raise Rejected(check.reasons)
        retired = CaRetired.first(
            ca_id,
            producer="operator",
            at=utcnow(),
            correlation_id=f"retire-{uuid.uuid4()}",
            ca_id=ca_id,
            reason=reason,
            retired_by=operator,
        )
        subject = f"{self.settings.subject_root}.ca.{ca_id}.key_destroyed"
        destroyed = await self._await_outcome([subject], retired, timeout)
        assert isinstance(destroyed, CaKeyDestroyed)
        return destroyed

    async def issuing_request(self) -> IssuingRequestAnswer:
        """Under an offline root: the issuing CA key waiting for the ceremony to certify it (its
        CSR), and the serials the root's next CRL must name (`certbus ca csr`)."""
        return await self._ask("signing", "issuing_request", IssuingRequestQuery(), IssuingRequestAnswer)

    async def health(self, service: str, timeout: float = 2.0) -> dict[str, Any]:
        """One service's health answer, from whichever replica answers: its own report, and every
        replica's latest under `replicas` (raises Unreachable if none answers)."""
        try:
            reply = await self.nc.request(self._subject(service, "health"), b"", timeout=timeout)
        except (NatsTimeout, NoRespondersError) as exc:
            raise Unreachable(f"{service} did not answer") from exc
        report: dict[str, Any] = json.loads(reply.data)
        return report

    async def readiness(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """Every service's health answer, each judged by `judge_readiness` with its replicas: the
        system can do its job only if every service is `ready` (what is not is listed under
        `missing`; what only some of its replicas lack, under `warnings`)."""

        async def one(name: str) -> dict[str, Any]:
            try:
                report = await self.health(name, timeout)
            except Unreachable:
                return {"service": name, "status": "down"}
            if "status" not in report:  # a Failure: the service could not answer its health query
                failed = f"its health query failed: {report.get('error', report)}"
                return {"service": name, "status": "failed", "missing": [failed]}
            return report

        asked = [one(s) for s in SERVICES]
        if self.settings.acme_readyz_url:  # ACME is deployed: it answers over HTTP, not on the bus
            asked.append(asyncio.to_thread(ask_readyz, ACME, self.settings.acme_readyz_url, timeout))
        return judge_readiness(list(await asyncio.gather(*asked)))


def ask_readyz(service: str, url: str, timeout: float) -> dict[str, Any]:
    """A service's health answer from its `/readyz` over HTTP (blocking: run it in a thread), never
    through a proxy (a proxy would answer for a service it cannot see)."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        failed = f"its readiness URL {url!r} is not an http(s) URL"
        return {"service": service, "instance": url, "status": "failed", "missing": [failed]}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return readyz_report(service, parsed.netloc, response.status, response.read(65536))
    except urllib.error.HTTPError as exc:
        return readyz_report(service, parsed.netloc, exc.code, exc.read(65536))
    except (OSError, ValueError, http.client.HTTPException):  # refused, unresolvable, timed out, not HTTP
        return readyz_report(service, parsed.netloc, None, b"")


_CRL_PATH = re.compile(r"/crl/(?P<ca>[A-Za-z0-9._-]+?)(?:/(?P<shard>[0-9]{1,4}))?\.crl$")


def crl_location(url: str) -> tuple[str, int | None]:
    """The issuer and shard (None: an unsharded issuer's only CRL) a Certbus CRL URL names."""
    found = _CRL_PATH.search(url.split("?", 1)[0])
    if found is None:
        raise ValueError(f"{url!r} is not a Certbus CRL URL (/crl/<ca>.crl or /crl/<ca>/<shard>.crl)")
    return found["ca"], None if found["shard"] is None else int(found["shard"])


def crl_of_certificate(cert: str | bytes) -> tuple[str, int | None]:
    """The issuer and CRL shard a certificate (PEM or DER) names in its CRL distribution point."""
    from cryptography import x509  # imported here: the CLI starts without it for other commands

    raw = cert.encode() if isinstance(cert, str) else cert
    parsed = (
        x509.load_pem_x509_certificate(raw)
        if raw.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(raw)
    )
    try:
        points = parsed.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        raise ValueError(f"certificate {parsed.serial_number:x} names no CRL distribution point") from None
    urls = [n.value for p in points for n in p.full_name or [] if isinstance(n, x509.UniformResourceIdentifier)]
    if not urls:
        raise ValueError(f"certificate {parsed.serial_number:x} names no CRL URL")
    return crl_location(urls[0])
