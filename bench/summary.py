"""The last step of `make bench`: every speed target next to what this run measured and the
reference measured in the same run, read from bench/results/*.json, printed as one table and
written to bench/results/summary.json.

A target this bench does not measure yet is listed as "not measured", never left out: the table is
the state of the targets, not only of those that look good.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
Results = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Row:
    """One target: what it asks, what was measured, the same run's reference, and whether it holds."""

    target: str
    goal: str
    measured: str
    reference: str
    met: bool | None  # None: not measured, or not at the target's scale


@dataclass(frozen=True)
class Target:
    target: str
    goal: str
    threshold: float
    at_least: bool  # the figure must be >= threshold (else <=)
    unit: str
    figure: Callable[[Results], float | None]
    reference: Callable[[Results], str] = lambda _: "-"
    # Whether the run was at the scale the target names (e.g. 1M certificates); a figure measured
    # smaller is shown, but never as met.
    at_scale: Callable[[Results], bool] = lambda _: True

    def row(self, results: Results) -> Row:
        try:
            value = self.figure(results)
        except (KeyError, TypeError):
            value = None
        if value is None:
            return Row(self.target, self.goal, "not measured", "-", None)
        met: bool | None = value >= self.threshold if self.at_least else value <= self.threshold
        if met and not self.at_scale(results):
            met = None  # shown as "-": below the target's scale, it proves nothing
        try:
            reference = self.reference(results)
        except (KeyError, TypeError, ZeroDivisionError):
            reference = "-"
        return Row(self.target, self.goal, f"{value:,.1f} {self.unit}", reference, met)


def _cfssl(results: Results) -> str:
    cfssl = results["issuance"].get("cfssl") or {}
    parts = []
    for name, label in (("one_core", "one core"), ("one_core_p256_ca", "one core, P-256 CA")):
        figure = cfssl.get(name) or {}
        if "certs_per_s" in figure:
            parts.append(f"cfssl {label} {figure['certs_per_s']:,.0f}/s (x{figure['ratio_end_to_end_over_cfssl']})")
    in_process = results["issuance"]["reference_certs_per_s"]
    floor = _floor(results, "certs_per_s")
    return "; ".join(
        [
            *parts,
            f"in-process {in_process:,.0f}/s",
            *([f"architecture floor {floor}/s (one account / an account per service)"] if floor else []),
        ]
    )


def _floor(results: Results, figure: str) -> str:
    """The architecture floor's `figure` (bench.floor) at the issuance bench's number of requests in
    flight, in one account and in an account per service as "a / b"; "" if it did not run there."""
    floor, concurrency = results.get("floor"), str(results["issuance"].get("concurrency", 64))
    if not floor:
        return ""

    def at(key: str) -> str:
        figures = floor.get(key, {}).get(concurrency)
        if not figures:
            return "-"
        value = figures["cpu_ms_per_certificate"]["total"] if figure == "cpu" else figures[figure]
        return f"{value:,.2f}" if figure == "cpu" else f"{value:,.0f}"

    return f"{at('in_flight')} / {at('accounts_in_flight')}"


def _floor_paced(results: Results) -> str:
    """The architecture floor's p99 paced at the same rate (one account / an account per service)."""
    floor = results.get("floor") or {}
    runs = [floor.get(key) or {} for key in ("paced", "accounts_paced")]
    offered = results["issuance"]["paced"]["offered_per_s"]
    if not any(run.get("offered_per_s") == offered for run in runs):
        return ""
    p99s = [f"{run['latency_p99_ms']:,.0f}" if run.get("offered_per_s") == offered else "-" for run in runs]
    return f"; architecture floor p99 {' / '.join(p99s)} ms"


def _cpu_reference(results: Results) -> str:
    parts = [f"in-process checks + build + sign {1000 / results['issuance']['reference_certs_per_s']:.2f} ms"]
    if floor := _floor(results, "cpu"):
        parts.append(f"architecture floor {floor} ms (one account / an account per service)")
    return "; ".join(parts)


