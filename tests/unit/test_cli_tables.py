"""`print_table`: rich's drawing on a terminal; tab-separated plain lines anywhere else."""

from __future__ import annotations

import io

import pytest
from rich.table import Table
from rich.text import Text

from shared.client.cli import common
from shared.client.cli.common import print_table
from shared.client.cli.main import _health_table
from shared.client.readiness import judge_readiness


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def profiles() -> Table:
    table = Table("name", "lint", title="Profiles")
    table.add_row("a-profile-name-" + "x" * 48, "[green]full[/]")
    table.add_row(Text("[not markup]"), "[red]failed[/]")
    return table


def test_off_a_terminal_a_table_is_its_title_its_header_and_one_tab_separated_line_per_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_table(profiles())
    assert capsys.readouterr().out.splitlines() == [
        "Profiles",
        "name\tlint",
        "a-profile-name-" + "x" * 48 + "\tfull",
        "[not markup]\tfailed",
    ]


def test_off_a_terminal_a_tab_or_line_break_in_a_cell_is_escaped_so_a_row_stays_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = Table(show_header=False)
    table.add_row("detail", Text("one\ttwo\nthree"))
    print_table(table)
    assert capsys.readouterr().out == "detail\tone\\ttwo\\nthree\n"


def test_on_a_terminal_rich_draws_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(common.out, "file", terminal)
    print_table(profiles())
    drawn = terminal.getvalue()
    assert "┏" in drawn and "┃ name" in drawn and "\t" not in drawn


def test_health_off_a_terminal_is_one_tab_separated_row_per_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    written = io.StringIO()
    monkeypatch.setattr(common.out, "file", written)

    def replica(instance: str, **changed: object) -> dict[str, object]:
        report = {"service": "signing", "status": "ok", "ready": True, "missing": [], "database": True, "nats": True}
        return {**report, "instance": instance, "log_used": 0.01, "pid": 7, "uptime_s": 12.5, **changed}

    answer = {
        **replica("host-a:7"),
        "replicas": [replica("host-a:7", seen_s=0.0), replica("b", seen_s=8.1, silent=True)],
    }
    reports = judge_readiness([answer, {"service": "audit", "status": "down"}])
    print_table(_health_table(reports))
    assert written.getvalue().splitlines() == [
        "service\treplica\tstatus\tready\tdatabase\tnats\tlog used\tpid\tuptime (s)\tseen (s ago)",
        "signing\thost-a:7\tok\tyes\tTrue\tTrue\t1.0%\t7\t12.5\t0.0",
        "signing\tb\tsilent\tno\tTrue\tTrue\t1.0%\t7\t12.5\t8.1",
        "audit\t\tdown\tno\t\t\t\t\t\t",
    ]
