"""Consistency checks over the archived log (in the spirit of Boulder's cert-checker): pure, no I/O.

Each check reads the events in log order and reports findings with the position that shows them.
A message that is not a valid event on its own subject (`shared.contract.binding`, then its class) counts
for nothing in the other checks and is itself a finding, under the binding code:
- `oversize`, `malformed` (not one JSON object of bounded depth, or a body its class refuses),
  `unknown_type`, `subject_mismatch` (a body on a subject other than its own: a forgery);
- `producer`: an event whose body names another producer than its type's publisher (the subject
  says who published it; a body that disagrees is inconsistent data, and counts for nothing);
- `operator_signature`: an operator command without enough valid signatures by the operators
  registered before it (`shared.trust.operators`, judged by the registry as the log had it just before
  the command, as every consumer judges it): the consumers park it, so it counts for nothing;
- `approval`: a certificate issued without exactly one approved enrollment before it;
- `issuer`: a certificate issued by a CA that signing never announced (no `CaCreated`);
- `serial`: a serial issued twice by one issuer;
- `revoked_unknown`: a revocation of a certificate that was never issued;
- `ca_closed`: a certificate issued, or a CRL signed, by a CA after it was declared compromised or
  retired (a CRL is still allowed after retirement, until the key is destroyed), or anything signed
  by a CA after its key was destroyed;
- `profile`: a certificate that its profile (the exact version its approval names) does not allow:
  names, key, validity, key usages, a CA flag; or whose body disagrees with its event (re-linted
  from the certificate bytes, not from what the event says);
- `renewal`: a certificate issued as a renewal (`supersedes`) whose approval does not name the same
  superseded serial (or the other way round), that renews a serial never issued, or that renews a
  certificate destroyed before it was issued;
- `key_destroyed`: a holder's key-destroyed attestation for a serial never issued, for another key
  than the certificate's, or whose proof is not that key's signature;
- `crl` (`crl_findings`, given the CRL bytes from the object store): a revoked certificate missing
  from the latest CRL of its issuer (of its issuer's shard, `serial mod crl_shards`, for a CA created
  with shards), a CRL whose bytes, signature or shard (issuingDistributionPoint) are wrong, or none
  published since a revocation.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from pydantic import ValidationError

from services.audit import domain
from shared.contract.events import (
    PRODUCERS,
    CaCreated,
    CertificateRevoked,
    CrlPublished,
    KeyDestroyed,
    OperatorCommand,
    key_destroyed_message,
    producer_allowed,
)
from shared.contract.profiles import Profile, key_problem, names_problems
from shared.pki.crypto import load_spki, spki_der, verify_message
from shared.trust.operators import NotAuthorised, Registry, applied, signers

# What reading a hostile certificate or CRL may raise (lazily, as its extensions are read).
_UNREADABLE = (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


@dataclass(frozen=True)
class Finding:
    """One inconsistency: which check, where on the log, and what is wrong."""

    check: str
    stream_seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class Revoked:
    """A revocation as the log recorded it."""

    serial: str
    stream_seq: int
    revoked_at: datetime | None


def crl_key(ca_id: str, shard: int | None) -> str:
    """Which CRL of an issuer: the issuer's id (unsharded), or `<issuer>/<shard>` for one shard's."""
    return ca_id if shard is None else f"{ca_id}/{shard}"


@dataclass(frozen=True)
class LatestCrl:
    """The newest CRL of an issuer (of one of its shards), as its `CrlPublished` event describes it."""

    stream_seq: int
    crl_number: int
    this_update: datetime | None
    bucket: str
    name: str
    sha256: str


@dataclass(frozen=True)
class CrlJudge:
    """A CRL's judgment of the revocations it must list, given in as many parts as the caller likes
    (the scheduled check reads them from PostgreSQL a page at a time)."""

    issuer: str
    which: str  # the issuer, or the issuer and shard, as findings name it
    latest: LatestCrl | None
    listed: set[int] | None  # the serials the latest CRL lists (None: there is none)
    end: int | float  # past this position the CA signs no CRL that must list a revocation
    now: datetime
    grace: timedelta

    def judge(self, revoked: Iterable[Revoked]) -> list[Finding]:
        """A finding for each revocation older than `grace` that the latest CRL does not list, or that
        no CRL followed."""
        found: list[Finding] = []
        latest, issuer = self.latest, self.issuer
        for r in revoked:
            if r.stream_seq > self.end:
                continue  # the CA no longer signs CRLs: it is itself revoked in its parent's CRL
            when = r.revoked_at or self.now
            if latest is not None and r.stream_seq < latest.stream_seq and self.listed is not None:
                cutoff = _before(latest.this_update or self.now, self.grace)
                if when <= cutoff and int(r.serial, 16) not in self.listed:
                    found.append(
                        Finding(
                            "crl",
                            r.stream_seq,
                            f"serial {r.serial} of {issuer} was revoked but "
                            f"is not in the latest CRL #{latest.crl_number} of {self.which}",
                        )
                    )
            elif when <= self.now - self.grace:
                found.append(
                    Finding(
                        "crl",
                        r.stream_seq,
                        f"serial {r.serial} of {issuer} was revoked but no CRL of {self.which} was published since",
                    )
                )
        return found


# The events that change what a Checker knows besides its facts (with every operator command).
_STATE_KINDS = frozenset(
    {"CaCreated", "CaCompromised", "CaRetired", "CaKeyDestroyed", "ProfileApplied", "CrlPublished"}
)

# A text as a smaller value, equal to another's exactly when the texts are equal (see `key_of`).
Key = int | bytes | str
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(r"[1-9a-f][0-9a-f]{0,127}")


def key_of(text: str) -> Key:
    """`text` as a compact key, one per text: a lowercase SHA-256 hex digest as its 32 bytes, a lowercase
    UUID as its 16 bytes, a lowercase hex number without leading zeros (a serial) as its int, else itself.
    The scheduled check keeps one per certificate for as long as the process runs."""
    if len(text) == 64 and _HEX64.fullmatch(text):
        return bytes.fromhex(text)
    if len(text) == 36 and _UUID.fullmatch(text):
        return bytes.fromhex(text.replace("-", ""))
    if _HEX.fullmatch(text):
        return int(text, 16)
    return text


@dataclass(slots=True)
class Approvals:
    """What the checks remember of a request's approvals: how many, where the first was, the profile
    version the last one that named one names, and what the last one supersedes."""

    count: int
    first_seq: int
    digest: str | None
    supersedes: Key | None


@dataclass
class Facts:
    """What the checks know of each certificate, by its keys (`key_of`): its request's approvals, its
    serial under its issuer, its key, its destruction. `check_all` keeps every certificate's in memory;
    the scheduled check keeps them in audit's PostgreSQL (`services.audit.check_store`) and gives the
    Checker, for each batch, only those the batch's events name (`wanted`)."""

    approvals: dict[Key, Approvals] = field(default_factory=dict)  # by request id
    issued: dict[tuple[str, Key], int] = field(default_factory=dict)  # (issuer, serial) -> first issuance
    spki_of: dict[Key, Key] = field(default_factory=dict)  # every serial issued -> its first SPKI SHA-256
    destroyed: dict[Key, int] = field(default_factory=dict)  # serial -> where it was destroyed


