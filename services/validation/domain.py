"""Validation verdicts: pure functions of a certificate, the known CAs and the status record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature


@dataclass(frozen=True)
class StatusRecord:
    """What the log says about one serial."""

    serial: str
    status: str
    revoked_at: datetime | None = None
    reason: str | None = None
    destroyed_at: datetime | None = None


def public_status(
    status: str,
    expired_at: datetime | None,
    destroyed_at: datetime | None,
    not_after: datetime | None = None,
    now: datetime | None = None,
) -> str:
    """What `status` answers for a certificate: destroyed, else revoked, else expired, else good.

    `status` is the revocation status (good or revoked) that OCSP and CRLs go by: a destroyed
    certificate stays revoked there. A superseded certificate stays good until it expires. A
    certificate is expired once its notAfter (the last valid second, RFC 5280) has passed, whether
    or not enrollment's `CertificateExpired` has arrived yet.
    """
    if destroyed_at is not None:
        return "destroyed"
    if status == "revoked":
        return "revoked"
    if expired_at is not None or (not_after is not None and now is not None and now > not_after):
        return "expired"
    return status


@dataclass(frozen=True)
class Verdict:
    """The answer to `validate`: good, revoked, expired, not_yet_valid, untrusted or unknown."""

    status: str
    detail: str
    serial: str
    chain: tuple[str, ...] = ()
    revoked_at: datetime | None = None
    reason: str | None = None

    @property
    def good(self) -> bool:
        """True only for a certificate a relying party may accept."""
        return self.status == "good"


def _issuer_of(cert: x509.Certificate, cas: dict[str, x509.Certificate]) -> tuple[str, x509.Certificate] | None:
    for ca_id, ca in cas.items():
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca_id, ca
    return None


def _time_problem(cert: x509.Certificate, now: datetime, what: str) -> Verdict | None:
    serial = format(cert.serial_number, "x")
    if now < cert.not_valid_before_utc:
        return Verdict("not_yet_valid", f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}", serial)
    if now > cert.not_valid_after_utc:
        return Verdict("expired", f"{what} expired at {cert.not_valid_after_utc.isoformat()}", serial)
    return None


def validate(
    cert: x509.Certificate, cas: dict[str, x509.Certificate], record: StatusRecord | None, now: datetime
) -> Verdict:
    """Chain `cert` to a Certbus root, check every link's time, then the leaf's revocation status."""
    serial = format(cert.serial_number, "x")
    chain: list[str] = []
    current = cert
    for _ in range(8):
        found = _issuer_of(current, cas)
        if found is None:
            return Verdict(
                "untrusted",
                f"no Certbus CA issued {current.subject.rfc4514_string() or 'the certificate'} "
                f"(issuer {current.issuer.rfc4514_string()})",
                serial,
            )
        ca_id, ca = found
        chain.append(ca_id)
        problem = _time_problem(ca, now, f"CA {ca_id}")
        if problem is not None:
            return Verdict(problem.status, problem.detail, serial, tuple(chain))
        if ca.subject == ca.issuer:
            break
        current = ca
    else:
        return Verdict("untrusted", "the chain is too long", serial)
    problem = _time_problem(cert, now, "the certificate")
    if problem is not None:
        return Verdict(problem.status, problem.detail, serial, tuple(chain))
    if record is None:
        return Verdict(
            "unknown", "a Certbus CA signed this serial but the log has no issuance for it", serial, tuple(chain)
        )
    if record.status == "revoked":
        destroyed = f"; destroyed at {record.destroyed_at.isoformat()}" if record.destroyed_at else ""
        return Verdict(
            "revoked",
            f"revoked at {record.revoked_at.isoformat() if record.revoked_at else '?'} ({record.reason}){destroyed}",
            serial,
            tuple(chain),
            record.revoked_at,
            record.reason,
        )
    return Verdict("good", "chains to a Certbus root, within its validity, not revoked", serial, tuple(chain))


RENEW_WHEN_REMAINING = 1 / 3


def renewal_due(cert: x509.Certificate, now: datetime, when_remaining: float = RENEW_WHEN_REMAINING) -> bool:
    """Whether less than `when_remaining` of the certificate's lifetime is left at `now`."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * when_remaining


def responders_missing(
    issuing: Sequence[tuple[str, datetime]], served: Mapping[str, datetime], now: datetime, why: str | None = None
) -> list[str]:
    """What validation lacks to answer OCSP: an issuing CA heard of, and for each live one
    (`issuing`: its id and notAfter, compromised CAs left out) a responder valid at `now` (`served`:
    each responder's notAfter by CA). `why` is the last reason the responder could not be had."""
    if not issuing:
        return ["no live issuing CA known yet (signing announces one when it creates it)"]
    because = f" ({why})" if why else ""
    return [
        f"no current OCSP responder certificate for issuing CA {ca_id}: OCSP answers tryLater about it{because}"
        for ca_id, not_after in issuing
        if not_after > now and served.get(ca_id, now) <= now
    ]
