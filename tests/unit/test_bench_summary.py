"""The bench's summary: every target gets a row (what is not measured says so), each with the
figure, the same run's reference and whether it holds."""

from __future__ import annotations

from typing import Any

from bench.summary import TARGETS, render, rows

RESULTS: dict[str, dict[str, Any]] = {
    "issuance": {
        "end_to_end_certs_per_s": 190.0,
        "reference_certs_per_s": 1500.0,
        "cpu_ms_per_certificate": {"total": 10.5},
        "events_per_certificate": 3.0,
        "cfssl": {
            "one_core": {"certs_per_s": 436.0, "ratio_end_to_end_over_cfssl": 0.436},
            "one_core_p256_ca": {"certs_per_s": 2763.0, "ratio_end_to_end_over_cfssl": 0.069},
        },
    },
    "audit": {
        "archive_live_events_per_s": 1900.0,
        "replay_events_per_s": 60000.0,
        "verify_events_per_s": 14000.0,
        "reference_chain_hashes_per_s": 490000.0,
    },
}


def test_every_target_has_a_row_and_what_is_not_measured_says_so() -> None:
    table = {r.target: r for r in rows(RESULTS)}
    assert len(table) == len(TARGETS)
    issuance = table["issuance end to end"]
    assert (issuance.measured, issuance.met) == ("190.0 certs/s", False)
    assert "cfssl one core 436/s (x0.436)" in issuance.reference and "in-process 1,500/s" in issuance.reference
    assert table["audit replay"].met is True and table["audit verify"].met is False
    assert table["live archiving over issuance's event rate"].measured == "3.3 x"  # 1900 / (190 * 3)
    # The revocation bench did not run: its targets are listed, not measured.
    ocsp = table["OCSP, cached responses over HTTP"]
    assert (ocsp.measured, ocsp.met) == ("not measured", None)
    assert table["every service's RSS with 1M certificates on the log"].met is None


def test_the_architecture_floor_is_shown_beside_issuance_at_the_same_number_in_flight() -> None:
    floor = {
        "64": {"certs_per_s": 812.3, "cpu_ms_per_certificate": {"total": 1.987}},
        "256": {"certs_per_s": 1169.0, "cpu_ms_per_certificate": {"total": 1.38}},
    }
    results = {
        **RESULTS,
        "issuance": {**RESULTS["issuance"], "concurrency": 64},
        "floor": {
            "in_flight": floor,
            "accounts_in_flight": {"64": {"certs_per_s": 790.0, "cpu_ms_per_certificate": {"total": 2.16}}},
        },
    }
    results["issuance"]["paced"] = {
        "offered_per_s": 500,
        "achieved_certs_per_s": 480.0,
        "latency_p50_ms": 400.0,
        "latency_p99_ms": 650.0,
    }
    results["floor"]["paced"] = {"offered_per_s": 500, "latency_p99_ms": 77.4}
    table = {r.target: r for r in rows(results)}
    assert "architecture floor 1.99 / 2.16 ms" in table["CPU per certificate, every process"].reference
    assert table["issuance p99 at 500 certs/s"].reference.endswith("architecture floor p99 77 / - ms")
    assert "architecture floor 812 / 790/s" in table["issuance end to end"].reference
    # Without the floor's run, the references are what they were.
    assert "architecture floor" not in rows(RESULTS)[1].reference


def test_the_table_names_what_is_not_met() -> None:
    text = render(rows(RESULTS))
    line = next(line for line in text.splitlines() if line.startswith("issuance end to end"))
    assert "NOT MET" in line and "190.0 certs/s" in line
    assert "not measured" in text


def _revocation(issued: int, revoked: int) -> dict[str, object]:
    return {
        "seeded_certificates": issued,
        "crl_seeded_revoked": revoked,
        "crl_shards": 128,
        "crl_at_seed_revoked_p50_ms": 300.0,
        "crl_at_seed_revoked_p99_ms": 500.0,
        "crl_at_seed_revoked_probes": 40,
        "crl_at_seed_revoked_shard_bytes": 42_000,
        "crl_shard_republish_p50_ms": 20.0,
        "crl_shard_republish_p99_ms": 40.0,
        "crl_shard_republishes": 40,
        "reference_crl_shard_build_ms": 6.0,
        "reference_crl_build_s": 1.3,
        "propagation_crl_p99_ms": 99.0,
        "ca_compromise": {"validation_reports_revoked_s": 0.7, "revocation_memory_peak_mib": 60.0},
    }