@dataclass(frozen=True)
class Wanted:
    """The per-certificate facts that checking some events reads: by request id, by serial, by (issuer,
    serial). A superset is harmless; a key missing here would read as a certificate never seen."""

    requests: set[Key]
    serials: set[Key]
    issued: set[tuple[str, Key]]


def wanted(readings: Iterable[domain.Reading]) -> Wanted:
    """What `Checker.apply` of these readings looks up in its `Facts` (each kind's keys, read as it reads them)."""
    requests: set[Key] = set()
    serials: set[Key] = set()
    issued: set[tuple[str, Key]] = set()
    for reading in readings:
        data, event = reading.data, reading.event
        if data is None or event is None:
            continue
        kind = event.event_type
        if kind in ("EnrollmentApproved", "CertificateIssued"):
            requests.add(key_of(str(data.get("aggregate_id"))))
        if kind == "CertificateIssued":
            serial = key_of(str(data.get("serial")))
            serials.add(serial)
            issued.add((str(data.get("issuer_id")), serial))
            if (supersedes := _serial(data.get("supersedes"))) is not None:
                serials.add(key_of(supersedes))
        elif isinstance(event, CertificateRevoked):
            issued.add((event.issuer_id, key_of(event.serial)))
        elif kind == "CertificateDestroyed":
            serials.add(key_of(str(data.get("serial"))))
        elif isinstance(event, KeyDestroyed):
            serials.add(key_of(event.serial))
    return Wanted(requests, serials, issued)


