"""The soak's samples as one self-contained HTML page: memory per process and p50/p99 latency over time.

`python -m bench.soak_chart bench/results/soak.json --out bench/results/soak.html` (`make soak-chart`)
reads what `bench.soak` wrote (it may still be running: the file is rewritten at every sample) and
draws inline SVG line charts, with the page and chart frame of `certbus audit report --html`: no
script, nothing fetched. A sample without a latency (nothing finished in its window) is a gap in the line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from shared.client.cli.report_html import HEIGHT, PAD_BOTTOM, PAD_LEFT, PAD_TOP, chart_frame, page

WIDTH, LEGEND_W = 1100, 170  # the legend sits right of the plot
PALETTE = (
    "#1565c0",
    "#c62828",
    "#2e7d32",
    "#ef6c00",
    "#6a1b9a",
    "#00838f",
    "#8d6e63",
    "#37474f",
    "#ad1457",
    "#9e9d24",
    "#5c6bc0",
    "#8d8d8d",
    "#000000",
    "#ff8f00",
    "#4e342e",
    "#26a69a",
)
LEGEND_ROW = 16
Point = tuple[float, float | None]  # (minutes into the soak, value or None)


def render(report: Mapping[str, Any]) -> str:
    """The whole page for a soak report (the JSON `bench.soak` writes)."""
    samples: list[dict[str, Any]] = list(report.get("samples", []))
    minutes = [s["t_s"] / 60 for s in samples]
    names = sorted({name for s in samples for name in s.get("pss_kib", {})})
    memory = {
        name: [(t, _mib(s["pss_kib"].get(name))) for t, s in zip(minutes, samples, strict=True)] for name in names
    }
    latency = {q: [(t, s.get(f"latency_{q}_s")) for t, s in zip(minutes, samples, strict=True)] for q in ("p50", "p99")}
    growth = report.get("growth")
    verdict = (
        "not judged yet (the soak is running)"
        if growth is None
        else "flat: memory and latency did not grow"
        if not growth
        else "GROWTH: " + "; ".join(map(str, growth))
    )
    issued = sum(s.get("issued", 0) for s in samples)
    retried = sum(s.get("retried", 0) for s in samples)
    refused = sum(s.get("refused", 0) for s in samples)
    body = [
        "<h1>Certbus soak</h1>",
        f'<p class="meta" id="soak-summary">{len(samples)} samples every {_num(report.get("sample_every_s"))} s over '
        f"<b>{_num(minutes[-1] if minutes else 0)}</b> of {_num(report.get('minutes'))} minutes at "
        f"<b>{_num(report.get('rate_per_s'))}</b> enrollments/s (half the measured capacity, "
        f"{_num(report.get('capacity_per_s'))}/s): {issued} issued, {retried} retried, {refused} refused.</p>",
        f'<p class="meta" id="soak-verdict"><b>{escape(verdict)}</b></p>',
        "<h2>Memory (PSS, MiB) per process</h2>",
        line_chart("chart-memory", memory, unit="MiB"),
        "<h2>Latency of the enrollments finished in each window (s)</h2>",
        line_chart("chart-latency", latency, unit="s", colours={"p50": PALETTE[0], "p99": PALETTE[1]}),
        _memory_table(memory),
    ]
    return page("Certbus soak", body)


def line_chart(
    svg_id: str, series: Mapping[str, Sequence[Point]], *, unit: str, colours: Mapping[str, str] | None = None
) -> str:
    """One polyline per series over minutes (x from 0 to the last sample), y from 0 to the highest value;
    the legend, right of the plot, names each series with its last value."""
    colours = colours or {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    height = max(HEIGHT, PAD_TOP + LEGEND_ROW * len(series) + PAD_BOTTOM)  # room for every legend row
    plot_w, plot_h = WIDTH - LEGEND_W - PAD_LEFT - 8, height - PAD_TOP - PAD_BOTTOM
    values = [v for points in series.values() for _, v in points if v is not None]
    top = max(values, default=0.0)
    end = max((t for points in series.values() for t, _ in points), default=0.0)
    parts = chart_frame(svg_id, f"{_num(top)} {unit}", width=WIDTH, height=height, plot_end=PAD_LEFT + plot_w)
    for i, label in enumerate((0.0, end / 2, end)):
        x = PAD_LEFT + (plot_w * label / end if end else 0)
        anchor = ("start", "middle", "end")[i]
        parts.append(f'<text x="{x:.1f}" y="{height - 8}" text-anchor="{anchor}">{_num(label)} min</text>')
    if not values:
        parts.append(
            f'<text class="empty" x="{PAD_LEFT + plot_w / 2:.0f}" y="{PAD_TOP + plot_h / 2:.0f}" '
            'text-anchor="middle">no samples yet</text>'
        )

    def xy(t: float, v: float) -> str:
        x = PAD_LEFT + (plot_w * t / end if end else 0)
        y = PAD_TOP + plot_h - (plot_h * v / top if top else 0)
        return f"{x:.1f},{y:.1f}"

    for i, (name, points) in enumerate(series.items()):
        colour = colours.get(name, PALETTE[i % len(PALETTE)])
        for run in _runs(points):
            parts.append(
                f'<polyline class="line" data-series="{escape(name)}" fill="none" stroke="{colour}" '
                f'stroke-width="1.5" points="{" ".join(xy(t, v) for t, v in run)}"/>'
            )
        y = PAD_TOP + 4 + i * LEGEND_ROW
        last = next((v for _, v in reversed(points) if v is not None), None)
        parts.append(
            f'<rect x="{WIDTH - LEGEND_W + 16}" y="{y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{WIDTH - LEGEND_W + 30}" y="{y + 9}">{escape(name)}'
            f"{f' ({_num(last)} {unit})' if last is not None else ''}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _runs(points: Sequence[Point]) -> list[list[tuple[float, float]]]:
    """The stretches of `points` without a missing value (a line is not drawn across a gap)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for t, v in points:
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((t, v))
    return [run for run in runs if run]


def _memory_table(memory: Mapping[str, Sequence[Point]]) -> str:
    rows = []
    for name, points in memory.items():
        known = [v for _, v in points if v is not None]
        if known:
            first, last, peak = known[0], known[-1], max(known)
            rows.append(
                f'<tr><td>{escape(name)}</td><td class="n">{_num(first)}</td><td class="n">{_num(last)}</td>'
                f'<td class="n">{_num(peak)}</td><td class="n">{_num(last - first)}</td></tr>'
            )
    return (
        '<h2>Memory per process (MiB)</h2><table id="table-memory"><thead><tr><th>process</th>'
        '<th class="n">first</th><th class="n">last</th><th class="n">peak</th><th class="n">last - first</th>'
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _mib(kib: float | None) -> float | None:
    return kib / 1024 if kib else None  # 0: the process was gone at that sample


def _num(value: Any) -> str:
    """A figure as the page shows it: a few significant digits."""
    if isinstance(value, int | float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="?", default=Path("bench/results/soak.json"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.html"))
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read the soak report {args.report}: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(report), encoding="utf-8")
    print(f"wrote {args.out}: {len(report.get('samples', []))} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
