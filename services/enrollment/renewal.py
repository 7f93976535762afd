"""Renewal decisions and the renewal schedule: pure functions of what enrollment knows; no I/O.

A renewal needs no token: the request is signed with the current certificate's key (possession)
and carries a CSR for a new key, for exactly the names the current certificate has. Every refusal
carries a stable code (documented in docs/requesting.md) and a message that says what to do instead.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from services.enrollment.domain import Approval, Names, csr_der, judge, requested_names
from shared.contract.events import renewal_message
from shared.contract.profiles import Profile
from shared.contract.reasons import Reason
from shared.pki.crypto import load_spki, spki_sha256, verify_message

# Revocations that leave the key the holder's own: its CA, not the key, was compromised.
CA_COMPROMISE_REASON = "cACompromise"
CA_COMPROMISE_AUTHORITY = "ca_compromise"


@dataclass(frozen=True)
class Certified:
    """What enrollment knows of the certificate a renewal names."""

    cert_id: str
    serial: str
    profile: str
    not_after: datetime
    spki_sha256: str
    spki_der: bytes | None  # None once the certificate is destroyed (its body is purged)
    names: Names
    destroyed: bool = False
    revoked_reason: str | None = None
    revoked_by: str | None = None
    superseded_by: str | None = None
    renewal_in_flight: str | None = None  # a renewal of it already pending or approved (request id)
    provisioner_id: str | None = None  # the provisioner whose token enrolled its first ancestor


@dataclass(frozen=True)
class RenewalContext:
    """Everything a renewal is judged by besides the request itself."""

    certificate: Certified | None
    profile: Profile | None  # the current version of the profile asked for (or the certificate's)
    profile_name: str
    profile_unusable: bool = False
    key_certified_as: str | None = None  # the serial the CSR's key was certified under, if ever
    key_blocked: bool = False
    provisioner_status: str | None = "active"  # of the provisioner that enrolled the certificate


@dataclass(frozen=True)
class RenewalRequest:
    """The parts of a RenewalRequested the decision reads."""

    request_id: str
    renews_serial: str
    proof: str
    validity_days: int | None


def renew_at(not_before: datetime, not_after: datetime, profile: Profile | None) -> datetime | None:
    """When a certificate's renewal falls due (None if its profile does not renew automatically):
    when `renew_when_remaining` of its lifetime is left."""
    if profile is not None and not profile.auto_renew:
        return None
    remaining = profile.renew_when_remaining if profile is not None else 1 / 3
    return not_after - (not_after - not_before) * remaining


def proof_valid(request: RenewalRequest, public_key_der: bytes, csr: x509.CertificateSigningRequest) -> bool:
    """Whether `proof` is the certificate key's signature over this request, serial and CSR."""
    try:
        signature = base64.b64decode(request.proof, validate=True)
        public_key = load_spki(public_key_der)
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return False
    message = renewal_message(request.request_id, request.renews_serial, csr_der(csr))
    return verify_message(public_key, signature, message)


def certificate_problem(cert: Certified, at: datetime, grace: timedelta) -> Reason | None:
    """Why this certificate cannot be renewed any more at `at` (or None)."""
    if cert.destroyed:
        return _destroyed(cert)
    if cert.superseded_by is not None:
        return Reason(
            code="certificate_superseded",
            message=f"certificate {cert.serial} was already renewed (its successor is serial {cert.superseded_by}): "
            "renew the successor instead",
        )
    if cert.revoked_reason is not None and not revoked_for_ca_compromise(cert):
        if cert.revoked_reason == "keyCompromise" or cert.revoked_by == "key_compromise":
            message = (
                f"certificate {cert.serial} was revoked because its key was compromised: that key cannot prove "
                "anything any more; enroll a new key with a token from your provisioner"
            )
        else:
            message = (
                f"certificate {cert.serial} was revoked ({cert.revoked_reason}) and cannot be renewed: "
                "enroll with a token instead"
            )
        return Reason(code="certificate_revoked", message=message)
    if at > cert.not_after + grace:
        return Reason(
            code="certificate_expired",
            message=f"certificate {cert.serial} expired at {cert.not_after:%Y-%m-%d %H:%M} UTC, longer ago than the "
            f"{_duration(grace)} renewal grace: enroll again with a token",
        )
    return None


def _destroyed(cert: Certified) -> Reason:
    return Reason(
        code="certificate_destroyed",
        message=f"certificate {cert.serial} was destroyed and can never be renewed: enroll a new key with a token",
    )


def revoked_for_ca_compromise(cert: Certified) -> bool:
    """A certificate revoked because its CA was compromised: the key is still only its holder's."""
    return cert.revoked_by == CA_COMPROMISE_AUTHORITY or cert.revoked_reason == CA_COMPROMISE_REASON


