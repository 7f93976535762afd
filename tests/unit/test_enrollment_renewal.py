"""Enrollment's renewal decision and schedule: every refusal, one at a time, with no I/O."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pki_builders import NOW, TLS_SERVER, csr_pem, make_csr, make_profile, patched_csr
from services.enrollment.domain import Approval, Names, csr_der, load_csr
from services.enrollment.handlers import expire_overdue
from services.enrollment.renewal import (
    Certified,
    RenewalContext,
    RenewalRequest,
    names_changed,
    renew_at,
    review_renewal,
)
from shared.contract.events import renewal_message
from shared.contract.reasons import Reason
from shared.pki.crypto import PrivateKey, sign_message, spki_der, spki_sha256

NAMES = ["app.example.internal", "api.example.internal"]
SERIAL = "1a2b3c"
REQUEST_ID = "renewal-1"
GRACE = timedelta(hours=1)


def _codes(outcome: Approval | list[Reason]) -> list[str]:
    assert isinstance(outcome, list), f"expected reasons, got {outcome!r}"
    return [r.code for r in outcome]


@pytest.fixture
def current_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certified(key: PrivateKey, **changes: object) -> Certified:
    cert = Certified(
        cert_id="cert-1",
        serial=SERIAL,
        profile="tls-server",
        not_after=NOW + timedelta(days=10),
        spki_sha256=spki_sha256(key.public_key()),
        spki_der=spki_der(key.public_key()),
        names=Names(list(NAMES), [], []),
        provisioner_id="prov-1",
    )
    return replace(cert, **changes)  # type: ignore[arg-type]


def _csr(key: PrivateKey, names: list[str] = NAMES) -> x509.CertificateSigningRequest:
    csr = load_csr(csr_pem(make_csr(key, names)))
    assert not isinstance(csr, Reason)
    return csr


def _request(
    signer: PrivateKey, csr: x509.CertificateSigningRequest, request_id: str = REQUEST_ID, serial: str = SERIAL
) -> RenewalRequest:
    proof = sign_message(signer, renewal_message(request_id, serial, csr_der(csr)))
    return RenewalRequest(REQUEST_ID, SERIAL, base64.b64encode(proof).decode(), None)


def _review(
    current_key: PrivateKey,
    new_key: PrivateKey,
    *,
    csr: x509.CertificateSigningRequest | None = None,
    request: RenewalRequest | None = None,
    at: object = None,
    **context: object,
) -> Approval | list[Reason]:
    """Review a renewal of `_certified(current_key)` to `new_key`, signed by `current_key`, under TLS_SERVER."""
    csr = csr or _csr(new_key)
    ctx_fields: dict[str, object] = {
        "certificate": _certified(current_key),
        "profile": TLS_SERVER,
        "profile_name": "tls-server",
    }
    ctx_fields.update(context)
    ctx = RenewalContext(**ctx_fields)  # type: ignore[arg-type]
    return review_renewal(request or _request(current_key, csr), csr, ctx, at or NOW, GRACE)  # type: ignore[arg-type]


# --- approval -------------------------------------------------------------------------------------


def test_a_renewal_signed_by_the_current_key_for_a_new_key_and_the_same_names_is_approved(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    outcome = _review(current_key, new_key)
    assert outcome == Approval(dns_names=NAMES, validity_days=TLS_SERVER.default_validity_days)


def test_names_in_another_order_are_the_same_names(current_key: PrivateKey, new_key: PrivateKey) -> None:
    assert isinstance(_review(current_key, new_key, csr=_csr(new_key, list(reversed(NAMES)))), Approval)


def test_a_certificate_revoked_because_its_ca_was_compromised_can_be_renewed(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    by_ca = _certified(current_key, revoked_reason="cACompromise", revoked_by="ca_compromise")
    assert isinstance(_review(current_key, new_key, certificate=by_ca), Approval)
    holder_said_so = _certified(current_key, revoked_reason="cACompromise", revoked_by="holder")
    assert isinstance(_review(current_key, new_key, certificate=holder_said_so), Approval)


def test_a_certificate_just_expired_can_be_renewed_within_the_grace(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    cert = _certified(current_key)
    assert isinstance(_review(current_key, new_key, at=cert.not_after + GRACE), Approval)


# --- the certificate ----------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code"), [("disabled", "provisioner_disabled"), ("removed", "provisioner_unknown")])
def test_a_certificate_whose_provisioner_is_disabled_or_removed_is_not_renewed(
    current_key: PrivateKey, new_key: PrivateKey, status: str, code: str
) -> None:
    outcome = _review(current_key, new_key, provisioner_status=status)
    assert isinstance(outcome, list) and [r.code for r in outcome] == [code]
    assert "prov-1" in outcome[0].message and "token" in outcome[0].message


def test_an_unknown_serial_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    outcome = _review(current_key, new_key, certificate=None)
    assert _codes(outcome) == ["certificate_unknown"]
    assert SERIAL in outcome[0].message  # type: ignore[index]


def test_a_request_signed_by_another_key_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    csr = _csr(new_key)
    other = ec.generate_private_key(ec.SECP256R1())
    assert _codes(_review(current_key, new_key, csr=csr, request=_request(other, csr))) == ["renewal_proof_invalid"]
    # The new key's own signature proves nothing about the current certificate either.
    assert _codes(_review(current_key, new_key, csr=csr, request=_request(new_key, csr))) == ["renewal_proof_invalid"]


def test_a_proof_for_another_request_serial_or_csr_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    csr = _csr(new_key)
    for request in (
        _request(current_key, csr, request_id="another-request"),
        _request(current_key, csr, serial="ffff"),
        _request(current_key, _csr(ec.generate_private_key(ec.SECP256R1()))),
    ):
        assert _codes(_review(current_key, new_key, csr=csr, request=request)) == ["renewal_proof_invalid"]


def test_a_proof_that_is_not_base64_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    request = RenewalRequest(REQUEST_ID, SERIAL, "not base64!", None)
    assert _codes(_review(current_key, new_key, request=request)) == ["renewal_proof_invalid"]


@pytest.mark.parametrize("reason", ["superseded", "cessationOfOperation", "affiliationChanged", "unspecified"])
def test_a_revoked_certificate_is_refused(current_key: PrivateKey, new_key: PrivateKey, reason: str) -> None:
    revoked = _certified(current_key, revoked_reason=reason, revoked_by="holder")
    outcome = _review(current_key, new_key, certificate=revoked)
    assert _codes(outcome) == ["certificate_revoked"]
    assert reason in outcome[0].message  # type: ignore[index]


def test_a_certificate_revoked_for_key_compromise_is_refused_with_a_pointer_to_a_token(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    for revoked in (
        _certified(current_key, revoked_reason="keyCompromise", revoked_by="holder"),
        _certified(current_key, revoked_reason="keyCompromise", revoked_by="key_compromise"),
    ):
        outcome = _review(current_key, new_key, certificate=revoked)
        assert _codes(outcome) == ["certificate_revoked"]
        assert "compromised" in outcome[0].message and "token" in outcome[0].message  # type: ignore[index]


def test_a_certificate_expired_beyond_the_grace_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    cert = _certified(current_key)
    outcome = _review(current_key, new_key, at=cert.not_after + GRACE + timedelta(seconds=1))
    assert _codes(outcome) == ["certificate_expired"]
    assert "1 h" in outcome[0].message  # type: ignore[index]


def test_a_destroyed_certificate_is_refused_even_without_its_public_key(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    destroyed = _certified(current_key, destroyed=True, spki_der=None, names=Names([], [], []))
    assert _codes(_review(current_key, new_key, certificate=destroyed)) == ["certificate_destroyed"]


def test_a_certificate_already_renewed_is_refused_naming_its_successor(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    renewed = _certified(current_key, superseded_by="beef01")
    outcome = _review(current_key, new_key, certificate=renewed)
    assert _codes(outcome) == ["certificate_superseded"]
    assert "beef01" in outcome[0].message  # type: ignore[index]


def test_a_second_renewal_while_one_is_pending_is_refused_naming_it(
    current_key: PrivateKey, new_key: PrivateKey
) -> None:
    busy = _certified(current_key, renewal_in_flight="renewal-0")
    outcome = _review(current_key, new_key, certificate=busy)
    assert _codes(outcome) == ["renewal_in_progress"]
    assert "renewal-0" in outcome[0].message  # type: ignore[index]


# --- the new key and CSR ------------------------------------------------------------------------


def test_the_current_key_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    outcome = _review(current_key, current_key)
    assert _codes(outcome) == ["key_reused"]
    assert "NEW key" in outcome[0].message  # type: ignore[index]


def test_a_key_certified_before_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    outcome = _review(current_key, new_key, key_certified_as="0ld5e41")
    assert _codes(outcome) == ["key_reused"]
    assert "0ld5e41" in outcome[0].message  # type: ignore[index]


def test_a_blocked_key_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    assert _codes(_review(current_key, new_key, key_blocked=True)) == ["key_blocked"]


def test_a_csr_whose_signature_does_not_verify_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    good = make_csr(new_key, NAMES)
    bad = patched_csr(good, b"app.example", b"apq.example")  # in the signed part; signature untouched
    csr = load_csr(csr_pem(bad))
    assert not isinstance(csr, Reason)
    assert "csr_signature_invalid" in _codes(_review(current_key, new_key, csr=csr))


def test_a_malformed_csr_is_refused() -> None:
    garbage = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    outcome = load_csr(garbage)
    assert isinstance(outcome, Reason) and outcome.code == "csr_malformed"


def test_an_unknown_profile_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    outcome = _review(current_key, new_key, profile=None, profile_name="gone")
    assert _codes(outcome) == ["profile_unknown"]
    assert "'gone'" in outcome[0].message  # type: ignore[index]


def test_a_profile_that_failed_its_lint_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    assert _codes(_review(current_key, new_key, profile_unusable=True)) == ["profile_unusable"]


def test_the_current_profile_version_judges_the_key_type(current_key: PrivateKey, new_key: PrivateKey) -> None:
    p384_only = make_profile(key_types=["ec-p384"])
    assert _codes(_review(current_key, new_key, profile=p384_only)) == ["key_type_not_allowed"]


def test_the_current_profile_version_judges_the_validity(current_key: PrivateKey, new_key: PrivateKey) -> None:
    csr = _csr(new_key)
    request = replace(_request(current_key, csr), validity_days=TLS_SERVER.max_validity_days + 1)
    assert _codes(_review(current_key, new_key, csr=csr, request=request)) == ["validity_too_long"]


def test_the_current_profile_version_judges_the_names(current_key: PrivateKey, new_key: PrivateKey) -> None:
    narrower = make_profile(dns_suffixes=["corp.internal"])
    assert set(_codes(_review(current_key, new_key, profile=narrower))) == {"name_not_in_profile"}


def test_a_renewal_that_adds_or_drops_names_is_refused(current_key: PrivateKey, new_key: PrivateKey) -> None:
    more = _review(current_key, new_key, csr=_csr(new_key, [*NAMES, "extra.example.internal"]))
    assert _codes(more) == ["names_changed"]
    assert "adds extra.example.internal" in more[0].message  # type: ignore[index]
    fewer = _review(current_key, new_key, csr=_csr(new_key, NAMES[:1]))
    assert _codes(fewer) == ["names_changed"]
    assert "drops api.example.internal" in fewer[0].message  # type: ignore[index]


def test_every_problem_of_the_new_key_is_reported_at_once(current_key: PrivateKey, new_key: PrivateKey) -> None:
    outcome = _review(current_key, current_key, csr=_csr(current_key, NAMES[:1]), key_blocked=True)
    assert set(_codes(outcome)) == {"key_reused", "key_blocked", "names_changed"}


def test_names_changed_compares_dns_names_without_case() -> None:
    assert names_changed(Names(["App.Example.Internal"], [], []), Names(["app.example.internal"], [], [])) is None
    assert names_changed(Names([], ["10.0.0.1"], []), Names([], ["10.0.0.2"], [])) is not None


# --- the schedule -------------------------------------------------------------------------------


def test_renewal_falls_due_when_a_third_of_the_lifetime_remains_by_default() -> None:
    assert renew_at(NOW, NOW + timedelta(days=30), TLS_SERVER) == NOW + timedelta(days=20)


def test_renewal_falls_due_when_the_profile_says() -> None:
    profile = make_profile(renew_when_remaining=0.5)
    assert renew_at(NOW, NOW + timedelta(days=30), profile) == NOW + timedelta(days=15)


def test_a_profile_that_does_not_renew_automatically_schedules_no_renewal() -> None:
    assert renew_at(NOW, NOW + timedelta(days=30), make_profile(auto_renew=False)) is None


# --- timers wait until the log has been read through ----------------------------------------------


class _Behind:
    """A log position whose consumer has not caught up yet (a rebuild in progress)."""

    async def caught_up(self) -> bool:
        return False


async def test_pending_requests_are_not_expired_while_the_consumer_is_still_reading_the_log() -> None:
    # The runtime is never touched: the sweep stops before reading any table.
    assert await expire_overdue(object(), _Behind()) == 0  # type: ignore[arg-type]
