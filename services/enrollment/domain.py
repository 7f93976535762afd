"""Enrollment decisions: pure functions of a CSR, a verified token and a profile; no I/O.

Every refusal carries a stable code (tested, documented in docs/requesting.md) and a message that says
what to change. `review` collects every reason rather than stopping at the first, so a requester
fixes everything in one round.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from shared.contract.events import EnrollmentRequested, ProvisionerRegistered
from shared.contract.profiles import (
    Profile,
    key_problem,
    key_type_of,
    names_problems,
    requested_extension_problems,
    validity_problem,
)
from shared.contract.reasons import Reason
from shared.pki.crypto import spki_sha256
from shared.pki.tokens import (
    ProvisionerPublicKey,
    TokenClaims,
    TokenError,
    algorithm_for,
    provisioner_id_of,
    verify_token,
)


@dataclass(frozen=True)
class Approval:
    """What enrollment approves: exactly these names, for this long."""

    dns_names: list[str]
    validity_days: int
    ip_addresses: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()


@dataclass(frozen=True)
class Names:
    """The subject alternative names a CSR asks for, by kind."""

    dns: list[str]
    ips: list[str]
    emails: list[str]


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest | Reason:
    """The parsed CSR, or why it cannot be parsed."""
    if "\x00" in csr_pem or len(csr_pem) > 256 * 1024:
        return Reason(code="csr_malformed", message="the CSR is not PEM text of a sensible size")
    try:
        return x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as exc:
        return Reason(code="csr_malformed", message=f"the CSR is not a valid PEM PKCS#10 request: {exc}")


def csr_der(csr: x509.CertificateSigningRequest) -> bytes:
    """The CSR's DER bytes (what a token proof signs over)."""
    return csr.public_bytes(serialization.Encoding.DER)


def requested_names(csr: x509.CertificateSigningRequest) -> Names | Reason:
    """The names a CSR's subjectAltName asks for, or why they cannot be read."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Names([], [], [])
    except x509.UnsupportedGeneralNameType as exc:  # x400Address, ediPartyName: never certified
        return Reason(
            code="name_type_not_allowed",
            message=f"the CSR's subjectAltName holds a name type Certbus never certifies: {exc}",
        )
    except (ValueError, UnicodeError, x509.DuplicateExtension) as exc:
        return Reason(code="csr_malformed", message=f"the CSR's extensions cannot be read: {exc}")
    names = Names([], [], [])
    for entry in san:
        if isinstance(entry, x509.DNSName):
            names.dns.append(entry.value)
        elif isinstance(entry, x509.IPAddress):
            names.ips.append(str(entry.value))
        elif isinstance(entry, x509.RFC822Name):
            names.emails.append(entry.value)
        else:
            return Reason(
                code="name_type_not_allowed",
                message=f"subjectAltName entries of type {type(entry).__name__} are not certified",
            )
    return names


def review(
    csr: x509.CertificateSigningRequest,
    claims: TokenClaims,
    profile: Profile,
    validity_days: int | None,
    blocked_keys: frozenset[str] = frozenset(),
) -> Approval | list[Reason]:
    """Approve the CSR under `profile` and the token's allowances, or say every reason not to."""
    names, days, reasons = _assess(csr, profile, validity_days, blocked_keys)
    if claims.profile != profile.name:
        reasons.append(
            Reason(
                code="profile_not_allowed", message=f"the token is for profile {claims.profile!r}, not {profile.name!r}"
            )
        )
    if names is not None:
        allowed = set(claims.dns_names)
        for name in dict.fromkeys([*names.dns, *names.ips, *names.emails]):
            if name not in allowed:
                reasons.append(
                    Reason(
                        code="name_not_allowed",
                        message=f"{name!r} is not allowed by the token, which allows {', '.join(sorted(allowed))}",
                    )
                )
    return reasons if reasons or names is None else _approval(names, days)


