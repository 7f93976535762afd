"""OCSP (RFC 6960) for the issuing CAs: decode a request, match its issuer, sign or reuse a response.

Pure and synchronous (no I/O, time comes in as `now`), so an async HTTP handler can call it directly.
The status comes from the caller: either a `StatusLookup` given to `ResponderSet` (then `respond`
does everything), or, when the status needs an await, `prepare` -> look up -> `answer`.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.validation.domain import StatusRecord
from shared.contract.reasons import reason_flag
from shared.pki import der
from shared.pki.crypto import PrivateKey, normalise_serial, signing_hash

DEFAULT_VALIDITY = timedelta(hours=1)
BACKDATE = timedelta(minutes=1)  # thisUpdate lies this far in the past, for relying parties' clock skew
DEFAULT_CACHE_ENTRIES = 20_000  # a response with the responder certificate is ~0.7 KB: ~15 MB at most
MAX_NONCE_LENGTH = 32  # RFC 8954: longer nonces may be ignored, so nobody gets arbitrary bytes signed
CERT_ID_HASHES: tuple[hashes.HashAlgorithm, ...] = (
    hashes.SHA1(),  # noqa: S303 - RFC 6960 CertIDs use SHA-1 by default; only compared, never trusted
    hashes.SHA224(),
    hashes.SHA256(),
    hashes.SHA384(),
    hashes.SHA512(),
)

StatusKind = Literal["good", "revoked", "unknown"]
_CERT_STATUS = {
    "good": ocsp.OCSPCertStatus.GOOD,
    "revoked": ocsp.OCSPCertStatus.REVOKED,
    "unknown": ocsp.OCSPCertStatus.UNKNOWN,
}
_UNSUCCESSFUL: dict[ocsp.OCSPResponseStatus, bytes] = {
    s: ocsp.OCSPResponseBuilder.build_unsuccessful(s).public_bytes(serialization.Encoding.DER)
    for s in ocsp.OCSPResponseStatus
    if s is not ocsp.OCSPResponseStatus.SUCCESSFUL
}


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    """The DER of an unsigned error response (malformedRequest, unauthorized, tryLater...)."""
    if status is ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValueError("a successful response is signed: use ResponderSet.respond or answer")
    return _UNSUCCESSFUL[status]


class OcspError(ValueError):
    """A request that gets an unsuccessful response instead of a signed one; `response` is its DER."""

    status = ocsp.OCSPResponseStatus.INTERNAL_ERROR

    @property
    def response(self) -> bytes:
        """What to send back to the client."""
        return _UNSUCCESSFUL[self.status]


class MalformedRequest(OcspError):
    """Not an OCSP request this responder can read (RFC 6960 malformedRequest)."""

    status = ocsp.OCSPResponseStatus.MALFORMED_REQUEST


class Unauthorized(OcspError):
    """A request about an issuer this responder does not serve (RFC 6960 unauthorized)."""

    status = ocsp.OCSPResponseStatus.UNAUTHORIZED


class TryLater(OcspError):
    """A request about a served issuer whose responder certificate is not there yet (RFC 6960 tryLater)."""

    status = ocsp.OCSPResponseStatus.TRY_LATER


@dataclass(frozen=True, slots=True)
class Status:
    """What the responder says about a serial: good, revoked (when, why) or unknown (never issued)."""

    kind: StatusKind
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | None = None

    def __post_init__(self) -> None:
        if self.kind not in _CERT_STATUS:
            raise ValueError(f"unknown status kind {self.kind!r}: use good, revoked or unknown")
        if self.kind == "revoked":
            if self.revoked_at is None or self.revoked_at.tzinfo is None:
                raise ValueError("a revoked status needs a timezone-aware revoked_at")
        elif self.revoked_at is not None or self.reason is not None:
            raise ValueError(f"a {self.kind} status has no revocation time or reason")

    @classmethod
    def from_record(cls, record: StatusRecord | None) -> Status:
        """The status of validation's read-model row (None: the log has no issuance for the serial)."""
        if record is None:
            return UNKNOWN
        if record.status == "revoked":
            reason = reason_flag(record.reason) if record.reason else None
            return cls("revoked", record.revoked_at, reason)
        if record.status == "good":
            return GOOD
        raise ValueError(f"status record for {record.serial} has unknown status {record.status!r}")