def review_renewal(
    request: RenewalRequest,
    csr: x509.CertificateSigningRequest,
    ctx: RenewalContext,
    at: datetime,
    grace: timedelta,
) -> Approval | list[Reason]:
    """Approve a renewal, or say why not.

    The certificate's own state is judged first, one reason (nothing the requester can fix); then
    every problem of the new key and CSR is collected, so that they are fixed in one round."""
    cert = ctx.certificate
    if cert is None:
        return [
            Reason(
                code="certificate_unknown",
                message=f"no certificate with serial {request.renews_serial} was issued here: check the serial, "
                "or enroll with a token",
            )
        ]
    if cert.destroyed:  # its public key is purged: nothing to check a proof against
        return [_destroyed(cert)]
    if cert.spki_der is None or not proof_valid(request, cert.spki_der, csr):
        return [
            Reason(
                code="renewal_proof_invalid",
                message=f"the request is not signed with the key of certificate {cert.serial}: sign "
                "renewal_message(request id, serial, CSR DER) with the current certificate's private key",
            )
        ]
    if (problem := certificate_problem(cert, at, grace)) is not None:
        return [problem]
    if cert.renewal_in_flight is not None and cert.renewal_in_flight != request.request_id:
        return [
            Reason(
                code="renewal_in_progress",
                message=f"certificate {cert.serial} is already being renewed by request {cert.renewal_in_flight}: "
                f"follow that one (`certbus requests show {cert.renewal_in_flight}`)",
            )
        ]
    if (refused := provisioner_problem(cert, ctx.provisioner_status)) is not None:
        return [refused]
    if ctx.profile is None:
        return [
            Reason(
                code="profile_unknown",
                message=f"there is no profile {ctx.profile_name!r}: see `certbus profile list`",
            )
        ]
    if ctx.profile_unusable:
        return [
            Reason(
                code="profile_unusable",
                message=f"profile {ctx.profile_name!r} failed its lint check and cannot be used until it is fixed",
            )
        ]
    reasons = _key_reuse(csr, cert, ctx.key_certified_as)
    blocked = frozenset({_spki_of(csr) or ""}) if ctx.key_blocked else frozenset()
    outcome = judge(csr, ctx.profile, request.validity_days, blocked)
    if isinstance(outcome, list):
        reasons += outcome
    names = requested_names(csr)
    if not isinstance(names, Reason) and (changed := names_changed(cert.names, names)) is not None:
        reasons.append(changed)
    return reasons or outcome


def provisioner_problem(cert: Certified, status: str | None) -> Reason | None:
    """A certificate is renewed on the authority of the provisioner whose token first enrolled it (as
    step-ca does): once that provisioner is disabled or removed, its certificates are not renewed."""
    if cert.provisioner_id is None or status == "active":
        return None
    if status == "disabled":
        return Reason(
            code="provisioner_disabled",
            message=f"certificate {cert.serial} was enrolled through provisioner {cert.provisioner_id!r}, which is "
            "disabled: it cannot be renewed; enroll a new key with a token from an active provisioner",
        )
    return Reason(
        code="provisioner_unknown",
        message=f"certificate {cert.serial} was enrolled through provisioner {cert.provisioner_id!r}, which is no "
        "longer registered: enroll a new key with a token from an active provisioner",
    )


def names_changed(current: Names, requested: Names) -> Reason | None:
    """Why the requested names are not exactly the certificate's (a renewal never changes names)."""
    have = _name_set(current)
    want = _name_set(requested)
    if have == want:
        return None
    added = sorted(want - have)
    dropped = sorted(have - want)
    parts = []
    if added:
        parts.append(f"adds {', '.join(added)}")
    if dropped:
        parts.append(f"drops {', '.join(dropped)}")
    return Reason(
        code="names_changed",
        message=f"a renewal keeps exactly the certificate's names ({', '.join(sorted(have)) or 'none'}); this CSR "
        f"{' and '.join(parts)}: enroll with a token for other names",
    )


def _name_set(names: Names) -> set[str]:
    return {n.lower() for n in names.dns} | set(names.ips) | set(names.emails)


def _spki_of(csr: x509.CertificateSigningRequest) -> str | None:
    try:
        return spki_sha256(csr.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _key_reuse(csr: x509.CertificateSigningRequest, cert: Certified, certified_as: str | None) -> list[Reason]:
    spki = _spki_of(csr)
    if spki is None:
        return []  # the CSR checks say what is wrong with the key
    if spki == cert.spki_sha256:
        return [
            Reason(
                code="key_reused",
                message=f"the CSR's key is the key of certificate {cert.serial}: a renewal needs a NEW key",
            )
        ]
    if certified_as is not None:
        return [
            Reason(
                code="key_reused",
                message=f"the CSR's key was already certified (serial {certified_as}): generate a new key",
            )
        ]
    return []


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
