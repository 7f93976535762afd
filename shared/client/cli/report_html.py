"""`certbus audit report --html`: one self-contained page built from a ReportAnswer by pure functions.

Inline CSS and charts drawn here as inline SVG: no script, no font, no image, nothing fetched, and
a Content-Security-Policy that forbids all of it, so the page opens from a file on a machine with
no network. Every text that comes from events goes through `html.escape` (requesters choose their
own names). Charts and tables carry stable ids (`chart-expiry`, `chart-issuance`, `chart-state`,
`chart-revoked`, `table-expiring`...) and every bar is a `<rect class="bar">`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from html import escape

from shared.contract.queries import Breakdown, DayCount, ReportAnswer, Tally

STATE_COLOURS = {
    "valid": "#2e7d32",
    "expired": "#8d8d8d",
    "revoked": "#c62828",
    "superseded": "#ef6c00",
    "destroyed": "#37474f",
}
EXPIRY_COLOUR, ISSUANCE_COLOUR, REASON_COLOUR = "#ef6c00", "#1565c0", "#c62828"
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 960, 220, 48, 28, 12
ISSUANCE_MIN_DAYS = 30

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #212121; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #555; margin: 0 0 16px; } .meta b { color: #212121; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(220px, 1fr)); gap: 16px; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 12px 16px; background: #fafafa; }
.big { font-size: 28px; font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #e0e0e0; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td { overflow-wrap: anywhere; }
svg { display: block; max-width: 100%; height: auto; background: #fff; }
svg text { font: 11px system-ui, sans-serif; fill: #424242; }
.axis { stroke: #9e9e9e; stroke-width: 1; }
.note { color: #757575; font-size: 12px; }
"""


def render_html(report: ReportAnswer) -> str:
    """The whole report as one HTML page."""
    today = report.generated_at.date()
    expiry_end = today + timedelta(days=report.timeline_days)
    # Issuance from the first day (at least the last ISSUANCE_MIN_DAYS) to today.
    issued_start = today - timedelta(days=ISSUANCE_MIN_DAYS - 1)
    issued_end = today
    if report.issued_per_day:
        issued_start = min(issued_start, report.issued_per_day[0].day)
        issued_end = max(issued_end, report.issued_per_day[-1].day)
    valid = next((t.count for t in report.by_state.top if t.key == "valid"), 0)
    revoked = sum(t.count for t in report.revoked_by_reason.top) + report.revoked_by_reason.others
    generated = f"{report.generated_at:%Y-%m-%d %H:%M:%S} UTC"
    body = [
        "<h1>Certbus certificate report</h1>",
        f'<p class="meta" id="coverage">Generated <b>{escape(generated)}</b> from the audit archive through '
        f"log position <b>{report.through_seq}</b> ({report.events} events read, {report.malformed} unreadable, "
        f"{report.ignored} not counted: see <code>certbus audit check</code>).</p>",
        '<div class="grid">',
        _card("certificates", report.certificates, "issued on the log"),
        _card("valid", valid, "not expired, revoked, superseded or destroyed"),
        _card(
            f"expiring within {report.expiring_days} days", report.expiring_total, "valid and expiring in the window"
        ),
        _card("revoked", revoked, "by any reason"),
        "</div>",
        f"<h2>Expiry timeline: valid certificates by expiry day, next {report.timeline_days} days</h2>",
        _day_chart("chart-expiry", report.expiry_timeline, today, expiry_end, EXPIRY_COLOUR),
        "<h2>Issuance per day (UTC)</h2>",
        _day_chart("chart-issuance", report.issued_per_day, issued_start, issued_end, ISSUANCE_COLOUR),
        '<div class="grid">',
        "<div><h2>By state</h2>",
        _tally_chart("chart-state", report.by_state.top, STATE_COLOURS),
        "</div>",
        "<div><h2>Revoked by reason</h2>",
        _tally_chart("chart-revoked", report.revoked_by_reason.top, {}),
        "</div>",
        "</div>",
        '<div class="grid">',
        _breakdown_table("table-issuer", "By issuer", "issuer", report.by_issuer),
        _breakdown_table("table-profile", "By profile", "profile", report.by_profile),
        _breakdown_table("table-requester", "By requester", "requester", report.by_requester),
        "</div>",
        _expiring_table(report),
    ]
    return page(f"Certbus certificate report, {generated}", body)


def page(title: str, body: Iterable[str]) -> str:
    """One self-contained HTML page (inline style, nothing fetched or run) around `body`'s HTML."""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def chart_frame(
    svg_id: str, top: str, *, width: int = WIDTH, height: int = HEIGHT, plot_end: int | None = None
) -> list[str]:
    """The opening of a chart's inline SVG (`width` x `height`): its two axes around the plot area (inside
    the PAD_* margins, up to x = `plot_end`), the y axis labelled `top` at the top and 0 at the bottom;
    the caller adds the marks and closes the svg."""
    plot_h = height - PAD_TOP - PAD_BOTTOM
    x_end = width - 8 if plot_end is None else plot_end
    return [
        f'<svg id="{svg_id}" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(svg_id)}">',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{x_end}" y2="{PAD_TOP + plot_h}"/>',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{PAD_TOP + plot_h}"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end">{escape(top)}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" text-anchor="end">0</text>',
    ]