GOOD = Status("good")
UNKNOWN = Status("unknown")
StatusLookup = Callable[[str, str], Status]
"""(issuer CA id, serial as lower-case hex) -> the serial's status; UNKNOWN if that CA never issued it."""


@dataclass(frozen=True, slots=True)
class OcspRequest:
    """The fields of a single-certificate OCSP request that a response needs."""

    serial: str  # lower-case hex without leading zeros, as Certbus writes serials
    serial_number: int
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    hash_algorithm: hashes.HashAlgorithm
    nonce: bytes | None  # echoed in the response; None when absent, empty or over MAX_NONCE_LENGTH


def decode_get(path_component: str) -> bytes:
    """The DER request of a GET URL's last component (RFC 6960 A.1: URL-encoded base64).

    Percent-escapes are undone (again, harmlessly, if the HTTP layer already did), missing padding
    is tolerated and so is the URL-safe alphabet."""
    text = urllib.parse.unquote(path_component).strip().replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters
        raise MalformedRequest(f"GET request is not URL-encoded base64: {exc}") from None


def parse_request(request_der: bytes) -> OcspRequest:
    """The single-certificate request in `request_der`; MalformedRequest for anything else."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        nonce = None
        for extension in request.extensions:
            if isinstance(extension.value, x509.OCSPNonce):
                nonce = extension.value.nonce
            elif extension.critical and isinstance(extension.value, x509.UnrecognizedExtension):
                raise MalformedRequest(f"request has an unsupported critical extension {extension.oid.dotted_string}")
        serial_number = request.serial_number
        if serial_number < 0:  # valid DER, but no CA issues one (RFC 5280 4.1.2.2) and no CertID can echo it
            raise MalformedRequest("the request's serial number is negative")
        return OcspRequest(
            serial=format(serial_number, "x"),
            serial_number=serial_number,
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            hash_algorithm=request.hash_algorithm,
            nonce=nonce if nonce and len(nonce) <= MAX_NONCE_LENGTH else None,
        )
    except UnsupportedAlgorithm as exc:
        raise MalformedRequest(f"request's CertID uses an unsupported hash: {exc}") from None
    except NotImplementedError:  # cryptography reads single-certificate requests only
        raise MalformedRequest("the request asks about more than one certificate: send one per request") from None
    except MalformedRequest:
        raise
    except ValueError as exc:
        raise MalformedRequest(f"not a DER OCSP request: {exc}") from None


def _subject_public_key(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's bits, exactly as in the certificate (what CertID hashes)."""
    spki = der.tbs_parts(cert.tbs_certificate_bytes).spki
    _, start, end = der.tlv(spki, 0)
    fields = der.children(spki, start, end)  # AlgorithmIdentifier, subjectPublicKey
    if len(fields) != 2:
        raise ValueError("the certificate's SubjectPublicKeyInfo is not two fields")
    tag, _, content, stop = fields[1]
    if tag != 0x03:
        raise ValueError("the certificate's SubjectPublicKeyInfo has no BIT STRING")
    return spki[content + 1 : stop]  # the first content byte counts unused bits


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


CertIdKey = tuple[str, bytes, bytes]  # (hash name, issuer name hash, issuer key hash)


def issuer_cert_ids(issuer: x509.Certificate) -> frozenset[CertIdKey]:
    """The issuer halves of every CertID a request about a certificate of `issuer` may carry."""
    name, public_key = issuer.subject.public_bytes(), _subject_public_key(issuer)
    return frozenset((a.name, _digest(a, name), _digest(a, public_key)) for a in CERT_ID_HASHES)


