"""The soak chart: a self-contained page with a line per process's memory and per latency quantile."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bench.soak_chart import main, render


def _soak(samples: int = 6, growth: list[str] | None = None) -> dict[str, Any]:
    """A report shaped as `bench.soak` writes it, with an audit replica that grows and a quiet window."""
    rows = []
    for i in range(samples):
        quiet = i == 2  # nothing finished in this window: no latency
        rows.append(
            {
                "t_s": 30.0 * (i + 1),
                "issued": 0 if quiet else 600,
                "latency_p50_s": None if quiet else 0.05 + 0.01 * i,
                "latency_p99_s": None if quiet else 0.4,
                "retried": 1,
                "refused": 0,
                "pss_kib": {"audit-1": 70_000 + 10_000 * i, "nats-1": 40_000, "postgresql": 150_000},
            }
        )
    return {
        "capacity_per_s": 42.0,
        "rate_per_s": 21.0,
        "minutes": 3,
        "sample_every_s": 30,
        "samples": rows,
        **({"growth": growth} if growth is not None else {}),
    }


def test_the_page_has_a_memory_line_per_process_and_a_latency_line_per_quantile() -> None:
    page = render(_soak())
    memory = page.split('<svg id="chart-memory"')[1].split("</svg>")[0]
    assert sorted(set(re.findall(r'data-series="([^"]+)"', memory))) == ["audit-1", "nats-1", "postgresql"]
    latency = page.split('<svg id="chart-latency"')[1].split("</svg>")[0]
    assert sorted(set(re.findall(r'data-series="([^"]+)"', latency))) == ["p50", "p99"]


def test_a_window_without_latency_is_a_gap_in_the_line() -> None:
    latency = render(_soak()).split('<svg id="chart-latency"')[1].split("</svg>")[0]
    p50 = re.findall(r'data-series="p50"[^>]*points="([^"]+)"', latency)
    assert [len(points.split()) for points in p50] == [2, 3]  # samples 1-2, then 4-6


def test_the_lines_span_the_plot_from_the_lowest_to_the_highest_value() -> None:
    memory = render(_soak()).split('<svg id="chart-memory"')[1].split("</svg>")[0]
    points = [tuple(map(float, p.split(","))) for p in re.findall(r'points="([^"]+)"', memory)[0].split()]
    assert points[0][0] < points[-1][0] and points[0][1] > points[-1][1]  # audit grows: up the chart
    assert "(4 min)" not in memory and "3 min" in memory


def test_the_summary_says_what_grew_and_the_table_what_each_process_did() -> None:
    page = render(_soak(growth=["audit-1: memory 68 -> 117 MiB"]))
    assert "GROWTH: audit-1: memory 68 -&gt; 117 MiB" in page  # escaped, as any text from the file
    assert "3000 issued, 6 retried, 0 refused" in page
    row = re.search(r"<tr><td>audit-1</td>(.*?)</tr>", page)
    assert row is not None and re.findall(r">([\d.]+)<", row.group(1)) == ["68.4", "117", "117", "48.8"]
    assert "not judged yet" in render(_soak())


def test_the_page_fetches_nothing_and_runs_nothing() -> None:
    page = render(_soak())
    assert not re.search(r"\b(src|href)\s*=|url\(|@import|<script|<link|<img|<iframe", page, re.I)
    assert "default-src 'none'" in page


def test_a_report_without_samples_renders_empty_charts() -> None:
    page = render({"samples": []})
    assert page.count("no samples yet") == 2 and "<polyline" not in page


def test_the_command_writes_the_page_next_to_the_report(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    report.write_text(json.dumps(_soak()))
    out = tmp_path / "charts" / "soak.html"
    assert main([str(report), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert main([str(tmp_path / "missing.json"), "--out", str(out)]) == 1
