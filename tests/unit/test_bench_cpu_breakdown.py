"""The issuance bench's CPU breakdown: audit's rate-capped lint worker is shown on its own and
taken out of audit's figure, and the total is given with and without it."""

from __future__ import annotations

from bench.issuance import LINT, cpu_breakdown


def test_the_lint_worker_is_shown_apart_from_audit() -> None:
    used = {"enrollment": 2.0, "audit": 3.0, LINT: 2.5, "nats": 0.5}
    shown = cpu_breakdown(used, 1000)
    assert shown == {
        "enrollment": 2.0,
        LINT: 2.5,
        "audit": 0.5,
        "nats": 0.5,
        "total": 5.5,
        "total_without_lint": 3.0,
    }
    assert list(shown)[:2] == [LINT, "enrollment"]  # largest first


def test_without_a_lint_worker_the_totals_agree() -> None:
    shown = cpu_breakdown({"enrollment": 1.0, "audit": 1.0}, 500)
    assert shown["total"] == shown["total_without_lint"] == 4.0