class Responder:
    """An issuing CA's delegated responder: its certificate (id-kp-OCSPSigning) and private key."""

    def __init__(self, ca_id: str, issuer: x509.Certificate, cert: x509.Certificate, key: PrivateKey) -> None:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError(f"responder certificate for CA {ca_id} was not issued by that CA: {exc}") from None
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            raise ValueError(f"responder certificate for CA {ca_id} lacks id-kp-OCSPSigning: relying parties reject it")
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
            serialization.Encoding.DER, spki
        ):
            raise ValueError(f"the private key given for CA {ca_id}'s responder is not its certificate's key")
        self.ca_id = ca_id
        self.issuer = issuer
        self.cert = cert
        self.key = key
        self.not_after = cert.not_valid_after_utc
        self._hash = signing_hash(key)
        self.cert_ids = issuer_cert_ids(issuer)

    def sign(self, request: OcspRequest, status: Status, this_update: datetime, next_update: datetime) -> bytes:
        """A signed basic response for `request` (nonce echoed), identified by the responder's key hash."""
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=request.issuer_name_hash,
                issuer_key_hash=request.issuer_key_hash,
                serial_number=request.serial_number,
                algorithm=request.hash_algorithm,
                cert_status=_CERT_STATUS[status.kind],
                this_update=this_update,
                next_update=next_update,
                revocation_time=status.revoked_at,
                # unspecified (0) is omitted, as RFC 5280 asks of CRL entries: the two must agree
                revocation_reason=None if status.reason is x509.ReasonFlags.unspecified else status.reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.cert)
            .certificates([self.cert])
        )
        if request.nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(request.nonce), critical=False)
        return builder.sign(self.key, self._hash).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class _Entry:
    der: bytes
    status: Status
    responder: Responder
    this_update: datetime
    refresh_at: datetime


CacheKey = tuple[str, str, str]  # (CA id, serial hex, CertID hash name): the CertID is echoed as asked


class ResponseCache:
    """Signed responses per (issuer, serial, CertID hash), least recently used evicted beyond `max_entries`."""

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, status: Status, responder: Responder, now: datetime) -> bytes | None:
        """The cached response if it was built for `status` by `responder` and is not due for refresh."""
        entry = self._entries.get(key)
        if (
            entry is None
            or entry.status != status
            or entry.responder is not responder
            or not entry.this_update <= now < entry.refresh_at
        ):
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.der

    def put(self, key: CacheKey, entry: _Entry) -> None:
        """Keep `entry`, evicting the least recently used beyond the bound."""
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def invalidate(self, ca_id: str, serial: str) -> int:
        """Drop every cached response about `serial` of CA `ca_id`; how many were dropped."""
        serial = normalise_serial(serial)
        return sum(self._entries.pop((ca_id, serial, a.name), None) is not None for a in CERT_ID_HASHES)


@dataclass(frozen=True, slots=True)
class OcspStats:
    """Counters for benchmarks and metrics."""

    hits: int
    misses: int
    signed: int
    refused: int
    evictions: int
    entries: int


