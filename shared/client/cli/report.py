"""`certbus audit report`: the certificate inventory as terminal tables, JSON, CSV or an HTML page."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from shared.client.cli.common import EXIT_REFUSED, JsonOpt, emit_json, err, operator, out, print_table, run

if TYPE_CHECKING:
    from shared.contract.queries import Breakdown, DayCount, ReportAnswer

CSV_COLUMNS = ("section", "key", "value", "serial", "issuer", "profile", "requester", "not_after", "dns_names")
BREAKDOWNS = ("state", "issuer", "profile", "requester", "revoked_reason")
TERMINAL_DAYS = 30  # day rows shown per series in the terminal (JSON, CSV and HTML have them all)
CSV_HELP = (
    "Print one CSV table for a spreadsheet (filter on the first column). Columns: "
    + ", ".join(CSV_COLUMNS)
    + ". Sections summary, state, issuer, profile, requester, revoked_reason, issued_per_day, "
    "expiry_timeline fill key and value (a count, or a summary figure); section expiring has one row "
    "per certificate in the other columns. Cells from events that start with = + - @ are prefixed with ' so no "
    "spreadsheet runs them as formulas."
)


def audit_report(
    days: Annotated[
        int, typer.Option("--days", min=0, max=3650, help="List the valid certificates expiring within N days.")
    ] = 30,
    limit: Annotated[int, typer.Option(min=0, max=2000, help="At most this many expiring certificates.")] = 1000,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help=CSV_HELP)] = False,
    html_file: Annotated[
        Path | None,
        typer.Option(
            "--html",
            dir_okay=False,
            help="Write one self-contained HTML page with charts (no script, nothing fetched) to FILE "
            "instead of the tables (--json or --csv still print).",
        ),
    ] = None,
) -> None:
    """The certificate inventory from the audit archive: counts by state (valid, expired, revoked,
    superseded, destroyed), issuer, profile and requester; revocations by reason; issuance per day;
    the expiry timeline; the certificates expiring within --days. As tables, --json, --csv, --html FILE."""
    if as_json and as_csv:
        raise typer.BadParameter("choose --json or --csv, not both")
    answer = run(lambda c: c.report(expiring_days=days, limit=limit), operator=operator())
    if html_file is not None:
        from shared.client.cli.report_html import render_html

        try:
            html_file.write_text(render_html(answer), encoding="utf-8")
        except OSError as exc:
            err.print(f"[red]error:[/] cannot write the HTML report: {exc}")
            raise typer.Exit(EXIT_REFUSED) from None
        err.print(
            f"wrote {html_file}: {answer.certificates} certificates, log through seq {answer.through_seq}",
            soft_wrap=True,
        )
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    elif as_csv:
        typer.echo(report_csv(answer), nl=False)
    elif html_file is None:
        print_report(answer)


def report_csv(report: ReportAnswer) -> str:
    """The report as one CSV table (see CSV_HELP)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_csv_rows(report))
    return buffer.getvalue()


def _csv_rows(report: ReportAnswer) -> Iterator[list[str]]:
    summary = {
        "generated_at": report.generated_at.isoformat(),
        "through_seq": report.through_seq,
        "events": report.events,
        "malformed": report.malformed,
        "ignored": report.ignored,
        "certificates": report.certificates,
        "expiring_days": report.expiring_days,
        "expiring_total": report.expiring_total,
    }
    for key, value in summary.items():
        yield ["summary", key, str(value)]
    for section, breakdown in zip(BREAKDOWNS, _breakdowns(report), strict=True):
        for t in breakdown.top:
            yield [section, _cell(t.key), str(t.count)]
        if breakdown.others:
            yield [section, f"({breakdown.other_keys} more)", str(breakdown.others)]
    for section, series in (("issued_per_day", report.issued_per_day), ("expiry_timeline", report.expiry_timeline)):
        for d in series:
            yield [section, d.day.isoformat(), str(d.count)]
    for c in report.expiring:
        yield [
            "expiring",
            "",
            "",
            _cell(c.serial),
            _cell(c.issuer_id),
            _cell(c.profile),
            _cell(c.requester),
            c.not_after.isoformat(),
            _cell(" ".join(c.dns_names)),
        ]


def _cell(text: str) -> str:
    """Text a spreadsheet shows as text: a leading = + - @ (or tab, CR) would start a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _breakdowns(report: ReportAnswer) -> tuple[Breakdown, ...]:
    return (report.by_state, report.by_issuer, report.by_profile, report.by_requester, report.revoked_by_reason)


def print_report(report: ReportAnswer) -> None:
    """Rich tables, one per section (event text is shown as text, never as markup)."""
    out.print(
        f"[bold]{report.certificates}[/] certificates on the log through seq {report.through_seq} "
        f"({report.events} events, {report.malformed} unreadable, {report.ignored} not counted), "
        f"judged at {report.generated_at:%Y-%m-%d %H:%M:%S} UTC in {report.seconds:.2f} s"
    )
    titles = ("By state", "By issuer", "By profile", "By requester", "Revoked by reason")
    columns = ("state", "issuer", "profile", "requester", "reason")
    for title, column, breakdown in zip(titles, columns, _breakdowns(report), strict=True):
        table = Table(column, "certificates", title=title, title_justify="left")
        for t in breakdown.top:
            table.add_row(Text(t.key), str(t.count))
        if breakdown.others:
            table.add_row(Text(f"({breakdown.other_keys} more)", style="italic"), str(breakdown.others))
        print_table(table)
    print_table(_day_table("Issued per day (UTC), latest", report.issued_per_day[-TERMINAL_DAYS:]))
    timeline = f"Expiry timeline, next {report.timeline_days} days"
    print_table(_day_table(timeline, report.expiry_timeline[:TERMINAL_DAYS]))
    table = Table(
        "not after (UTC)",
        "serial",
        "issuer",
        "profile",
        "requester",
        "DNS names",
        title=f"Expiring within {report.expiring_days} days: {report.expiring_total}"
        + (f" (first {len(report.expiring)} shown)" if len(report.expiring) < report.expiring_total else ""),
        title_justify="left",
    )
    for c in report.expiring:
        table.add_row(
            f"{c.not_after:%Y-%m-%d %H:%M}",
            Text(c.serial),
            Text(c.issuer_id),
            Text(c.profile),
            Text(c.requester),
            Text(", ".join(c.dns_names)),
        )
    print_table(table)


def _day_table(title: str, days: Sequence[DayCount]) -> Table:
    table = Table("day", "certificates", "", title=title, title_justify="left")
    top = max((d.count for d in days), default=0)
    for d in days:
        table.add_row(d.day.isoformat(), str(d.count), "█" * max(1, round(30 * d.count / top)))
    return table
