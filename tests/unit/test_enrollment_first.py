"""A first enrollment judged without a database: a context read once, then `review_enrollment`."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pki_builders import NOW, TLS_SERVER, csr_pem, make_csr
from services.enrollment.domain import (
    Approval,
    EnrollmentContext,
    Scope,
    key_id,
    load_csr,
    review_enrollment,
)
from shared.contract.events import EnrollmentRequested
from shared.contract.reasons import Reason
from shared.pki.holder import enrollment_request
from shared.pki.tokens import create_token

NAMES = ["www.example.internal"]
TTL = timedelta(hours=1)
AT = NOW + timedelta(seconds=10)


@pytest.fixture(scope="module")
def provisioner() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def holder_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def request_(provisioner: ed25519.Ed25519PrivateKey, holder_key: ec.EllipticCurvePrivateKey) -> EnrollmentRequested:
    token = create_token(provisioner, "prov-1", NAMES, NOW, timedelta(minutes=5))
    return enrollment_request(csr_pem(make_csr(holder_key, NAMES)), token, "svc-a")


@pytest.fixture(scope="module")
def ctx(provisioner: ed25519.Ed25519PrivateKey) -> EnrollmentContext:
    pem = provisioner.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return EnrollmentContext(
        provisioner_key_pem=pem.decode(),
        provisioner_status="active",
        profile_body=TLS_SERVER.model_dump(mode="json"),
        profile_digest=TLS_SERVER.digest(),
    )


def _review(request: EnrollmentRequested, ctx: EnrollmentContext | None, at: object = AT):  # type: ignore[no-untyped-def]
    return review_enrollment(request, load_csr(request.csr_pem), ctx, at=at, max_token_ttl=TTL)  # type: ignore[arg-type]


def _codes(outcome: Approval | list[Reason]) -> list[str]:
    assert isinstance(outcome, list), f"expected reasons, got {outcome!r}"
    return [r.code for r in outcome]


def test_a_valid_request_is_approved_with_its_token_to_spend(
    request_: EnrollmentRequested, ctx: EnrollmentContext
) -> None:
    verdict = _review(request_, ctx)
    assert isinstance(verdict.outcome, Approval)
    assert verdict.outcome.dns_names == NAMES
    assert verdict.claims is not None and verdict.claims.provisioner_id == "prov-1"
    assert (verdict.profile, verdict.profile_digest) == (TLS_SERVER, TLS_SERVER.digest())


def test_an_unreadable_csr_is_refused_and_spends_nothing(request_: EnrollmentRequested) -> None:
    bad = request_.model_copy(update={"csr_pem": "not a csr"})
    verdict = _review(bad, None)
    assert _codes(verdict.outcome) == ["csr_malformed"]
    assert verdict.claims is None


def test_a_malformed_token_is_refused_and_spends_nothing(request_: EnrollmentRequested) -> None:
    verdict = _review(request_.model_copy(update={"token": "garbage"}), None)
    assert _codes(verdict.outcome) == ["token_malformed"]
    assert verdict.claims is None


def test_an_unknown_provisioner_is_refused(request_: EnrollmentRequested) -> None:
    verdict = _review(request_, EnrollmentContext())
    assert _codes(verdict.outcome) == ["provisioner_unknown"]
    assert verdict.claims is None


def test_a_disabled_provisioner_is_refused(request_: EnrollmentRequested, ctx: EnrollmentContext) -> None:
    verdict = _review(request_, replace(ctx, provisioner_status="disabled"))
    assert _codes(verdict.outcome) == ["provisioner_disabled"]


def test_an_expired_token_is_refused_at_the_time_the_log_accepted_the_request(
    request_: EnrollmentRequested, ctx: EnrollmentContext
) -> None:
    assert _codes(_review(request_, ctx, at=NOW + timedelta(hours=1)).outcome) == ["token_expired"]


def test_an_unknown_profile_is_refused_but_the_token_is_still_spent(
    request_: EnrollmentRequested, ctx: EnrollmentContext
) -> None:
    verdict = _review(request_, replace(ctx, profile_body=None, profile_digest=None))
    assert _codes(verdict.outcome) == ["profile_unknown"]
    assert verdict.claims is not None


def test_a_profile_that_failed_lint_is_refused(request_: EnrollmentRequested, ctx: EnrollmentContext) -> None:
    verdict = _review(request_, replace(ctx, profile_unusable=True))
    assert _codes(verdict.outcome) == ["profile_unusable"]
    assert verdict.claims is not None


def test_a_blocked_key_is_refused(request_: EnrollmentRequested, ctx: EnrollmentContext) -> None:
    csr = load_csr(request_.csr_pem)
    assert not isinstance(csr, Reason)
    spki = key_id(csr)
    assert spki is not None
    assert "key_blocked" in _codes(_review(request_, replace(ctx, blocked_keys=frozenset({spki}))).outcome)


def test_the_provisioners_scope_comes_before_the_csrs_problems(
    request_: EnrollmentRequested, ctx: EnrollmentContext
) -> None:
    limited = replace(ctx, scope=Scope(max_per_hour=1), issued_last_hour=1, blocked_keys=frozenset())
    assert _codes(_review(request_, limited).outcome) == ["rate_limited"]