def _card(title: str, value: int, note: str) -> str:
    return (
        f'<div class="card"><div>{escape(title)}</div><div class="big">{value}</div>'
        f'<div class="note">{escape(note)}</div></div>'
    )


def _day_chart(svg_id: str, days: Sequence[DayCount], start: date, end: date, colour: str) -> str:
    """Vertical bars, one slot per day from `start` to `end`; a bar for each day with a count."""
    span = max((end - start).days + 1, 1)
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_TOP - PAD_BOTTOM
    slot = plot_w / span
    shown = [d for d in days if start <= d.day <= end]
    top = max((d.count for d in shown), default=0)
    parts = chart_frame(svg_id, str(top))
    for i, label_day in enumerate((start, start + (end - start) / 2, end)):
        x = PAD_LEFT + slot * ((label_day - start).days + 0.5)
        anchor = ("start", "middle", "end")[i]
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{label_day.isoformat()}</text>')
    if top == 0:
        parts.append(
            f'<text class="empty" x="{WIDTH / 2:.0f}" y="{PAD_TOP + plot_h / 2:.0f}" text-anchor="middle">'
            "no certificates in this period</text>"
        )
    for d in shown:
        height = max(plot_h * d.count / top, 1.0)
        x = PAD_LEFT + slot * (d.day - start).days + (slot * 0.1 if slot >= 3 else 0)
        width = max(slot * 0.8 if slot >= 3 else slot, 1.0)
        parts.append(
            f'<rect class="bar" data-day="{d.day.isoformat()}" data-count="{d.count}" x="{x:.2f}" '
            f'y="{PAD_TOP + plot_h - height:.2f}" width="{width:.2f}" height="{height:.2f}" fill="{colour}">'
            f"<title>{d.day.isoformat()}: {d.count}</title></rect>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _tally_chart(svg_id: str, tallies: Sequence[Tally], colours: dict[str, str]) -> str:
    """Horizontal bars, one row per value, labelled with the value and its count."""
    row, label_w, bar_w, width = 24, 150, 260, 470
    height = max(len(tallies), 1) * row + 8
    top = max((t.count for t in tallies), default=0)
    parts = [
        f'<svg id="{svg_id}" class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(svg_id)}">'
    ]
    if not tallies:
        parts.append(f'<text class="empty" x="8" y="{row - 6}">none</text>')
    for i, t in enumerate(tallies):
        y = 4 + i * row
        length = bar_w * t.count / top if top else 0.0
        label = t.key if len(t.key) <= 24 else t.key[:23] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        if t.count:
            parts.append(
                f'<rect class="bar" data-key="{escape(t.key)}" data-count="{t.count}" x="{label_w}" y="{y + 3}" '
                f'width="{max(length, 1.0):.2f}" height="{row - 8}" fill="{colours.get(t.key, REASON_COLOUR)}">'
                f"<title>{escape(t.key)}: {t.count}</title></rect>"
            )
        parts.append(f'<text x="{label_w + length + 6:.2f}" y="{y + 15}">{t.count}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _breakdown_table(table_id: str, title: str, column: str, breakdown: Breakdown) -> str:
    total = sum(t.count for t in breakdown.top) + breakdown.others
    rows = [
        f'<tr><td>{escape(t.key)}</td><td class="n">{t.count}</td><td class="n">{_share(t.count, total)}</td></tr>'
        for t in breakdown.top
    ]
    if breakdown.others:
        rows.append(
            f'<tr><td><i>{breakdown.other_keys} more</i></td><td class="n">{breakdown.others}</td>'
            f'<td class="n">{_share(breakdown.others, total)}</td></tr>'
        )
    if not rows:
        rows.append('<tr><td colspan="3" class="note">none</td></tr>')
    return (
        f'<div><h2>{escape(title)}</h2><table id="{table_id}"><thead><tr><th>{escape(column)}</th>'
        f'<th class="n">certificates</th><th class="n">share</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _expiring_table(report: ReportAnswer) -> str:
    rows = [
        f"<tr><td>{escape(f'{c.not_after:%Y-%m-%d %H:%M}')}</td><td><code>{escape(c.serial)}</code></td>"
        f"<td>{escape(c.issuer_id)}</td><td>{escape(c.profile)}</td><td>{escape(c.requester)}</td>"
        f"<td>{escape(', '.join(c.dns_names))}</td></tr>"
        for c in report.expiring
    ]
    if not rows:
        rows.append('<tr><td colspan="6" class="note">none</td></tr>')
    shown = f"{len(report.expiring)} of {report.expiring_total}" if report.expiring_total else "none"
    return (
        f"<h2>Expiring within {report.expiring_days} days ({shown}, soonest first)</h2>"
        '<table id="table-expiring"><thead><tr><th>not after (UTC)</th><th>serial</th><th>issuer</th>'
        "<th>profile</th><th>requester</th><th>DNS names</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"
