"""Issuance of one group of approvals, behind one object: prepare, record intents, sign, release.

The approvals consumer (`handlers.issue`) makes an `Issuance` for each group it applies and only
orchestrates its steps, each with the transaction boundary the issuance cycle needs:

1. `prepare` judges each approval by signing's own policy, whatever enrollment decided (in log
   order, so a profile applied earlier in the same group counts);
2. `record_intents` commits each request's serial and validity, in its own transaction, before
   anything is signed: a redelivered or repeated approval signs the recorded serial again, or
   nothing if its certificate was stored or refused;
3. `sign` signs each planned certificate (outside any transaction) and checks it against its
   linted template, and pkilint if its profile asks, before anyone sees it;
4. `release`, in the transaction that applies the approval, puts the certificate in the outbox,
   or keeps it unpublished (a failed check, or its CA compromised or retired since the intent),
   or rejects the approval.
"""

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

from services.signing import domain, store
from services.signing.cas import CaRegistry
from services.signing.templates import TemplateBook
from shared.contract.events import (
    CertificateIssued,
    CertificateLintFailed,
    EnrollmentApproved,
    IssuanceRefused,
    LintResult,
)
from shared.contract.profiles import Profile, ProfileKeyType, key_type_of
from shared.contract.reasons import Reason
from shared.pki.crypto import PublicKey, serial_hex, signing_hash, spki_sha256
from shared.pki.lint import errors, lint_certificate
from shared.runtime.consumer import EventRejected
from shared.runtime.outbox import OutboxEntry, enqueue, enqueue_many
from shared.runtime.service import Runtime

NAME = "signing"
log = logging.getLogger("certbus.signing")


class ProfileNotYetKnown(Exception):
    """An approval names a profile version this replica has not seen yet (another replica is
    applying it): the approval is nacked and redelivered, and parked if it never becomes known."""


@dataclass(frozen=True)
class Job:
    """An approval that passed signing's own policy checks: what to sign, with the CSR's public key
    loaded once (each `csr.public_key()` decodes and checks the key again)."""

    approved: EnrollmentApproved
    csr: x509.CertificateSigningRequest
    profile: Profile
    digest: str
    public_key: PublicKey
    key_type: ProfileKeyType  # of the requested key (checked by policy_problems)
    spki_sha256: str

    @classmethod
    def of(
        cls, approved: EnrollmentApproved, csr: x509.CertificateSigningRequest, profile: Profile, digest: str
    ) -> Job:
        """The job for an approval whose CSR passed `domain.policy_problems`."""
        public_key: PublicKey = csr.public_key()  # type: ignore[assignment]
        kind = key_type_of(public_key)
        assert kind is not None
        return cls(approved, csr, profile, digest, public_key, kind, spki_sha256(public_key))


