"""The RFC 5280 revocation reasons Certbus accepts, by name: no imports, so a command line lists
them without loading cryptography (`reasons.REASONS` maps them to x509 reason flags)."""

from __future__ import annotations

from typing import Literal, get_args

# certificateHold is deliberately absent: a revocation is final. removeFromCRL and
# aACompromise have no meaning for this CA.
RevocationReason = Literal[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
]
REVOCATION_REASONS: tuple[RevocationReason, ...] = get_args(RevocationReason)  # in RFC 5280's order

# RFC 5280 §5.3.1 CRLReason codes of the reasons above (ACME's revokeCert names reasons by code).
REASON_CODES: dict[int, RevocationReason] = {
    0: "unspecified",
    1: "keyCompromise",
    2: "cACompromise",
    3: "affiliationChanged",
    4: "superseded",
    5: "cessationOfOperation",
    9: "privilegeWithdrawn",
}