class ResponderSet:
    """The responders of every served issuing CA, with the response cache: what the HTTP layer calls.

    Requests with a nonce are always signed afresh and never cached; others reuse a cached response
    while its status is current and more than `refresh_margin` (default half the validity) remains
    before its nextUpdate. Responses for unknown serials are not cached, so random serials cannot
    flush the cache. Requests about an issuer given to `expect` (and, while no responder has been
    added, about any issuer) get tryLater until its responder is added. Not thread-safe: one event
    loop, no awaits inside."""

    def __init__(
        self,
        responders: Iterable[Responder],
        lookup: StatusLookup | None = None,
        *,
        cache: ResponseCache | None = None,
        validity: timedelta = DEFAULT_VALIDITY,
        refresh_margin: timedelta | None = None,
        backdate: timedelta = BACKDATE,
    ) -> None:
        refresh_margin = validity / 2 if refresh_margin is None else refresh_margin
        if validity <= timedelta(0) or not timedelta(0) <= refresh_margin < validity or backdate < timedelta(0):
            raise ValueError(
                f"need validity > 0, 0 <= refresh_margin < validity and backdate >= 0; got {validity}, "
                f"{refresh_margin}, {backdate}"
            )
        self._by_cert_id: dict[CertIdKey, Responder] = {}
        self._awaited: dict[CertIdKey, str] = {}  # issuers served once their responder arrives
        self._issuers: dict[str, x509.Certificate] = {}  # the same, by CA id
        self.on_change: Callable[[], None] | None = None  # called after add() and expect()
        self._lookup = lookup
        self.cache = ResponseCache() if cache is None else cache
        self.validity, self.refresh_margin, self.backdate = validity, refresh_margin, backdate
        self._signed = self._refused = 0
        for responder in responders:
            self.add(responder)

    def add(self, responder: Responder) -> None:
        """Serve `responder`'s issuer, replacing its previous responder (after a renewal)."""
        self._by_cert_id.update(dict.fromkeys(responder.cert_ids, responder))
        if self.on_change is not None:
            self.on_change()

    def expect(self, ca_id: str, issuer: x509.Certificate) -> None:
        """Answer tryLater, not unauthorized, about `issuer` until a responder for it is added."""
        self._awaited.update(dict.fromkeys(issuer_cert_ids(issuer), ca_id))
        self._issuers[ca_id] = issuer
        if self.on_change is not None:
            self.on_change()

    def expected(self) -> dict[str, x509.Certificate]:
        """The issuers given to `expect`, by CA id."""
        return dict(self._issuers)

    def current(self) -> list[Responder]:
        """Every responder served now (one per issuing CA)."""
        return list({id(r): r for r in self._by_cert_id.values()}.values())

    def responder(self, ca_id: str) -> Responder | None:
        """The current responder of CA `ca_id`, if any."""
        return next((r for r in self._by_cert_id.values() if r.ca_id == ca_id), None)

    def prepare(self, request_der: bytes) -> tuple[OcspRequest, Responder]:
        """The parsed request and the responder of its issuer; MalformedRequest, Unauthorized, or
        TryLater while the issuer (or, before the first responder, any issuer) awaits its responder."""
        request = parse_request(request_der)
        key = (request.hash_algorithm.name, request.issuer_name_hash, request.issuer_key_hash)
        responder = self._by_cert_id.get(key)
        if responder is None:
            if key in self._awaited or not self._by_cert_id:
                raise TryLater(f"no responder certificate yet for CA {self._awaited.get(key, '(not yet known)')}")
            raise Unauthorized(f"no served CA matches the request's issuer ({request.hash_algorithm.name} CertID)")
        return request, responder

    def respond(self, request_der: bytes, now: datetime) -> bytes:
        """The DER response to a DER request, the status coming from the lookup given at construction."""
        if self._lookup is None:
            raise TypeError("respond() needs ResponderSet(lookup=...); without one use prepare() and answer()")
        try:
            request, responder = self.prepare(request_der)
        except OcspError as exc:
            self._refused += 1
            return exc.response
        return self.answer(request, responder, self._lookup(responder.ca_id, request.serial), now)

    def answer(self, request: OcspRequest, responder: Responder, status: Status, now: datetime) -> bytes:
        """The DER response giving `status`, from the cache when allowed, else signed now."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        key = (responder.ca_id, request.serial, request.hash_algorithm.name)
        if request.nonce is None and status.kind != "unknown":
            cached = self.cache.get(key, status, responder, now)
            if cached is not None:
                return cached
        this_update = now - self.backdate
        next_update = min(now + self.validity, responder.not_after)
        if next_update <= now:  # the renewal of the responder certificate is late
            self._refused += 1
            return _UNSUCCESSFUL[ocsp.OCSPResponseStatus.TRY_LATER]
        response = responder.sign(request, status, this_update, next_update)
        self._signed += 1
        if request.nonce is None and status.kind != "unknown":
            refresh_at = next_update - self.refresh_margin
            self.cache.put(key, _Entry(response, status, responder, this_update, refresh_at))
        return response

    def invalidate(self, ca_id: str, serial: str) -> int:
        """Forget cached responses about a serial (call when its revocation arrives)."""
        return self.cache.invalidate(ca_id, serial)

    def stats(self) -> OcspStats:
        """A snapshot of the counters."""
        c = self.cache
        return OcspStats(c.hits, c.misses, self._signed, self._refused, c.evictions, len(c))
