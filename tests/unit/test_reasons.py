"""RFC 5280 revocation reason names."""

from __future__ import annotations

import pytest
from cryptography import x509

from shared.contract.reasons import REASONS, reason_flag


@pytest.mark.parametrize(
    ("name", "flag"),
    [
        ("unspecified", x509.ReasonFlags.unspecified),
        ("keyCompromise", x509.ReasonFlags.key_compromise),
        ("cACompromise", x509.ReasonFlags.ca_compromise),
        ("affiliationChanged", x509.ReasonFlags.affiliation_changed),
        ("superseded", x509.ReasonFlags.superseded),
        ("cessationOfOperation", x509.ReasonFlags.cessation_of_operation),
        ("privilegeWithdrawn", x509.ReasonFlags.privilege_withdrawn),
    ],
)
def test_reason_flag(name: str, flag: x509.ReasonFlags) -> None:
    assert reason_flag(name) == flag


def test_reasons_are_the_final_rfc5280_ones() -> None:
    assert set(REASONS) == {
        "unspecified",
        "keyCompromise",
        "cACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "privilegeWithdrawn",
    }


def test_certificate_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="certificateHold") as exc:
        reason_flag("certificateHold")
    for name in REASONS:
        assert name in str(exc.value)


@pytest.mark.parametrize("name", ["removeFromCRL", "aACompromise", "keycompromise", "key_compromise", ""])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unknown revocation reason"):
        reason_flag(name)
