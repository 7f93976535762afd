"""How `audit verify` and `audit replay` verdicts are printed (by `certbus` and by `certbus-audit`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.client.cli.common import out

if TYPE_CHECKING:
    from shared.contract.queries import ReplayAnswer, VerifyAnswer


def print_verify(answer: VerifyAnswer) -> None:
    """The verdict of a verification: clean, or the first position that is not and how."""
    if answer.clean:
        out.print(
            f"[green]clean[/]: {answer.archived_events} events through seq {answer.stream_last_seq}, "
            f"{answer.checkpoints_checked} signed checkpoints, {answer.seconds:.2f} s ({answer.rate_per_s:.0f}/s)"
        )
        return
    out.print(f"[red]TAMPERED[/] at seq {answer.first_seq}: {answer.kind}: {answer.detail}")
    for p in answer.problems[1:]:
        out.print(f"  seq {p.stream_seq}: {p.kind}: {p.detail}")
    if answer.positions_with_problems > len(answer.problems):
        out.print(f"  ... {answer.positions_with_problems} positions in all")


def print_replay(answer: ReplayAnswer) -> None:
    """What a replay rebuilt and whether it equals what the archive held (and the verification)."""
    verdict = "[green]equal[/]" if answer.equal else "[yellow]differed; archive rebuilt from the log[/]"
    out.print(f"replayed {answer.events} events in {answer.seconds:.2f} s ({answer.rate_per_s:.0f}/s): {verdict}")
    out.print(f"head seq {answer.last_seq} hash {answer.head_hash}")
    if answer.verified is not None:
        print_verify(answer.verified)


def replay_failed(answer: ReplayAnswer) -> bool:
    """A replay that differed, or whose verification was not clean, fails the command."""
    return not answer.equal or (answer.verified is not None and not answer.verified.clean)