def _events_per_certificate(results: Results) -> float | None:
    """How many events the log took per certificate issued in the issuance bench."""
    issuance = results["issuance"]
    return float(issuance["events_per_certificate"]) if "events_per_certificate" in issuance else None


def _archive_margin(results: Results) -> float | None:
    """Live archiving's rate over the rate at which issuance (as measured) produces events."""
    per_cert = _events_per_certificate(results)
    if per_cert is None:
        return None
    produced = float(results["issuance"]["end_to_end_certs_per_s"]) * per_cert
    return float(results["audit"]["archive_live_events_per_s"]) / produced


TARGETS = [
    Target(
        "issuance end to end",
        ">= 1,000 certs/s",
        1000,
        True,
        "certs/s",
        lambda r: r["issuance"]["end_to_end_certs_per_s"],
        _cfssl,
    ),
    Target(
        "CPU per certificate, every process",
        "<= 2 ms",
        2.0,
        False,
        "ms",
        lambda r: r["issuance"]["cpu_ms_per_certificate"]["total"],
        _cpu_reference,
    ),
    Target(
        "issuance p99 at 500 certs/s",
        "<= 100 ms",
        100,
        False,
        "ms",
        lambda r: r["issuance"]["paced"]["latency_p99_ms"],
        lambda r: (
            f"offered {r['issuance']['paced']['offered_per_s']:,.0f}/s open loop, achieved "
            f"{r['issuance']['paced']['achieved_certs_per_s']:,.1f}/s, "
            f"p50 {r['issuance']['paced']['latency_p50_ms']:,.0f} ms" + _floor_paced(r)
        ),
        lambda r: r["issuance"]["paced"]["offered_per_s"] >= 500,
    ),
    Target(
        "OCSP, cached responses over HTTP",
        ">= 10,000/s",
        10_000,
        True,
        "responses/s",
        lambda r: (r["revocation"].get("ocsp_cached_get_wrk") or {}).get("per_s"),
        lambda r: (
            f"responder core in-process {r['revocation']['reference_ocsp_cached_per_s']:,.0f}/s; "
            f"Python client {r['revocation']['ocsp_cached_per_s']:,.0f}/s"
        ),
    ),
    Target(
        "revocation -> OCSP revoked, p99",
        "<= 100 ms",
        100,
        False,
        "ms",
        lambda r: r["revocation"]["propagation_ocsp_p99_ms"],
    ),
    Target(
        "revocation -> its shard's CRL over HTTP, 1M issued, 100k revoked",
        "p99 <= 1,000 ms",
        1000,
        False,
        "ms (p99)",
        lambda r: r["revocation"]["crl_at_seed_revoked_p99_ms"],
        lambda r: (
            f"{r['revocation']['seeded_certificates']:,} issued, {r['revocation']['crl_seeded_revoked']:,} revoked "
            f"over {r['revocation']['crl_shards']} shards, {r['revocation']['crl_at_seed_revoked_probes']} probes, "
            f"p50 {r['revocation']['crl_at_seed_revoked_p50_ms']:,.0f} ms, shard CRL "
            f"{r['revocation']['crl_at_seed_revoked_shard_bytes'] / 1e3:,.0f} kB; with few revoked p99 "
            f"{r['revocation']['propagation_crl_p99_ms']:,.0f} ms"
        ),
        lambda r: (
            r["revocation"]["crl_seeded_revoked"] >= 100_000 and r["revocation"]["seeded_certificates"] >= 1_000_000
        ),
    ),
    Target(
        "CRL shard republish (build + sign + publish), 100k revoked",
        "<= 200 ms",
        200,
        False,
        "ms (p99)",
        lambda r: r["revocation"]["crl_shard_republish_p99_ms"],
        lambda r: (
            f"p50 {r['revocation']['crl_shard_republish_p50_ms']:,.0f} ms over "
            f"{r['revocation']['crl_shard_republishes']} republishes; building and signing one shard's CRL "
            f"in-process {r['revocation']['reference_crl_shard_build_ms']:,.0f} ms, the unsharded CRL "
            f"{r['revocation']['reference_crl_build_s']:,.2f} s"
        ),
        lambda r: r["revocation"]["crl_seeded_revoked"] >= 100_000,
    ),
    Target(
        "audit replay",
        ">= 50,000 events/s",
        50_000,
        True,
        "events/s",
        lambda r: r["audit"]["replay_events_per_s"],
        lambda r: f"chain hashing alone {r['audit']['reference_chain_hashes_per_s']:,.0f}/s",
    ),
    Target(
        "audit verify",
        ">= 50,000 events/s",
        50_000,
        True,
        "events/s",
        lambda r: r["audit"]["verify_events_per_s"],
        lambda r: f"chain hashing alone {r['audit']['reference_chain_hashes_per_s']:,.0f}/s",
    ),
    Target(
        "live archiving over issuance's event rate",
        ">= 1.0x",
        1.0,
        True,
        "x",
        _archive_margin,
        lambda r: f"archive {r['audit']['archive_live_events_per_s']:,.0f} events/s",
    ),
    Target(
        "CA compromise: validation says revoked for all",
        "<= 60 s at 1M",
        60,
        False,
        "s",
        lambda r: r["revocation"]["ca_compromise"]["validation_reports_revoked_s"],
        lambda r: (
            f"at {r['revocation']['seeded_certificates']:,} certificates (target: 1M); revocation's "
            f"memory peak {r['revocation']['ca_compromise']['revocation_memory_peak_mib']:,.0f} MiB (target <= 300 MB)"
        ),
        lambda r: r["revocation"]["seeded_certificates"] >= 1_000_000,
    ),
    Target(
        "every service's RSS with 1M certificates on the log",
        "<= 200 MB",
        200,
        False,
        "MB",
        lambda r: max(*r["revocation"]["service_memory_mib"].values(), _checks_at_1m(r) or 0) * 1.048576,  # MiB to MB
        lambda r: (
            f"PSS in MiB after the revocation bench with {r['revocation']['seeded_certificates']:,} certificates "
            "in the read models (not on the log): "
            + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["revocation"]["service_memory_mib"].items()))
            + _checks_reference(r)
        ),
        lambda r: r["revocation"]["seeded_certificates"] >= 1_000_000,
    ),
]