@dataclass
class Checker:
    """Feed messages in log order with `add` (or `read` then `apply`); read `findings` (and judge the
    CRLs with `crl_findings`). `root` is the log's subject root, against which each message is bound
    to its subject. What it keeps per certificate (`facts`) is compact (`key_of`, no certificate bytes);
    what it keeps per CA, profile and operator is kept whole. The scheduled check swaps `facts` for
    each batch's (loaded from PostgreSQL) and takes `revocations` away once stored."""

    root: str
    findings: list[Finding] = field(default_factory=list)
    events: int = 0
    facts: Facts = field(default_factory=Facts)
    _profiles: dict[str, Profile] = field(default_factory=dict)
    _cas: dict[str, str] = field(default_factory=dict)
    _crl_shards: dict[str, int] = field(default_factory=dict)  # the sharded CAs' shard counts
    _closed: dict[str, tuple[str, int]] = field(default_factory=dict)
    _key_destroyed: dict[str, int] = field(default_factory=dict)
    revocations: dict[str, list[Revoked]] = field(default_factory=dict)  # by issuer
    latest_crl: dict[str, LatestCrl] = field(default_factory=dict)  # by `crl_key`
    _operators: Registry = field(default_factory=lambda: Registry({}, {}))
    _commands: set[uuid.UUID] = field(default_factory=set)  # the operator commands accepted, by event id
    changed: bool = True  # whether `state` has changed since this was last set False (a new one: yes)

    def state(self) -> dict[str, Any]:
        """What this Checker knows besides its facts, revocations and findings (of its CAs, profiles and
        operators: a few per CA), as JSON, for `restored`."""
        return {
            "profiles": {digest: p.model_dump(mode="json") for digest, p in self._profiles.items()},
            "cas": self._cas,
            "crl_shards": self._crl_shards,
            "closed": {ca: list(closed) for ca, closed in self._closed.items()},
            "key_destroyed": self._key_destroyed,
            "latest_crl": {
                key: {**dataclasses.asdict(c), "this_update": c.this_update and c.this_update.isoformat()}
                for key, c in self.latest_crl.items()
            },
            "operator_keys": {name: base64.b64encode(spki_der(k)).decode() for name, k in self._operators.keys.items()},
            "quorums": dict(self._operators.quorums),
            "commands": sorted(str(c) for c in self._commands),
        }

    @classmethod
    def restored(cls, root: str, state: dict[str, Any]) -> Checker:
        """A Checker that knows what `state` (from `state`) says, with no facts, revocations or findings."""
        return cls(
            root,
            _profiles={digest: Profile.model_validate(p) for digest, p in state["profiles"].items()},
            _cas=dict(state["cas"]),
            _crl_shards=dict(state["crl_shards"]),
            _closed={ca: (closed[0], closed[1]) for ca, closed in state["closed"].items()},
            _key_destroyed=dict(state["key_destroyed"]),
            latest_crl={
                key: LatestCrl(**{**c, "this_update": c["this_update"] and datetime.fromisoformat(c["this_update"])})
                for key, c in state["latest_crl"].items()
            },
            _operators=Registry(
                {name: load_spki(base64.b64decode(k)) for name, k in state["operator_keys"].items()},
                dict(state["quorums"]),
            ),
            _commands={uuid.UUID(c) for c in state["commands"]},
            changed=False,
        )

    def add(self, seq: int, subject: str, raw: bytes) -> None:
        """Check one archived message; one that is not a valid event on `subject` is only a finding."""
        self.apply(seq, self.read(subject, raw))

    def read(self, subject: str, raw: bytes) -> domain.Reading:
        """A message read against its subject, for `wanted` and then `apply` (nothing is checked yet)."""
        return domain.read(subject, self.root, raw)

    def apply(self, seq: int, reading: domain.Reading) -> None:
        """Check one message, read by `read`, at its place in the log."""
        self.events += 1
        if reading.problem is not None:
            self._flag(reading.problem.check, seq, reading.problem.detail)
            return
        data, event = reading.data, reading.event
        assert data is not None and event is not None  # read gives both when there is no problem
        kind, producer = event.event_type, event.producer
        if not producer_allowed(kind, producer):
            self._flag(
                "producer", seq, f"{kind} says it was published by {producer!r}; its publisher is {PRODUCERS[kind]}"
            )
            return  # inconsistent data says nothing about what the real producer did
        if isinstance(event, OperatorCommand) and not self._authorised(seq, event):
            return
        if kind in _STATE_KINDS or isinstance(event, OperatorCommand):
            self.changed = True
        ca = str(data.get("ca_id"))
        if kind == "CaCreated":
            self._cas[ca] = str(data.get("cert_pem", ""))
            if isinstance(event, CaCreated) and event.crl_shards:
                self._crl_shards[ca] = event.crl_shards
        elif kind in ("CaCompromised", "CaRetired"):
            self._closed.setdefault(ca, ("compromised" if kind == "CaCompromised" else "retired", seq))
        elif kind == "CaKeyDestroyed":
            self._key_destroyed.setdefault(ca, seq)
        elif kind == "ProfileApplied":
            self._profile_applied(data)
        elif kind == "EnrollmentApproved":
            self._approved(seq, data)
        elif kind == "CertificateIssued":
            self._issued(seq, data)
        elif isinstance(event, CertificateRevoked):
            self._revoked(seq, event)
        elif isinstance(event, CrlPublished):
            self._crl(seq, event)
        elif kind == "CertificateDestroyed":
            self.facts.destroyed.setdefault(key_of(str(data.get("serial"))), seq)
        elif isinstance(event, KeyDestroyed):
            self._key_attested(seq, event)

    def _authorised(self, seq: int, command: OperatorCommand) -> bool:
        """Whether an operator command counts: judged, and applied if it changes the registry, as every
        consumer does (`shared.trust.operators.authorise`); one that does not is a finding."""
        if command.event_id in self._commands:
            return False  # a redelivery of an accepted command: the consumers skip it by its event id
        try:
            signers(command, self._operators)  # `command` was parsed from the wire: its set fields are signed
            self._operators = applied(command, self._operators)
        except NotAuthorised as exc:
            self._flag("operator_signature", seq, f"{command.event_type} {command.aggregate_id}: {exc}")
            return False
        self._commands.add(command.event_id)
        return True

    def _profile_applied(self, data: dict[str, Any]) -> None:
        try:
            profile = Profile.model_validate(data.get("profile"))
        except ValidationError:
            return  # the consumers refuse it too; nothing can have been approved under it
        self._profiles[profile.digest()] = profile

    def _approved(self, seq: int, data: dict[str, Any]) -> None:
        request = key_of(str(data.get("aggregate_id")))
        supersedes = _serial(data.get("supersedes"))
        approvals = self.facts.approvals.get(request)
        if approvals is None:
            approvals = self.facts.approvals[request] = Approvals(0, seq, None, None)
        approvals.count += 1
        if data.get("profile_digest"):
            digest = str(data["profile_digest"])
            approvals.digest = digest
        approvals.supersedes = key_of(supersedes) if supersedes is not None else None

    def _issued(self, seq: int, data: dict[str, Any]) -> None:
        request, issuer, serial = str(data.get("aggregate_id")), str(data.get("issuer_id")), str(data.get("serial"))
        approved = self.facts.approvals.get(key_of(request))
        approvals = approved.count if approved is not None else 0
        if approvals != 1:
            self._flag(
                "approval",
                seq,
                f"certificate {serial} for request {request} has {approvals} approved enrollments before it, not 1",
            )
        if issuer not in self._cas:
            self._flag("issuer", seq, f"certificate {serial} names issuer {issuer}, which signing never announced")
        self._after_close(seq, issuer, f"certificate {serial}", approved.first_seq if approved is not None else None)
        self._renewal(seq, request, serial, _serial(data.get("supersedes")), approved)
        key = key_of(serial)
        self.facts.spki_of.setdefault(key, key_of(str(data.get("spki_sha256"))))
        first = self.facts.issued.setdefault((issuer, key), seq)
        if first != seq:
            self._flag("serial", seq, f"serial {serial} of {issuer} was already issued at {first}")
        digest = approved.digest if approved is not None else None
        if digest is not None:  # approvals before profiles were versioned name no version to judge by
            profile = self._profiles.get(digest)
            if profile is None:
                self._flag(
                    "profile",
                    seq,
                    f"certificate {serial} was approved under profile version {digest[:12]}, "
                    "which was never applied on the log",
                )
            else:
                for problem in profile_problems(profile, data):
                    self._flag("profile", seq, f"certificate {serial} ({profile.name}): {problem}")

    def _renewal(self, seq: int, request: str, serial: str, supersedes: str | None, approved: Approvals | None) -> None:
        """A renewal's certificate must supersede what its approval says, an issued, undestroyed serial."""
        renews = key_of(supersedes) if supersedes is not None else None
        if approved is not None and approved.supersedes != renews:
            self._flag(
                "renewal",
                seq,
                f"certificate {serial} for request {request} supersedes {supersedes or 'nothing'}, "
                f"but its approval supersedes {text_of(approved.supersedes) or 'nothing'}",
            )
        if supersedes is None:
            return
        if renews not in self.facts.spki_of:
            self._flag("renewal", seq, f"certificate {serial} renews serial {supersedes}, which was never issued")
        elif renews in self.facts.destroyed:
            self._flag(
                "renewal",
                seq,
                f"certificate {serial} renews certificate {supersedes}, destroyed at {self.facts.destroyed[renews]}",
            )

    def _key_attested(self, seq: int, attested: KeyDestroyed) -> None:
        """A holder's attestation must name an issued certificate's own key and carry that key's signature."""
        serial = attested.serial
        certified = self.facts.spki_of.get(key_of(serial))
        if certified is None:
            self._flag("key_destroyed", seq, f"the key of serial {serial} is attested destroyed; it was never issued")
        elif certified != key_of(attested.spki_sha256):
            self._flag("key_destroyed", seq, f"the attestation for serial {serial} names a key it was not issued for")
        elif not _attestation_signed(attested):
            self._flag("key_destroyed", seq, f"the attestation for serial {serial} is not signed by the key it names")

    def _revoked(self, seq: int, revoked: CertificateRevoked) -> None:
        issuer, serial = revoked.issuer_id, revoked.serial
        if (issuer, key_of(serial)) not in self.facts.issued:
            self._flag("revoked_unknown", seq, f"serial {serial} of {issuer} was revoked but never issued")
            return
        self.revocations.setdefault(issuer, []).append(Revoked(serial, seq, _utc(revoked.revoked_at)))

    def _crl(self, seq: int, crl: CrlPublished) -> None:
        ca = crl.ca_id
        destroyed = self._key_destroyed.get(ca)
        if destroyed is not None:
            self._flag(
                "ca_closed",
                seq,
                f"CRL #{crl.crl_number} of {ca} signed after its key was destroyed at {destroyed}",
            )
        elif ca in self._closed and self._closed[ca][0] == "compromised":
            self._flag(
                "ca_closed",
                seq,
                f"CRL #{crl.crl_number} signed by {ca} after it was declared compromised at {self._closed[ca][1]}",
            )
        self.latest_crl[crl_key(ca, crl.shard)] = LatestCrl(
            stream_seq=seq,
            crl_number=crl.crl_number,
            this_update=_utc(crl.this_update),
            bucket=crl.object_bucket,
            name=crl.object_name,
            sha256=crl.sha256,
        )

    def _after_close(self, seq: int, ca: str, what: str, approved_at: int | None = None) -> None:
        """Flag what a CA signed after its key's destruction, or after it was declared compromised or
        retired; a certificate approved before a retirement and released just after it (signing read
        the approval first) is the retired CA's last legitimate work, not a finding."""
        if ca in self._key_destroyed:
            self._flag(
                "ca_closed", seq, f"{what} signed by {ca} after its key was destroyed at {self._key_destroyed[ca]}"
            )
        elif ca in self._closed:
            state, at = self._closed[ca]
            if state == "retired" and approved_at is not None and approved_at < at:
                return
            self._flag("ca_closed", seq, f"{what} issued by {ca} after it was declared {state} at {at}")

    def crl_of(self, issuer: str, serial: str) -> tuple[str, int | None]:
        """The CRL that must list a revocation: its issuer's (`crl_key`) and its shard (None: unsharded)."""
        shards = self._crl_shards.get(issuer)
        shard = int(serial, 16) % shards if shards else None
        return crl_key(issuer, shard), shard

    def crl_findings(self, crls: dict[str, bytes | None], now: datetime, grace: timedelta) -> list[Finding]:
        """Judge each latest CRL a revocation fed to this Checker must be in (`crls`: its DER from the
        object store by `crl_key`, None if missing) with `crl_judge`, against those revocations."""
        found: list[Finding] = []
        by_crl: dict[tuple[str, str, int | None], list[Revoked]] = {}
        for issuer, revoked in self.revocations.items():
            for r in revoked:
                key, shard = self.crl_of(issuer, r.serial)
                by_crl.setdefault((key, issuer, shard), []).append(r)
        for (key, issuer, shard), revoked in sorted(by_crl.items(), key=lambda item: item[0][0]):
            verdict = self.crl_judge(key, issuer, shard, crls.get(key), now, grace)
            found += [verdict] if isinstance(verdict, Finding) else verdict.judge(revoked)
        return found

    def crl_judge(
        self, key: str, issuer: str, shard: int | None, der: bytes | None, now: datetime, grace: timedelta
    ) -> Finding | CrlJudge:
        """The latest CRL `key` of `issuer` (`shard`), its DER from the object store (None if missing):
        the finding if its digest, signature or, for a shard, an issuingDistributionPoint naming that
        shard is wrong; else the judge of the revocations it must list (those of its issuer's shard
        older than `grace` before it). A revocation within `grace` of the CRL (or of now, if no CRL
        followed it) is not judged: the CRL publisher batches and may be a moment behind the log."""
        latest = self.latest_crl.get(key)
        which = issuer if shard is None else f"{issuer} shard {shard}"
        listed: set[int] | None = None
        if latest is not None:
            listed, problem = _read_crl(der, latest, self._cas.get(issuer, ""), issuer, shard)
            if problem is not None:
                return Finding("crl", latest.stream_seq, f"CRL #{latest.crl_number} of {which}: {problem}")
        return CrlJudge(issuer, which, latest, listed, self._crls_end(issuer), now, grace)

    def _crls_end(self, ca: str) -> int | float:
        """The log position after which a CA signs no CRL that must list a revocation: its compromise,
        its retirement (the final CRL lists what was revoked before it) or its key's destruction."""
        ends = [self._key_destroyed.get(ca, float("inf"))]
        if ca in self._closed:
            ends.append(self._closed[ca][1])
        return min(ends)

    def _flag(self, check: str, seq: int, detail: str) -> None:
        self.findings.append(Finding(check, seq, domain.safe_text(detail)))


