"""Revocation decisions: reasons, who may revoke (the holder's proof or an operator), serial normalisation."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki_builders import NOW
from services.revocation.domain import (
    Ask,
    Known,
    authority,
    compromised_by,
    decide,
    decide_destruction,
    normalise_serial,
    public_key_of,
)
from shared.contract.events import revocation_message
from shared.contract.reasons import Reason
from shared.pki.crypto import KEY_TYPES, PrivateKey, generate_key, sign_message, spki_der, spki_sha256

HOLDER_KEY = ec.generate_private_key(ec.SECP256R1())


def _known(key: PrivateKey | None = HOLDER_KEY, status: str = "good") -> Known:
    der = spki_der(key.public_key()) if key is not None else None
    spki = spki_sha256(key.public_key()) if key is not None else None
    return Known(serial="abc123", cert_id="req-1", issuer_id="issuing-1", status=status, spki_sha256=spki, spki_der=der)


def _proof(key: PrivateKey, request_id: str = "rev-1", serial: str = "abc123", reason: str = "keyCompromise") -> str:
    return base64.b64encode(sign_message(key, revocation_message(request_id, serial, reason))).decode()


def _holder(reason: str = "keyCompromise", proof: str | None = None, serial: str = "abc123") -> Ask:
    return Ask("rev-1", serial, reason, "alice", "holder", proof if proof is not None else _proof(HOLDER_KEY))


def _operator(reason: str = "keyCompromise", serial: str = "abc123") -> Ask:
    return Ask("rev-1", serial, reason, "bob", "operator")


def _refusal(outcome: Known | Reason) -> Reason:
    assert isinstance(outcome, Reason), outcome
    return outcome


# --- who may revoke -----------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_the_holder_revokes_with_a_proof_made_with_the_certificates_key(key_type: str) -> None:
    key = generate_key(key_type)  # type: ignore[arg-type]
    known = _known(key)
    assert decide(_holder(proof=_proof(key)), known) == known


def test_an_operator_revokes_without_a_proof() -> None:
    assert decide(_operator(), _known()) == _known()


def test_an_operator_revokes_a_certificate_whose_key_revocation_never_learnt() -> None:
    assert decide(_operator(), _known(key=None)) == _known(key=None)


def test_a_request_without_proof_is_not_authorised_and_says_both_ways_to_revoke() -> None:
    refused = _refusal(decide(Ask("rev-1", "abc123", "superseded", "mallory", "holder", None), _known()))
    assert refused.code == "not_authorised"
    assert "--key" in refused.message and "--operator" in refused.message


def test_a_proof_made_with_another_key_is_not_authorised() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    refused = _refusal(decide(_holder(proof=_proof(other)), _known()))
    assert refused.code == "not_authorised"
    assert "private key" in refused.message and "operator" in refused.message


@pytest.mark.parametrize(
    "signed",
    [
        {"request_id": "rev-2"},
        {"serial": "abc124"},
        {"reason": "superseded"},
    ],
    ids=["another_request", "another_serial", "another_reason"],
)
def test_a_proof_replayed_for_another_request_serial_or_reason_is_not_authorised(signed: dict[str, str]) -> None:
    refused = _refusal(decide(_holder(proof=_proof(HOLDER_KEY, **signed)), _known()))
    assert refused.code == "not_authorised"


@pytest.mark.parametrize("proof", ["not base64!", "AAAA", base64.b64encode(b"\x00" * 72).decode()])
def test_a_malformed_proof_is_not_authorised(proof: str) -> None:
    assert _refusal(decide(_holder(proof=proof), _known())).code == "not_authorised"


def test_a_holder_proof_for_a_certificate_learnt_without_its_key_says_to_ask_an_operator() -> None:
    refused = _refusal(decide(_holder(), _known(key=None)))
    assert refused.code == "not_authorised"
    assert "ask an operator" in refused.message


def test_a_holder_may_not_declare_its_ca_compromised() -> None:
    refused = _refusal(decide(_holder("cACompromise", proof=_proof(HOLDER_KEY, reason="cACompromise")), _known()))
    assert refused.code == "not_authorised"
    assert decide(_operator("cACompromise"), _known()) == _known()


def test_an_unauthorised_request_for_a_revoked_certificate_is_refused_as_unauthorised() -> None:
    outcome = decide(Ask("rev-1", "abc123", "superseded", "mallory", "holder", None), _known(status="revoked"))
    assert _refusal(outcome).code == "not_authorised"


# --- reasons and state ------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["certificateHold", "removeFromCRL", "aACompromise", "bogus"])
@pytest.mark.parametrize("ask", [_holder, _operator], ids=["holder", "operator"])
def test_reasons_outside_rfc_5280s_final_ones_are_refused(ask: Callable[[str], Ask], reason: str) -> None:
    refused = _refusal(decide(ask(reason), _known()))
    assert refused.code == "reason_invalid"
    assert "keyCompromise" in refused.message


def test_decide_refuses_unknown_serial() -> None:
    refused = _refusal(decide(_operator("superseded"), None))
    assert refused.code == "serial_unknown"
    assert "abc123" in refused.message


def test_decide_refuses_already_revoked_certificate() -> None:
    assert _refusal(decide(_operator("superseded"), _known(status="revoked"))).code == "already_revoked"
    assert _refusal(decide(_holder(), _known(status="revoked"))).code == "already_revoked"


def test_decide_checks_the_reason_before_the_serial() -> None:
    assert _refusal(decide(_operator("bogus"), None)).code == "reason_invalid"


# --- what revocation learns and records ---------------------------------------------------------------


def test_public_key_of_reads_the_certificates_subject_public_key_info() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "holder")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(HOLDER_KEY.public_key())
        .serial_number(0xABC123)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(HOLDER_KEY, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    assert public_key_of(pem) == (spki_der(HOLDER_KEY.public_key()), spki_sha256(HOLDER_KEY.public_key()))


def test_public_key_of_an_unreadable_certificate_is_none() -> None:
    assert public_key_of("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n") is None


def test_the_other_certificates_of_a_compromised_key_name_the_revocation_that_compromised_it() -> None:
    assert compromised_by("abc123") == "revocation (key of abc123 compromised)"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("abc123", "abc123"),
        ("0xabc123", "abc123"),
        ("0XABC123", "abc123"),
        ("ab:c1:23", "abc123"),
        ("AB:C1:23", "abc123"),
        ("000abc123", "abc123"),
        ("0x00:0a:bc", "abc"),
        ("  0xABC123\n", "abc123"),
        ("0", "0"),
        ("0000", "0"),
        ("00:00", "0"),
        ("0x", "0"),
    ],
    ids=[
        "plain",
        "0x_prefix",
        "upper_0X_prefix",
        "colons",
        "upper_colons",
        "leading_zeros",
        "prefix_colons_zeros",
        "whitespace",
        "zero",
        "zeros",
        "colon_zeros",
        "bare_prefix",
    ],
)
def test_normalise_serial(given: str, expected: str) -> None:
    assert normalise_serial(given) == expected


def test_an_invalidity_date_in_the_future_is_refused() -> None:
    ask = Ask("rev-1", "abc123", "keyCompromise", "bob", "operator", invalidity_date=NOW + timedelta(hours=1))
    refused = decide(ask, _known(), NOW)
    assert isinstance(refused, Reason) and refused.code == "invalidity_date_invalid"
    past = Ask("rev-1", "abc123", "keyCompromise", "bob", "operator", invalidity_date=NOW - timedelta(days=1))
    assert decide(past, _known(), NOW) == _known()


# --- destruction --------------------------------------------------------------------------------


def test_an_operator_destroys_a_certificate_revocation_knows() -> None:
    known = _known()
    assert decide_destruction("abc123", known) == known


def test_destroying_an_unknown_serial_is_refused() -> None:
    refusal = _refusal(decide_destruction("feed", None))
    assert refusal.code == "certificate_unknown"
    assert "feed" in refusal.message


def test_destroying_a_destroyed_certificate_is_refused() -> None:
    destroyed = replace(_known(status="revoked"), destroyed_at=NOW)
    refusal = _refusal(decide_destruction("abc123", destroyed))
    assert refusal.code == "certificate_destroyed"
    assert NOW.isoformat() in refusal.message


def test_a_revoked_certificate_can_still_be_destroyed() -> None:
    revoked = _known(status="revoked")
    assert decide_destruction("abc123", revoked) == revoked


def test_revoking_a_destroyed_certificate_says_it_was_destroyed() -> None:
    destroyed = replace(_known(status="revoked"), destroyed_at=NOW)
    assert _refusal(decide(_operator(), destroyed)).code == "certificate_destroyed"
    assert _refusal(decide(_holder(), destroyed)).code == "certificate_destroyed"


# --- the requester that obtained it, and ACME's proof made with the certificate's key ----------------


def test_the_requester_that_obtained_a_certificate_revokes_it_without_its_key() -> None:
    known = replace(_known(), requester="acme")
    ask = Ask("rev-1", "abc123", "superseded", "acme", "holder")
    assert decide(ask, known) == known
    assert authority(ask, known) == "requester"


@pytest.mark.parametrize("reason", ["keyCompromise", "cACompromise"])
def test_the_requester_needs_the_key_or_an_operator_for_a_compromise(reason: str) -> None:
    refused = _refusal(decide(Ask("rev-1", "abc123", reason, "acme", "holder"), replace(_known(), requester="acme")))
    assert refused.code == "not_authorised" and reason in refused.message


@pytest.mark.parametrize("requester", [None, "someone-else"])
def test_another_requester_without_a_proof_is_refused(requester: str | None) -> None:
    ask = Ask("rev-1", "abc123", "superseded", "acme", "holder")
    refused = _refusal(decide(ask, replace(_known(), requester=requester)))
    assert refused.code == "not_authorised" and "'acme' is not the requester that obtained it" in refused.message


def _certificate(key: PrivateKey, serial: int = 0xABC123) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "holder")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _revoke_cert_jws(key: PrivateKey, der: bytes, reason: int | None = None, algorithm: str = "ES256") -> str:
    payload: dict[str, object] = {"certificate": base64.urlsafe_b64encode(der).decode().rstrip("=")}
    if reason is not None:
        payload["reason"] = reason
    headers = {"nonce": "n", "url": "https://acme.example/acme/revoke-cert"}
    return jwt.api_jws.PyJWS().encode(json.dumps(payload).encode(), key, algorithm=algorithm, headers=headers)


def test_an_acme_request_signed_with_the_certificates_key_is_a_holders_proof() -> None:
    der = _certificate(HOLDER_KEY)
    ask = Ask("rev-1", "abc123", "keyCompromise", "acme", "holder", proof_jws=_revoke_cert_jws(HOLDER_KEY, der, 1))
    assert decide(ask, _known()) == _known()
    assert authority(ask, _known()) == "holder"
    unspecified = Ask("rev-1", "abc123", "unspecified", "acme", "holder", proof_jws=_revoke_cert_jws(HOLDER_KEY, der))
    assert decide(unspecified, _known()) == _known()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda der: _revoke_cert_jws(ec.generate_private_key(ec.SECP256R1()), der, 1), id="another-key"),
        pytest.param(lambda der: _revoke_cert_jws(HOLDER_KEY, der, 4), id="another-reason"),
        pytest.param(lambda der: _revoke_cert_jws(HOLDER_KEY, _certificate(HOLDER_KEY, 0xDEF), 1), id="another-cert"),
        pytest.param(lambda der: _revoke_cert_jws(HOLDER_KEY, der, 1)[:-4] + "AAAA", id="bad-signature"),
        pytest.param(lambda der: "not.a.jws", id="garbage"),
        pytest.param(lambda der: _revoke_cert_jws(HOLDER_KEY, b"\x30\x00", 1), id="not-a-certificate"),
    ],
)
def test_an_acme_request_that_does_not_hold_is_refused(change: Callable[[bytes], str]) -> None:
    ask = Ask("rev-1", "abc123", "keyCompromise", "acme", "holder", proof_jws=change(_certificate(HOLDER_KEY)))
    refused = _refusal(decide(ask, replace(_known(), requester="acme")))
    assert refused.code == "not_authorised" and "ACME request" in refused.message
