"""`certbus provisioner|profile|key`: operator policy, every change an event on the audited log."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shared.client.cli import provisioner
from shared.client.cli.common import (
    EXIT_REFUSED,
    JsonOpt,
    OperatorOpt,
    emit_json,
    err,
    home,
    operator,
    out,
    print_table,
    run,
)

if TYPE_CHECKING:
    from shared.client.sdk import CertbusClient

provisioner_app = typer.Typer(help="Provisioners: the keys that sign one-time enrollment tokens.", no_args_is_help=True)
profile_app = typer.Typer(help="Certificate profiles: what each kind of certificate may contain.", no_args_is_help=True)
key_app = typer.Typer(help="Public keys that may never be certified (e.g. after a compromise).", no_args_is_help=True)


ScopeOpt = Annotated[
    list[str] | None,
    typer.Option(help="Repeat to scope the provisioner: it may enroll only these (default: any)."),
]


def _register(provisioner_id: str, public_key_pem: str, who: str | None, **scope: Any) -> int:
    from shared.contract.events import ProvisionerRegistered, utcnow

    event = ProvisionerRegistered.first(
        provisioner_id,
        producer="operator",
        at=utcnow(),
        correlation_id=f"provisioner-{provisioner_id}",
        name=provisioner_id,
        public_key_pem=public_key_pem,
        registered_by=operator(who),
        **scope,
    )
    return run(lambda c: c.publish(event), operator=operator(who))


@provisioner_app.command("add")
def provisioner_add(
    provisioner_id: Annotated[str, typer.Argument(help="A short id, e.g. ci or team-payments.")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="A PEM public key (Ed25519 or EC P-256) whose private half you keep elsewhere."),
    ] = None,
    algorithm: Annotated[str, typer.Option(help="EdDSA or ES256, for a key created here.")] = "EdDSA",
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Scope: a profile it may enroll under.")
    ] = None,
    suffix: Annotated[list[str] | None, typer.Option("--suffix", help="Scope: names under this suffix only.")] = None,
    requester: Annotated[
        list[str] | None, typer.Option("--requester", help="Scope: a requester identity that may use its tokens.")
    ] = None,
    max_per_hour: Annotated[int | None, typer.Option(help="Scope: at most this many certificates an hour.")] = None,
) -> None:
    """Register a provisioner: its public key verifies the tokens it signs.

    Without --public-key, a key is created under CERTBUS_HOME (mode 0600), so that
    `certbus token create --provisioner ID` can sign with it. --profile, --suffix and --requester
    (each repeatable) and --max-per-hour scope what its tokens may enroll; registering again
    replaces the scope.
    """
    from cryptography.hazmat.primitives import serialization

    from shared.pki.tokens import algorithm_for

    if public_key is not None:
        try:
            loaded = serialization.load_pem_public_key(public_key.read_bytes())
            algorithm = algorithm_for(loaded)
        except (ValueError, OSError) as exc:
            err.print(f"[red]error:[/] {public_key}: {exc}")
            raise typer.Exit(EXIT_REFUSED) from None
        pem = loaded.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        created = False
    else:
        key, created = provisioner.load_or_create(home(), provisioner_id, algorithm)
        algorithm, pem = algorithm_for(key), provisioner.public_pem(key)
    seq = _register(
        provisioner_id,
        pem,
        who,
        profiles=profile,
        name_suffixes=suffix,
        requesters=requester,
        max_per_hour=max_per_hour,
    )
    result = {"provisioner": provisioner_id, "algorithm": algorithm, "created_key": created, "stream_seq": seq}
    if as_json:
        emit_json(result)
    else:
        out.print(f"registered provisioner [bold]{provisioner_id}[/] ({algorithm}, log seq {seq})")


@provisioner_app.command("init")
def provisioner_init(
    provisioner_id: Annotated[str, typer.Option("--id")] = provisioner.DEFAULT_ID,
    as_json: JsonOpt = False,
) -> None:
    """Create the local provisioner key if missing and register it (what `make run` does)."""
    provisioner_add(provisioner_id, None, "EdDSA", None, as_json, None, None, None, None)


@provisioner_app.command("list")
def provisioner_list(as_json: JsonOpt = False) -> None:
    """Every provisioner, with its status (an operator's query)."""
    answer = run(lambda c: c.provisioners(), operator=operator())
    if as_json:
        emit_json([p.model_dump(mode="json", exclude={"public_key_pem"}) for p in answer.provisioners])
        return
    table = Table("id", "status", "registered", "by", "why")
    for p in answer.provisioners:
        colour = "green" if p.status == "active" else "red"
        table.add_row(
            p.provisioner_id,
            f"[{colour}]{p.status}[/]",
            f"{p.registered_at:%Y-%m-%d %H:%M}",
            p.status_by or p.registered_by,
            p.status_reason or "",
        )
    print_table(table)


@provisioner_app.command("disable")
def provisioner_disable(
    provisioner_id: str,
    reason: Annotated[str, typer.Option(help="Why (recorded on the log).")],
    who: OperatorOpt = None,
) -> None:
    """Disable a provisioner: its tokens stop working at once (register it again to enable it)."""
    from shared.contract.events import ProvisionerDisabled, utcnow

    event = ProvisionerDisabled.first(
        provisioner_id,
        producer="operator",
        at=utcnow(),
        correlation_id=f"provisioner-{provisioner_id}",
        reason=reason,
        disabled_by=operator(who),
    )
    seq = run(lambda c: c.publish(event), operator=operator(who))
    out.print(f"disabled provisioner [bold]{provisioner_id}[/] (log seq {seq})")


@provisioner_app.command("remove")
def provisioner_remove(provisioner_id: str, who: OperatorOpt = None) -> None:
    """Remove a provisioner for good."""
    from shared.contract.events import ProvisionerRemoved, utcnow

    event = ProvisionerRemoved.first(
        provisioner_id,
        producer="operator",
        at=utcnow(),
        correlation_id=f"provisioner-{provisioner_id}",
        removed_by=operator(who),
    )
    seq = run(lambda c: c.publish(event), operator=operator(who))
    out.print(f"removed provisioner [bold]{provisioner_id}[/] (log seq {seq})")


@profile_app.command("apply")
def profile_apply(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A TOML file of [profiles.<name>].")],
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply every profile in FILE and report signing's lint of each one's templates.

    Exit 1 if any profile failed lint (it cannot be used until fixed).
    """
    from shared.contract.profiles import load_profiles

    try:
        profiles = load_profiles(file)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_REFUSED) from None

    async def apply_all(c: CertbusClient) -> list[dict[str, Any]]:
        results = []
        for profile in profiles:
            verdict = await c.apply_profile(profile, operator(who))
            results.append(
                {
                    "profile": profile.name,
                    "digest": verdict.digest,
                    "usable": verdict.usable,
                    "findings": [f.model_dump() for f in verdict.findings],
                }
            )
        return results

    results = run(apply_all, operator=operator(who))
    if as_json:
        emit_json(results)
    else:
        for r in results:
            mark = "[green]usable[/]" if r["usable"] else "[red]UNUSABLE: template fails lint[/]"
            out.print(f"applied [bold]{r['profile']}[/] ({str(r['digest'])[:12]}): {mark}")
            for f in r["findings"]:
                out.print(f"  {f['key_type']}: {f['severity']} {f['code']} {f['message']}")
    if not all(r["usable"] for r in results):
        raise typer.Exit(EXIT_REFUSED)


@profile_app.command("list")
def profile_list(as_json: JsonOpt = False) -> None:
    """The current profiles."""
    answer = run(lambda c: c.profiles())
    if as_json:
        emit_json([p.model_dump(mode="json") for p in answer.profiles])
        return
    table = Table("name", "usage", "names", "keys", "validity (d)", "approval", "lint", "applied by")
    for p in answer.profiles:
        b = p.body
        names = ", ".join([*(f"*.{s}" for s in b["dns_suffixes"]), *b["dns_patterns"]])
        table.add_row(
            p.name,
            b["usage"],
            names,
            ", ".join(b["key_types"]),
            f"{b['default_validity_days']} / max {b['max_validity_days']}",
            "operator" if b["require_approval"] else "automatic",
            "[red]failed[/]" if p.lint_failed else f"[green]{b['lint']}[/]",
            p.applied_by,
        )
    print_table(table)


def _spki_of(path: Path) -> str:
    """The SPKI SHA-256 of the key in a PEM certificate, CSR or public key file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    data = path.read_bytes()
    for load in (x509.load_pem_x509_certificate, x509.load_pem_x509_csr):
        try:
            return _spki_hash(load(data).public_key())
        except ValueError:
            continue
    return _spki_hash(serialization.load_pem_public_key(data))


def _spki_hash(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@key_app.command("block")
def key_block(
    reason: Annotated[str, typer.Option(help="Why (recorded on the log).")],
    spki: Annotated[str | None, typer.Option(help="The key's SPKI SHA-256, hex.")] = None,
    source: Annotated[
        Path | None, typer.Option("--from", help="A PEM certificate, CSR or public key whose key to block.")
    ] = None,
    who: OperatorOpt = None,
) -> None:
    """Block a public key: no enrollment with it is ever approved again."""
    from shared.contract.events import KeyBlocked, utcnow

    if (spki is None) == (source is None):
        raise typer.BadParameter("give exactly one of --spki or --from")
    try:
        digest = _spki_of(source) if source is not None else (spki or "").lower()
    except (ValueError, OSError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_REFUSED) from None
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise typer.BadParameter("an SPKI SHA-256 is 64 hex digits", param_hint="--spki")
    event = KeyBlocked.first(
        digest,
        producer="operator",
        at=utcnow(),
        correlation_id=f"block-{digest[:16]}",
        spki_sha256=digest,
        reason=reason,
        blocked_by=operator(who),
    )
    seq = run(lambda c: c.publish(event), operator=operator(who))
    out.print(f"blocked key [bold]{digest}[/] (log seq {seq})")