def _checks_at_1m(results: Results) -> float | None:
    """What audit's consistency checks alone would keep in memory (MiB) with 1,000,000 certificates
    on the log, from what they kept per certificate in the audit bench; None if it did not measure it."""
    state = (results.get("audit") or {}).get("checker_state")
    return float(state["at_1m_certificates_mib"]) if state else None


def _checks_reference(results: Results) -> str:
    state = (results.get("audit") or {}).get("checker_state")
    if not state:
        return ""
    return (
        f"; audit's consistency checks grow by {state['bytes_per_certificate']:,.0f} B per certificate on the log "
        f"(bench.audit, {state['certificates']:,} certificates, {state['grown_mib']} MiB in all), "
        f"about {state['at_1m_certificates_mib']:,.0f} MiB at 1M"
    )


def load(directory: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Each bench's saved figures, by name (a bench that did not run is absent)."""
    found: dict[str, dict[str, Any]] = {}
    for name in ("issuance", "floor", "audit", "revocation"):
        path = directory / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def rows(results: Results) -> list[Row]:
    """Every target's row."""
    return [t.row(results) for t in TARGETS]


def render(table: list[Row]) -> str:
    """The table as aligned text (plain: it is read in a terminal and in CI logs alike)."""
    header = Row("target", "goal", "measured", "reference (same run)", None)
    cells = [
        (r.target, r.goal, r.measured, "met" if r.met else ("-" if r.met is None else "NOT MET"), r.reference)
        for r in table
    ]
    head = (header.target, header.goal, header.measured, "", header.reference)
    widths = [max(len(row[i]) for row in [head, *cells]) for i in range(4)]
    lines = []
    for row in [head, *cells]:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return "\n".join(line.rstrip() for line in lines)


def main() -> int:
    results = load()
    table = rows(results)
    print("\nIssue targets against this run (bench/results/summary.json):")
    print(render(table))
    (RESULTS / "summary.json").write_text(json.dumps([asdict(r) for r in table], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