def judge(
    csr: x509.CertificateSigningRequest,
    profile: Profile,
    validity_days: int | None,
    blocked_keys: frozenset[str] = frozenset(),
) -> Approval | list[Reason]:
    """Approve the CSR under `profile` alone (an operator's approval of a request whose token was
    checked when it arrived), or say every reason not to."""
    names, days, reasons = _assess(csr, profile, validity_days, blocked_keys)
    return reasons if reasons or names is None else _approval(names, days)


def _approval(names: Names, days: int) -> Approval:
    return Approval(
        dns_names=list(dict.fromkeys(names.dns)),
        validity_days=days,
        ip_addresses=tuple(dict.fromkeys(names.ips)),
        emails=tuple(dict.fromkeys(names.emails)),
    )


def _assess(
    csr: x509.CertificateSigningRequest, profile: Profile, validity_days: int | None, blocked_keys: frozenset[str]
) -> tuple[Names | None, int, list[Reason]]:
    """The CSR's names (None if they cannot be judged one by one), validity and every problem."""
    days = profile.default_validity_days if validity_days is None else validity_days
    reasons = check_csr(csr, profile, blocked_keys)
    if (too_long := validity_problem(profile, days)) is not None:
        reasons.append(too_long)
    names = requested_names(csr)
    if isinstance(names, Reason):
        return None, days, reasons if names in reasons else [*reasons, names]
    problems = names_problems(profile, names.dns, names.ips, names.emails)
    reasons += problems
    if any(r.code == "too_many_names" for r in problems):
        return None, days, reasons  # do not judge a thousand names one by one
    reasons += _common_name_problems(csr, names)
    return names, days, reasons


