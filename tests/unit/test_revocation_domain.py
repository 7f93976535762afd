"""Revocation decisions and serial normalisation."""

from __future__ import annotations

import pytest

from services.revocation.domain import Known, decide, normalise_serial
from shared.reasons import Reason

ISSUED = Known(serial="abc123", cert_id="req-1", issuer_id="issuing-1", status="good")


def test_decide_revokes_a_known_good_certificate() -> None:
    assert decide("abc123", "keyCompromise", ISSUED) == ISSUED


def test_decide_refuses_unknown_reason() -> None:
    outcome = decide("abc123", "certificateHold", ISSUED)
    assert isinstance(outcome, Reason)
    assert outcome.code == "reason_invalid"
    assert "keyCompromise" in outcome.message


def test_decide_refuses_unknown_serial() -> None:
    outcome = decide("abc123", "superseded", None)
    assert isinstance(outcome, Reason)
    assert outcome.code == "serial_unknown"
    assert "abc123" in outcome.message


def test_decide_refuses_already_revoked_certificate() -> None:
    revoked = Known(serial="abc123", cert_id="req-1", issuer_id="issuing-1", status="revoked")
    outcome = decide("abc123", "superseded", revoked)
    assert isinstance(outcome, Reason)
    assert outcome.code == "already_revoked"


def test_decide_checks_the_reason_before_the_serial() -> None:
    outcome = decide("abc123", "bogus", None)
    assert isinstance(outcome, Reason)
    assert outcome.code == "reason_invalid"


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
