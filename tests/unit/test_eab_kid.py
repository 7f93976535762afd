"""EAB key ids are plain hex: a command line never reads one as an option."""

from __future__ import annotations

import re

from shared.trust.eab import new_kid


def test_key_ids_are_128_bit_hex_and_never_begin_with_a_dash() -> None:
    kids = [new_kid() for _ in range(2_000)]  # a base64url id begins with `-` one time in 64
    assert all(re.fullmatch(r"[0-9a-f]{32}", k) for k in kids)
    assert len(set(kids)) == len(kids)
