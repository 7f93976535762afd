"""`certbus operator`: who may command Certbus, and how many must agree.

Operator commands are signed with the operator's own key ($CERTBUS_HOME/operators/<name>.key.pem,
mode 0600); the services count a command only with enough valid signatures by operators
registered on the log before it. A command that needs several operators (a quorum, see
`operator quorum`) travels as a file: one operator writes it (`--out FILE`), others add their
signatures (`operator cosign FILE`), and any of them publishes it (`operator submit FILE`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from shared.base.files import write_atomic, write_new
from shared.client.cli.common import EXIT_REFUSED, JsonOpt, OperatorOpt, emit_json, err, home, operator, out, run

if TYPE_CHECKING:
    from shared.contract.events import OperatorCommand
    from shared.pki.crypto import PrivateKey

operator_app = typer.Typer(help="Operators: their keys, quorums, and commands several must sign.", no_args_is_help=True)
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out", help="Write the signed command to FILE for other operators to co-sign, instead of publishing."
    ),
]


def key_file(name: str) -> Path:
    """Where operator `name`'s signing key is kept."""
    return home() / "operators" / f"{name}.key.pem"


def _key(name: str) -> PrivateKey:
    from shared.base.settings import CommonSettings
    from shared.pki.holder import load_private_key

    configured = CommonSettings().operator_key_file  # CERTBUS_OPERATOR_KEY_FILE, if set
    path = configured if configured is not None else key_file(name)
    try:
        return load_private_key(path.read_bytes(), str(path))
    except OSError as exc:
        err.print(f"[red]error:[/] no signing key for operator {name!r} at {path}: {exc.strerror}")
        raise typer.Exit(EXIT_REFUSED) from None


def publish_or_write(command: OperatorCommand, who: str, out_file: Path | None, as_json: bool) -> None:
    """Sign `command` as `who`, then publish it, or write it to `out_file` for co-signing."""
    from shared.trust import operators

    signed = operators.sign(command, who, _key(who))
    if out_file is not None:
        write_atomic(out_file, signed.model_dump_json(indent=2).encode() + b"\n", mode=0o600)
        out.print(f"signed by {who}; others add their signatures with `certbus operator cosign {out_file}`")
        return
    seq = run(lambda c: c.publish(signed), operator=who)
    if as_json:
        emit_json(
            {"event_type": signed.event_type, "stream_seq": seq, "signed_by": [s.operator for s in signed.signatures]}
        )
    else:
        signers = ", ".join(s.operator for s in signed.signatures)
        out.print(f"{signed.event_type} published (log position {seq}), signed by {signers}")


def load_command(path: Path) -> OperatorCommand:
    """An operator command from a file written by `--out` (or `operator request`)."""
    from pydantic import TypeAdapter, ValidationError

    from shared.contract.events import AnyEvent, OperatorCommand

    adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
    try:
        command = adapter.validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        err.print(f"[red]error:[/] {path}: not an operator command: {exc}")
        raise typer.Exit(EXIT_REFUSED) from None
    if not isinstance(command, OperatorCommand):
        err.print(f"[red]error:[/] {path}: a {command.event_type} is not an operator command")
        raise typer.Exit(EXIT_REFUSED)
    return command


@operator_app.command("request")
def operator_request(
    name: Annotated[str, typer.Argument(help="The new operator's name (also their NATS identity).")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Where to write the signed registration.")] = None,
    submit: Annotated[
        bool, typer.Option("--submit", help="Publish it now: the genesis, on a log with no operator yet.")
    ] = False,
) -> None:
    """Create NAME's signing key (if missing) and its registration, signed by that key. On a log
    with no operator yet, `--submit` publishes it: the genesis. Otherwise write it (`--out`) for the
    registered operators to co-sign (`operator cosign`) and publish (`operator submit`)."""
    from shared.contract.events import utcnow
    from shared.pki.crypto import generate_key, key_pem
    from shared.trust import operators

    path = key_file(name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_new(path, key_pem(generate_key("ed25519")))
        out.print(f"created the signing key of operator {name} at {path} (mode 0600)")
    registration = operators.registration(name, _key(name), name, utcnow())
    if submit:
        seq = run(lambda c: c.publish(registration), operator=name)
        out.print(f"operator {name} registered (log position {seq})")
        return
    target = out_file or Path(f"{name}.registration.json")
    write_atomic(target, registration.model_dump_json(indent=2).encode() + b"\n", mode=0o600)
    out.print(f"wrote {target}: a registered operator runs `certbus operator cosign {target}`, then `submit`")


@operator_app.command("cosign")
def operator_cosign(path: Path, who: OperatorOpt = None) -> None:
    """Add your signature to a command in FILE (check what it says first: `cat FILE`)."""
    from shared.trust import operators

    command = load_command(path)
    name = operator(who)
    if any(s.operator == name for s in command.signatures):
        err.print(f"[yellow]{name} has signed {path} already[/]")
        raise typer.Exit(EXIT_REFUSED)
    signed = operators.sign(command, name, _key(name))
    write_atomic(path, signed.model_dump_json(indent=2).encode() + b"\n", mode=0o600)
    out.print(f"signed {command.event_type} in {path}; signatures: {', '.join(s.operator for s in signed.signatures)}")


@operator_app.command("submit")
def operator_submit(path: Path, who: OperatorOpt = None, as_json: JsonOpt = False) -> None:
    """Publish a command from FILE with the signatures it carries."""
    command = load_command(path)
    seq = run(lambda c: c.publish(command), operator=operator(who))
    if as_json:
        emit_json(
            {"event_type": command.event_type, "stream_seq": seq, "signed_by": [s.operator for s in command.signatures]}
        )
    else:
        out.print(f"{command.event_type} published (log position {seq})")


@operator_app.command("remove")
def operator_remove(
    name: str,
    reason: Annotated[str, typer.Option(help="Why (recorded on the log).")],
    who: OperatorOpt = None,
    out_file: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove an operator: their key no longer counts (needs the `operator` quorum)."""
    from shared.contract.events import OperatorRemoved, utcnow

    command = OperatorRemoved.first(
        name,
        producer="operator",
        at=utcnow(),
        correlation_id=f"operator-{name}",
        reason=reason,
        removed_by=operator(who),
    )
    publish_or_write(command, operator(who), out_file, as_json)


@operator_app.command("quorum")
def operator_quorum(
    kind: Annotated[
        Literal["operator", "ca_compromise", "ca_retire", "ca_ceremony"], typer.Argument(help="The kind of command.")
    ],
    required: Annotated[int, typer.Argument(help="How many distinct operators must sign it.", min=1, max=16)],
    who: OperatorOpt = None,
    out_file: OutOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set how many operators must sign a kind of command (the two-person rule): `operator` for
    registering and removing operators and for quorums, `ca_compromise`, `ca_retire`, `ca_ceremony`
    (what the offline root ceremony writes). Approvals take theirs from the profile (`approvals_required`)."""
    from shared.contract.events import QuorumSet, utcnow

    command = QuorumSet.first(
        kind, producer="operator", at=utcnow(), correlation_id=f"quorum-{kind}", required=required, set_by=operator(who)
    )
    publish_or_write(command, operator(who), out_file, as_json)


@operator_app.command("show")
def operator_show(path: Path) -> None:
    """Print a command file: what it would do and who signed it."""
    command = load_command(path)
    body = json.loads(command.model_dump_json(exclude={"signatures"}))
    out.print_json(json.dumps(body))
    out.print(f"signed by: {', '.join(s.operator for s in command.signatures) or 'nobody yet'}")