CRL_TARGET = "revocation -> its shard's CRL over HTTP, 1M issued, 100k revoked"
REPUBLISH_TARGET = "CRL shard republish (build + sign + publish), 100k revoked"


def test_a_figure_below_the_targets_scale_is_shown_but_never_met() -> None:
    table = {r.target: r for r in rows({**RESULTS, "revocation": _revocation(100_000, 100_000)})}
    compromise = table["CA compromise: validation says revoked for all"]
    assert (compromise.measured, compromise.met) == ("0.7 s", None)  # 100k, not the 1M it names
    crl = table[CRL_TARGET]
    assert (crl.measured, crl.met) == ("500.0 ms (p99)", None)  # 100k issued, not the 1M it names
    assert "128 shards" in crl.reference and "p50 300 ms" in crl.reference
    republish = table[REPUBLISH_TARGET]
    assert (republish.measured, republish.met) == ("40.0 ms (p99)", True)


def test_the_crl_targets_are_met_only_at_their_scale() -> None:
    table = {r.target: r for r in rows({**RESULTS, "revocation": _revocation(1_000_000, 100_000)})}
    assert table[CRL_TARGET].met is True
    table = {r.target: r for r in rows({**RESULTS, "revocation": _revocation(1_000_000, 10_000)})}
    assert table[CRL_TARGET].met is None and table[REPUBLISH_TARGET].met is None


def test_the_paced_run_gives_the_p99_target_and_counts_only_at_500_a_second() -> None:
    paced = {"offered_per_s": 500.0, "requests": 2000, "achieved_certs_per_s": 488.0}
    at_500 = {
        **RESULTS,
        "issuance": {**RESULTS["issuance"], "paced": {**paced, "latency_p50_ms": 40.0, "latency_p99_ms": 90.0}},
    }
    row = next(r for r in rows(at_500) if r.target == "issuance p99 at 500 certs/s")
    assert (row.measured, row.met) == ("90.0 ms", True)
    assert "offered 500/s open loop, achieved 488.0/s, p50 40 ms" == row.reference
    slower = {**paced, "offered_per_s": 200.0, "latency_p50_ms": 30.0, "latency_p99_ms": 60.0}
    below = {**RESULTS, "issuance": {**RESULTS["issuance"], "paced": slower}}
    row = next(r for r in rows(below) if r.target == "issuance p99 at 500 certs/s")
    assert row.met is None  # 200/s offered proves nothing about 500/s
    late = {**paced, "latency_p50_ms": 900.0, "latency_p99_ms": 2400.0}
    row = next(
        r
        for r in rows({**RESULTS, "issuance": {**RESULTS["issuance"], "paced": late}})
        if r.target.startswith("issuance p99")
    )
    assert row.met is False
    assert next(r for r in rows(RESULTS) if r.target.startswith("issuance p99")).measured == "not measured"


def test_service_memory_is_the_largest_service_and_counts_only_at_a_million() -> None:
    revocation = {"seeded_certificates": 100_000, "service_memory_mib": {"audit": 120.0, "validation": 180.0}}
    row = next(r for r in rows({**RESULTS, "revocation": revocation}) if r.target.startswith("every service"))
    assert row.measured == "188.7 MB" and row.met is None  # 180 MiB; 100k proves nothing about 1M
    assert "validation 180" in row.reference and "audit 120" in row.reference
    at_scale = {**revocation, "seeded_certificates": 1_000_000, "service_memory_mib": {"validation": 250.0}}
    row = next(r for r in rows({**RESULTS, "revocation": at_scale}) if r.target.startswith("every service"))
    assert row.met is False


def test_service_memory_counts_what_audit_checks_would_keep_with_a_million_certificates_on_the_log() -> None:
    revocation = {"seeded_certificates": 1_000_000, "service_memory_mib": {"audit": 120.0, "validation": 108.0}}
    checker = {"certificates": 32_257, "grown_mib": 12.2, "bytes_per_certificate": 396, "at_1m_certificates_mib": 378}
    audit = {**RESULTS["audit"], "checker_state": checker}
    row = next(r for r in rows({**RESULTS, "audit": audit, "revocation": revocation}) if r.target.startswith("every"))
    assert (row.measured, row.met) == ("396.4 MB", False)  # 378 MiB: the checks alone, above every service
    assert "grow by 396 B per certificate on the log" in row.reference and "about 378 MiB at 1M" in row.reference
    # Without the audit bench's figure, the services' own memory decides, as before.
    row = next(r for r in rows({**RESULTS, "revocation": revocation}) if r.target.startswith("every"))
    assert (row.measured, row.met) == ("125.8 MB", True)
