"""The soak's verdict: flat, or what grew between the first and the last third of the run."""

from __future__ import annotations

from typing import Any

from bench.soak import verdict


def _sample(nats_mib: float, service_mib: float, p99: float, subjects: int) -> dict[str, Any]:
    return {
        "latency_p99_s": p99,
        "pss_kib": {"nats-1": int(nats_mib * 1024), "signing-1": int(service_mib * 1024)},
        "log_subjects": subjects,
    }


def test_a_flat_run_is_flat() -> None:
    assert verdict([_sample(90, 60, 1.0, 1000 * i) for i in range(1, 10)]) == []


def test_memory_growth_is_reported_and_nats_growth_per_new_subject() -> None:
    samples = [_sample(90 + 10 * i, 60 + 10 * i, 1.0, 10_000 * (i + 1)) for i in range(9)]
    growth = verdict(samples)
    assert any(g.startswith("signing-1: memory") and "subject" not in g for g in growth)
    nats = next(g for g in growth if g.startswith("nats-1"))
    assert "the log's subjects 10000 -> 90000" in nats and "bytes per new subject" in nats


def test_a_p99_that_more_than_doubles_is_growth() -> None:
    samples = [_sample(90, 60, 1.0 if i < 3 else 2.5, 100) for i in range(9)]
    assert verdict(samples) == ["p99 latency 1.00 -> 2.50 s"]
