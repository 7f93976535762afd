"""The fault suite's figures, computed from what each requester saw (bench.burst.Burst)."""

from __future__ import annotations

from bench.burst import Burst, Outcome


def _burst(*spans: tuple[float, float | None], faults_at: list[float]) -> Burst:
    outcomes = [Outcome(f"r{i}", sent, issued) for i, (sent, issued) in enumerate(spans)]
    return Burst(outcomes, started=0.0, finished=20.0, faults_at=faults_at)


def test_in_flight_done_after_a_fault_counts_only_requests_in_flight_at_it() -> None:
    burst = _burst(
        (0.0, 1.0),  # done before the fault at 2: not counted
        (1.5, 6.5),  # in flight at 2, done 4.5 s after it
        (2.5, 12.0),  # sent after the fault at 2 (in flight at the fault at 10)
        (9.0, 10.5),
        faults_at=[2.0, 10.0],
    )
    assert burst.in_flight_done_after() == [4.5, 2.0]
    summary = burst.summary()
    assert summary["in_flight_done_after_fault_s"] == 4.5
    assert summary["in_flight_done_after_each_fault_s"] == [4.5, 2.0]


def test_a_fault_with_nothing_in_flight_counts_zero() -> None:
    assert _burst((0.0, 1.0), faults_at=[5.0]).in_flight_done_after() == [0.0]
    assert _burst((0.0, 1.0), faults_at=[]).summary()["in_flight_done_after_fault_s"] == 0.0


def test_the_summary_counts_why_requests_were_sent_again() -> None:
    burst = _burst((0.0, 3.0), (0.0, 4.0), faults_at=[])
    burst.outcomes[0].failures = [(1.0, "Unreachable(\"the enrollment service did not answer 'request'\")")]
    burst.outcomes[1].failures = [(1.0, "Unreachable('lost')"), (2.0, "TimeoutError()")]
    assert burst.summary()["retried_because"] == {"Unreachable": 2, "TimeoutError": 1}