class Issuance:
    """The issuance of one group of approvals (at most one certificate per request)."""

    def __init__(self, rt: Runtime, cas: CaRegistry, book: TemplateBook, now: datetime) -> None:
        self._rt = rt
        self._cas = cas
        self._book = book
        self._now = now
        self._work: dict[str, Job | list[Reason]] = {}  # request id -> what to sign, or why not
        self._intents: dict[str, store.Intent] = {}
        self._signed: dict[str, x509.Certificate] = {}
        self._refused: dict[str, tuple[x509.Certificate, list[Reason]]] = {}  # failed the pre-release check
        self._stale: set[str] = set()  # planned under a CA declared compromised or retired since: never signed

    async def prepare(self, approved: EnrollmentApproved, issuer_id: str) -> None:
        """Judge an approval (once per request in the group) for issuance under `issuer_id`."""
        if approved.aggregate_id not in self._work:
            self._work[approved.aggregate_id] = await self._judge(approved, issuer_id)

    async def record_intents(self, conn: asyncpg.Connection) -> None:
        """Commit an intent (serial, validity) for each request to sign, in a transaction of its own
        on `conn` (which must not be in one) before anything is signed; a request's intent recorded
        before is kept, and read back."""
        to_sign = self._to_sign()
        if not to_sign:
            return
        issuer = self._cas.issuing()
        now = self._rt.clock.now()
        plans = []
        for rid, job in to_sign.items():
            plan = domain.plan_leaf(issuer, job.approved.validity_days, now)
            plans.append(
                (
                    rid,
                    issuer.ca_id,
                    plan.serial,
                    plan.not_before,
                    plan.not_after,
                    job.spki_sha256,
                    job.approved.event_id,
                )
            )
        async with conn.transaction():
            self._intents = await store.record_intents(conn, plans, now)

    async def sign(self) -> None:
        """Sign and check each intent not signed or refused before, unless its CA closed since."""
        to_sign = self._to_sign()
        for rid, intent in self._intents.items():
            if intent.cert_der is not None or intent.refused:
                continue  # decided before: its event is already in the outbox
            if intent.issuer_id not in self._cas.ids():
                self._stale.add(rid)
                continue
            cert, deviations = await self._sign_checked(to_sign[rid], intent)
            if deviations:
                self._refused[rid] = (cert, deviations)
            else:
                self._signed[rid] = cert
        if len(self._signed) + len(self._refused) < len(self._intents):
            self._rt.relay.notify()  # a redelivery of something decided before: make sure its event is out

    async def release(self, conn: asyncpg.Connection, approved: EnrollmentApproved) -> list[OutboxEntry]:
        """In the caller's transaction: the approval's certificate, its refusal, or nothing if it was
        decided before."""
        rid = approved.aggregate_id
        item = self._work[rid]
        if isinstance(item, list):
            return [await self._reject(conn, approved, item)]
        if rid in self._refused:
            bad, deviations = self._refused[rid]
            return await self._refuse(conn, item, bad, deviations)
        cert = self._signed.get(rid)
        if cert is None and rid not in self._stale:
            return []  # decided before: its event is already in the outbox
        intent = self._intents[rid]
        status = await store.ca_status(conn, intent.issuer_id)
        if cert is None or status != "active":
            # Its CA was declared compromised or retired after the intent: the certificate is never released.
            return [await self._reject(conn, approved, [_closed_issuer(intent.issuer_id, status)])]
        return await self._store_signed(conn, approved, intent, cert)

    def _to_sign(self) -> dict[str, Job]:
        return {rid: job for rid, job in self._work.items() if isinstance(job, Job)}

    async def _judge(self, approved: EnrollmentApproved, issuer_id: str) -> Job | list[Reason]:
        """Signing's own verdict on an approval, whatever enrollment decided."""
        try:
            csr = x509.load_pem_x509_csr(approved.csr_pem.encode())
        except ValueError as exc:
            raise EventRejected(f"the approved CSR cannot be parsed: {exc}") from exc
        found = await self._profile_for(approved)
        if found is None:
            return [Reason(code="profile_unknown", message=f"signing knows no profile {approved.profile!r}")]
        profile, digest = found
        verdict = await self._book.lint(digest, issuer_id, self._now)
        if not verdict.usable:
            codes = ", ".join(sorted({f.code for f in verdict.findings}))
            return [
                Reason(
                    code="profile_unusable",
                    message=f"profile {profile.name!r} cannot be used: its certificate template fails lint ({codes})",
                )
            ]
        problems = domain.policy_problems(approved, csr, profile)
        return problems or Job.of(approved, csr, profile, digest)

    async def _profile_for(self, approved: EnrollmentApproved) -> tuple[Profile, str] | None:
        book = self._book
        digest = approved.profile_digest
        if digest is None or digest not in book.profiles:
            async with self._rt.pool.acquire() as conn:
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

    async def _sign_checked(self, job: Job, intent: store.Intent) -> tuple[x509.Certificate, list[Reason]]:
        """Sign the planned certificate and check it against its template (and pkilint, if the profile
        asks for full lint) before anyone sees it."""
        cas, book = self._cas, self._book
        issuer = cas.get(intent.issuer_id)
        template = book.template(job.digest, issuer.ca_id, job.key_type)
        if template is None:
            await book.lint(job.digest, issuer.ca_id, self._now)
            template = book.template(job.digest, issuer.ca_id, job.key_type)
        assert template is not None
        plan = domain.LeafPlan(intent.serial, intent.not_before, intent.not_after)
        names = domain.Sans.of(job.approved)
        public_key = job.public_key
        key = cas.key(issuer.ca_id)
        cert = domain.leaf_builder(job.profile, names, public_key, issuer, plan, cas.urls).sign(key, signing_hash(key))
        deviations = domain.template_deviations(
            cert,
            template.cert,
            job.profile,
            names,
            public_key,
            plan,
            crl_url=cas.urls.leaf_crl(issuer, plan.serial),
        )
        if not deviations and job.profile.lint == "full":
            der = cert.public_bytes(serialization.Encoding.DER)
            deviations = [
                Reason(code="lint_failed", message=f"pkilint {f.severity} {f.code}: {f.message or f.path}")
                for f in errors(await asyncio.to_thread(lint_certificate, der))
            ]
        return cert, deviations

    async def _refuse(
        self, conn: asyncpg.Connection, job: Job, cert: x509.Certificate, deviations: list[Reason]
    ) -> list[OutboxEntry]:
        """Keep a failed certificate unpublished: reject the enrollment and raise an operator alert."""
        rt, approved = self._rt, job.approved
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
        return [await enqueue(conn, alert, rt.root), await self._reject(conn, approved, deviations)]

    async def release_run(self, conn: asyncpg.Connection, run: list[EnrollmentApproved]) -> list[OutboxEntry]:
        """`release` for a run of approvals in the caller's transaction: their CAs' statuses read
        (and share-locked) at once, the signed certificates stored and their events enqueued in one
        statement each; a rejection or a refusal is released as `release` does it."""
        rids = [approved.aggregate_id for approved in run]
        if len(set(rids)) < len(rids):
            return [entry for approved in run for entry in await self.release(conn, approved)]
        issuers = {self._intents[rid].issuer_id for rid in rids if rid in self._signed}
        statuses = await store.ca_statuses(conn, sorted(issuers))
        entries: list[OutboxEntry] = []
        ready: list[tuple[CertificateIssued, bytes, str]] = []
        for approved in run:
            rid = approved.aggregate_id
            cert = self._signed.get(rid)
            if cert is None or statuses.get(self._intents[rid].issuer_id) != "active":
                entries += await self.release(conn, approved)  # refused, rejected, decided before, or its CA closed
            else:
                ready.append(self._issued(approved, self._intents[rid], cert))
        signed = [(issued.aggregate_id, der, tbs) for issued, der, tbs in ready]
        stored = await store.record_signed_many(conn, signed, self._rt.clock.now())
        released = [issued for issued, _, _ in ready if issued.aggregate_id in stored]  # else another replica's
        for issued in released:
            log.info("issued certificate", extra={"serial": issued.serial, "issuer": issued.issuer_id})
        return entries + await enqueue_many(conn, released, self._rt.root)

    def _issued(
        self, approved: EnrollmentApproved, intent: store.Intent, cert: x509.Certificate
    ) -> tuple[CertificateIssued, bytes, str]:
        """The event that releases `cert`, its DER and the SHA-256 of its TBS."""
        job = self._work[approved.aggregate_id]
        assert isinstance(job, Job)  # signed, so judged fit to sign
        der = cert.public_bytes(serialization.Encoding.DER)
        issued = CertificateIssued.caused_by(
            approved,
            producer=NAME,
            at=self._rt.clock.now(),
            event_id=intent.issued_event_id,
            serial=serial_hex(cert),
            issuer_id=intent.issuer_id,
            profile=approved.profile,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem=self._cas.chain_pem(intent.issuer_id),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            dns_names=approved.dns_names,
            ip_addresses=approved.ip_addresses,
            emails=approved.emails,
            # The CSR's key: template_deviations checked that the certificate holds exactly it.
            spki_sha256=job.spki_sha256,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),  # fingerprint_sha256(cert), from the DER at hand
            supersedes=approved.supersedes,
            requester=approved.requester,
        )
        return issued, der, hashlib.sha256(cert.tbs_certificate_bytes).hexdigest()

    async def _store_signed(
        self, conn: asyncpg.Connection, approved: EnrollmentApproved, intent: store.Intent, cert: x509.Certificate
    ) -> list[OutboxEntry]:
        rt = self._rt
        issued, der, tbs = self._issued(approved, intent, cert)
        if not await store.record_signed(conn, approved.aggregate_id, der, tbs, rt.clock.now()):
            return []  # another replica stored its signature of this intent first
        log.info("issued certificate", extra={"serial": issued.serial, "issuer": intent.issuer_id})
        return [await enqueue(conn, issued, rt.root)]

    async def _reject(
        self, conn: asyncpg.Connection, approved: EnrollmentApproved, problems: list[Reason]
    ) -> OutboxEntry:
        rejected = IssuanceRefused.caused_by(approved, producer=NAME, at=self._rt.clock.now(), reasons=problems)
        return await enqueue(conn, rejected, self._rt.root)


def _closed_issuer(issuer_id: str, status: str | None) -> Reason:
    """Why a certificate planned under a CA closed since is not released."""
    if status == "retired":
        return Reason(code="issuer_retired", message=f"issuer {issuer_id} was retired before release: request again")
    return Reason(
        code="issuer_compromised",
        message=f"issuer {issuer_id} was declared compromised before release: request again",
    )