def check_csr(csr: x509.CertificateSigningRequest, profile: Profile, blocked_keys: frozenset[str]) -> list[Reason]:
    """The CSR's own soundness under `profile`: signature, key, and extensions it asks for."""
    reasons: list[Reason] = []
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return [Reason(code="key_unsupported", message=f"the CSR's public key cannot be used: {exc}")]
    if (key_reason := key_problem(profile, public_key)) is not None:
        reasons.append(key_reason)
    elif not _signature_valid(csr):
        reasons.append(
            Reason(
                code="csr_signature_invalid",
                message="the CSR's signature does not verify: it was not signed by its own key",
            )
        )
    if key_reason is None and spki_sha256(public_key) in blocked_keys:  # type: ignore[arg-type]
        reasons.append(
            Reason(
                code="key_blocked",
                message="this public key is blocked (it was reported compromised): generate a new key",
            )
        )
    try:
        extensions = csr.extensions
    except (ValueError, UnicodeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        return [*reasons, Reason(code="csr_malformed", message=f"the CSR's extensions cannot be read: {exc}")]
    reasons += requested_extension_problems(profile, extensions)
    return reasons


def _signature_valid(csr: x509.CertificateSigningRequest) -> bool:
    try:
        return csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        return False


def _common_name_problems(csr: x509.CertificateSigningRequest, names: Names) -> list[Reason]:
    try:
        attributes = list(csr.subject)
    except (ValueError, UnicodeError) as exc:
        return [Reason(code="csr_malformed", message=f"the CSR's subject cannot be read: {exc}")]
    reasons = []
    for attribute in attributes:
        if attribute.oid != x509.NameOID.COMMON_NAME:
            continue  # other subject attributes are not copied into the certificate
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.decode("latin-1")
        if value not in names.dns and value not in names.ips:
            reasons.append(
                Reason(
                    code="cn_not_in_sans",
                    message=f"the CSR's common name {value!r} is not one of its subject alternative names",
                )
            )
    return reasons


_PROFILES: dict[str, Profile] = {}


@dataclass(frozen=True)
class Scope:
    """What a provisioner may enroll for (None: no limit of that kind)."""

    profiles: tuple[str, ...] | None = None
    name_suffixes: tuple[str, ...] | None = None
    requesters: tuple[str, ...] | None = None
    max_per_hour: int | None = None

    @classmethod
    def of(cls, registered: ProvisionerRegistered) -> Scope:
        """The scope a registration gives."""

        def tupled(values: list[str] | None) -> tuple[str, ...] | None:
            return tuple(values) if values is not None else None

        return cls(
            tupled(registered.profiles),
            tupled(registered.name_suffixes),
            tupled(registered.requesters),
            registered.max_per_hour,
        )


def scope_problems(
    provisioner_id: str,
    scope: Scope,
    profile: Profile,
    *,
    names: Sequence[str],
    requester: str,
    issued_last_hour: int,
) -> list[Reason]:
    """Why a provisioner's token may not enroll this request: the profile, a name or the requester
    is outside the provisioner's scope, the profile is reserved for other provisioners, or the
    provisioner enrolled its hourly limit already."""
    reasons = []
    if profile.provisioners is not None and provisioner_id not in profile.provisioners:
        reasons.append(
            Reason(
                code="provisioner_not_allowed",
                message=f"profile {profile.name!r} may be enrolled only with the tokens of "
                f"{', '.join(profile.provisioners) or 'no provisioner'}, not {provisioner_id!r}'s",
            )
        )
    if scope.profiles is not None and profile.name not in scope.profiles:
        reasons.append(
            Reason(
                code="provisioner_scope",
                message=f"provisioner {provisioner_id!r} may enroll only under "
                f"{', '.join(scope.profiles) or 'no profile'}, not {profile.name!r}",
            )
        )
    if scope.name_suffixes is not None:
        for name in names:
            domain = name.rsplit("@", 1)[-1].lower().rstrip(".")
            if ":" in domain or all(c.isdigit() or c == "." for c in domain):
                continue  # an IP address: the profile's ip_ranges govern it
            if not any(_under(domain, suffix) for suffix in scope.name_suffixes):
                reasons.append(
                    Reason(
                        code="provisioner_scope",
                        message=f"provisioner {provisioner_id!r} may enroll names under "
                        f"{', '.join(scope.name_suffixes) or 'no suffix'} only, not {name!r}",
                    )
                )
    if scope.requesters is not None and requester not in scope.requesters:
        reasons.append(
            Reason(
                code="provisioner_scope",
                message=f"provisioner {provisioner_id!r}'s tokens may be used only by "
                f"{', '.join(scope.requesters) or 'nobody'}, not by {requester!r}",
            )
        )
    if scope.max_per_hour is not None and issued_last_hour >= scope.max_per_hour:
        reasons.append(
            Reason(
                code="rate_limited",
                message=f"provisioner {provisioner_id!r} enrolled its limit of {scope.max_per_hour} certificates "
                "in the last hour: try later, or ask an operator to raise its limit",
            )
        )
    return reasons


def _under(name: str, suffix: str) -> bool:
    suffix = suffix.lower().strip(".")
    return name == suffix or name.endswith("." + suffix)


def profile_of(body: dict[str, Any], digest: str) -> Profile:
    """The Profile of a stored body, parsed once per process per version (keyed by its digest,
    which names its content; the body is still read from the table, so a new version applies at once)."""
    profile = _PROFILES.get(digest)
    if profile is None:
        profile = Profile.model_validate(body)
        if len(_PROFILES) > 256:
            _PROFILES.clear()
        _PROFILES[digest] = profile
    return profile


def readiness_missing(applied: int, usable: int) -> list[str]:
    """What enrollment lacks to approve any request: a profile applied, and one that passed lint."""
    if applied == 0:
        return ["no profile is applied (certbus profile apply deploy/profiles.toml): every request is refused"]
    if usable == 0:
        return [f"all {applied} applied profile(s) failed signing's lint check: fix them and apply them again"]
    return []


# --- a first enrollment: judged by a one-time token, the profile and the provisioner's scope -----


@dataclass(frozen=True)
class EnrollmentContext:
    """Everything a first enrollment is judged by besides the request itself (read in one round trip)."""

    provisioner_key_pem: str | None = None  # None: no such provisioner
    provisioner_status: str | None = None
    profile_body: dict[str, Any] | None = None  # the current version of the profile asked for
    profile_digest: str | None = None
    profile_unusable: bool = False  # it failed its lint check
    blocked_keys: frozenset[str] = frozenset()  # the CSR's key, if it is blocked
    scope: Scope = field(default_factory=Scope)
    issued_last_hour: int = 0  # requests the provisioner enrolled in the hour before the request


@dataclass(frozen=True)
class EnrollmentDecision:
    """The verdict on a first enrollment, before its token is spent.

    `claims` is the verified token, to be spent whatever else is wrong with the request (None: it
    did not verify, and nothing is spent); a token spent before turns the verdict into `token_reused`.
    `profile` and `profile_digest` are those the request was judged under, once it got that far.
    """

    outcome: Approval | list[Reason]
    claims: TokenClaims | None = None
    profile: Profile | None = None
    profile_digest: str | None = None


TOKEN_REUSED = Reason(code="token_reused", message="the token has already been used: each token enrolls once")


def key_id(csr: x509.CertificateSigningRequest) -> str | None:
    """The SHA-256 of the CSR's public key (how blocked keys are named), None for a key it cannot be."""
    try:
        public_key = csr.public_key()
        return spki_sha256(public_key) if key_type_of(public_key) else None  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def review_enrollment(
    request: EnrollmentRequested,
    csr: x509.CertificateSigningRequest | Reason,
    ctx: EnrollmentContext | None,
    *,
    at: datetime,
    max_token_ttl: timedelta,
) -> EnrollmentDecision:
    """Judge a first enrollment: its CSR, its token (at `at`, when the log accepted the request: a
    request accepted while enrollment was down is not refused for that), then the profile, the
    token's allowances and the provisioner's scope. `ctx` is None only when the CSR or the token
    could not even name what to read."""
    if isinstance(csr, Reason):
        return EnrollmentDecision([csr])
    try:
        provisioner_id = provisioner_id_of(request.token)
        assert ctx is not None
        key = provisioner_key(provisioner_id, ctx)
        claims = verify_token(
            request.token, request.token_proof, key, request.aggregate_id, csr_der(csr), at, max_token_ttl
        )
    except TokenError as exc:
        return EnrollmentDecision([Reason(code=exc.code, message=exc.message)])
    if ctx.profile_body is None:
        message = f"there is no profile {request.profile!r}: see `certbus profile list`"
        return EnrollmentDecision([Reason(code="profile_unknown", message=message)], claims)
    if ctx.profile_unusable:
        message = f"profile {request.profile!r} failed its lint check and cannot be used until it is fixed"
        return EnrollmentDecision([Reason(code="profile_unusable", message=message)], claims)
    profile = profile_of(ctx.profile_body, ctx.profile_digest or "")
    decision = review(csr, claims, profile, request.validity_days, ctx.blocked_keys)
    names = requested_names(csr)
    named = [*names.dns, *names.ips, *names.emails] if isinstance(names, Names) else []
    out_of_scope = scope_problems(
        claims.provisioner_id,
        ctx.scope,
        profile,
        names=named,
        requester=request.requester,
        issued_last_hour=ctx.issued_last_hour,
    )
    if isinstance(decision, list) or out_of_scope:
        decision = [*out_of_scope, *(decision if isinstance(decision, list) else [])]
    return EnrollmentDecision(decision, claims, profile, ctx.profile_digest)


def provisioner_key(provisioner_id: str, ctx: EnrollmentContext) -> ProvisionerPublicKey:
    """The key that signs the provisioner's tokens; TokenError if it is unknown, removed or disabled."""
    if ctx.provisioner_key_pem is None or ctx.provisioner_status == "removed":
        raise TokenError("provisioner_unknown", f"the token's provisioner {provisioner_id!r} is not registered")
    if ctx.provisioner_status == "disabled":
        raise TokenError(
            "provisioner_disabled", f"provisioner {provisioner_id!r} is disabled: its tokens no longer work"
        )
    key = _public_key(ctx.provisioner_key_pem)
    algorithm_for(key)  # raises for a key type no token can be signed with
    return key  # type: ignore[return-value]


@functools.lru_cache(maxsize=256)
def _public_key(pem: str) -> PublicKeyTypes:
    """A provisioner's key parsed once per process (read from the table on every request, so a
    change of key takes effect at once; only the parsing is cached, by the PEM itself)."""
    return serialization.load_pem_public_key(pem.encode())