def _attestation_signed(attested: KeyDestroyed) -> bool:
    """Whether the attestation's public key hashes to its SPKI hash and signed its message."""
    try:
        der = base64.b64decode(attested.public_key, validate=True)
        proof = base64.b64decode(attested.proof, validate=True)
        public_key = load_spki(der)
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return False
    message = key_destroyed_message(attested.serial, attested.spki_sha256, attested.destroyed_at)
    return hashlib.sha256(der).hexdigest() == attested.spki_sha256 and verify_message(public_key, proof, message)


def _utc(at: datetime) -> datetime | None:
    """`at` in UTC (a time without a zone is taken to be UTC already); None if out of range there."""
    try:
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except OverflowError:
        return None


def _serial(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


def text_of(key: Key | None) -> str | None:
    """The text `key_of` made `key` from."""
    if isinstance(key, int):
        return f"{key:x}"
    if isinstance(key, bytes):
        return key.hex() if len(key) == 32 else str(uuid.UUID(bytes=key))
    return key


def _read_crl(
    der: bytes | None, latest: LatestCrl, issuer_pem: str, ca_id: str, shard: int | None
) -> tuple[set[int] | None, str | None]:
    """The serials a CRL lists, or why it cannot be trusted (a shard's CRL must carry a critical
    issuingDistributionPoint naming that shard's URL, or it could stand in for another shard's)."""
    if der is None:
        return None, f"not in the object store ({latest.bucket}/{latest.name})"
    if hashlib.sha256(der).hexdigest() != latest.sha256:
        return None, "its bytes in the object store do not match the digest on the log"
    try:
        crl = x509.load_der_x509_crl(der)
        issuer = x509.load_pem_x509_certificate(issuer_pem.encode())
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return None, "not signed by its issuer"
        if shard is not None and not _names_shard(crl, ca_id, shard):
            return None, f"its issuingDistributionPoint does not name shard {shard} (/crl/{ca_id}/{shard}.crl)"
        return {entry.serial_number for entry in crl}, None
    except _UNREADABLE as exc:
        return None, f"unreadable: {exc}"


def _names_shard(crl: x509.CertificateRevocationList, ca_id: str, shard: int) -> bool:
    """Whether a CRL's critical issuingDistributionPoint names the URL of this CA's shard."""
    try:
        idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    except x509.ExtensionNotFound:
        return False
    names = [n.value for n in idp.value.full_name or [] if isinstance(n, x509.UniformResourceIdentifier)]
    return idp.critical and any(str(n).endswith(f"/crl/{ca_id}/{shard}.crl") for n in names)


def _before(at: datetime, span: timedelta) -> datetime:
    """`at - span`, or the earliest time there is (a time near year 1 is still a time)."""
    try:
        return at - span
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


def profile_problems(profile: Profile, data: dict[str, Any]) -> list[str]:
    """Everything about an issued certificate (its DER, re-read) that its profile does not allow."""
    try:
        cert = x509.load_pem_x509_certificate(str(data.get("cert_pem", "")).encode())
        return _certificate_problems(profile, cert, data)
    except _UNREADABLE as exc:
        return [f"the certificate cannot be parsed: {exc}"]


def _certificate_problems(profile: Profile, cert: x509.Certificate, data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if f"{cert.serial_number:x}" != str(data.get("serial")):
        problems.append(f"the certificate's serial is {cert.serial_number:x}, not the event's")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    emails = san.get_values_for_type(x509.RFC822Name)
    if sorted(dns) != sorted(data.get("dns_names") or []):
        problems.append(f"its DNS names {dns} are not the event's {data.get('dns_names')}")
    problems += [r.message for r in names_problems(profile, dns, ips, emails)]
    if (key := key_problem(profile, cert.public_key())) is not None:
        problems.append(key.message)
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    if span > timedelta(days=profile.max_validity_days):
        problems.append(f"it is valid for {span}, more than the profile's {profile.max_validity_days} days")
    try:
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        ekus = set()
    if ekus != set(profile.eku_oids()):
        names = sorted(getattr(oid, "_name", oid.dotted_string) for oid in ekus)
        problems.append(f"its extended key usages {names} are not the profile's usage {profile.usage!r}")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            problems.append("it is a CA certificate")
    except x509.ExtensionNotFound:
        pass
    return problems


def check_all(rows: Iterable[tuple[int, str, bytes]], root: str) -> Checker:
    """Run every check over (seq, subject, raw) rows of the log under `root`, in log order."""
    checker = Checker(root)
    for seq, subject, raw in rows:
        checker.add(seq, subject, raw)
    return checker
