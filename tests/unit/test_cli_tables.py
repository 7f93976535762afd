"""`print_table`: rich's drawing on a terminal; tab-separated plain lines anywhere else."""

from __future__ import annotations

import io

import pytest
from rich.table import Table
from rich.text import Text

from shared.client.cli import common
from shared.client.cli.common import print_table


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
