"""`certbus`: every command takes --json; exit 0 success, 1 refused/revoked/invalid, 3 unreachable."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from shared.cli import provisioner
from shared.client import SERVICES, CertbusClient, CertbusError, Rejected, Unreachable
from shared.crypto import KEY_TYPES, build_csr, generate_key, key_pem
from shared.events import ProvisionerRegistered, utcnow
from shared.reasons import REASONS
from shared.tokens import TokenError, create_token

app = typer.Typer(
    help="Certbus: a private CA and certificate lifecycle manager.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="One-time enrollment tokens.", no_args_is_help=True)
provisioner_app = typer.Typer(help="Provisioners (keys that sign enrollment tokens).", no_args_is_help=True)
audit_app = typer.Typer(help="The audit archive: history and replay.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(provisioner_app, name="provisioner")
app.add_typer(audit_app, name="audit")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
EXIT_REFUSED, EXIT_UNREACHABLE = 1, 3


def home() -> Path:
    """The operator's local Certbus directory (CERTBUS_HOME, default ./.certbus)."""
    return Path(os.environ.get("CERTBUS_HOME", ".certbus"))


def _run(fn: Callable[[CertbusClient], Awaitable[T]], requester: str = "cli") -> T:
    async def main() -> T:
        async with CertbusClient(requester=requester) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except Unreachable as exc:
        err.print(f"[red]unreachable:[/] {exc}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except Rejected as exc:
        raise _refused(exc) from None
    except (CertbusError, TokenError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_REFUSED) from None


def _refused(exc: Rejected) -> typer.Exit:
    err.print("[red]refused:[/]")
    for reason in exc.reasons:
        err.print(f"  [bold]{reason.code}[/]: {reason.message}")
    return typer.Exit(EXIT_REFUSED)


def _emit_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def _parse_ttl(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smh])", text.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit, like 90s, 15m or 1h")
    value, unit = int(match[1]), match[2]
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600}[unit])


@app.command()
def health(as_json: JsonOpt = False) -> None:
    """Ask each of the five services whether it is up; exit 0 only if all answer ok."""

    async def ask(client: CertbusClient) -> list[dict[str, Any]]:
        async def one(name: str) -> dict[str, Any]:
            try:
                return await client.health(name)
            except Unreachable:
                return {"service": name, "status": "down"}

        return list(await asyncio.gather(*(one(s) for s in SERVICES)))

    reports = _run(ask)
    if as_json:
        _emit_json(reports)
    else:
        table = Table("service", "status", "database", "nats", "pid", "uptime (s)")
        for r in reports:
            colour = "green" if r["status"] == "ok" else "red"
            table.add_row(
                r["service"],
                f"[{colour}]{r['status']}[/]",
                str(r.get("database", "")),
                str(r.get("nats", "")),
                str(r.get("pid", "")),
                str(r.get("uptime_s", "")),
            )
        out.print(table)
    if any(r["status"] != "ok" for r in reports):
        raise typer.Exit(EXIT_REFUSED)


@provisioner_app.command("init")
def provisioner_init(
    provisioner_id: Annotated[str, typer.Option("--id")] = provisioner.DEFAULT_ID,
    as_json: JsonOpt = False,
) -> None:
    """Create the local provisioner key if missing and register its public key on the log."""
    key, created = provisioner.load_or_create(home(), provisioner_id)
    event = ProvisionerRegistered(
        aggregate_id=provisioner_id,
        occurred_at=utcnow(),
        correlation_id=f"provisioner-{provisioner_id}",
        producer="operator",
        name=provisioner_id,
        public_key_pem=provisioner.public_pem(key),
        registered_by=os.environ.get("USER", "operator"),
    )
    seq = _run(lambda c: c.publish(event), requester="operator")
    result = {
        "provisioner": provisioner_id,
        "created_key": created,
        "stream_seq": seq,
        "key_file": str(provisioner.key_path(home(), provisioner_id)),
    }
    _emit_json(result) if as_json else out.print(f"registered provisioner [bold]{provisioner_id}[/] (log seq {seq})")


@token_app.command("create")
def token_create(
    san: Annotated[list[str], typer.Option("--san", help="A DNS name the token allows (repeatable).")],
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 15m (at most 1h).")] = "15m",
    profile: str = "default-tls",
    provisioner_id: Annotated[str, typer.Option("--provisioner")] = provisioner.DEFAULT_ID,
    as_json: JsonOpt = False,
) -> None:
    """Print a one-time enrollment token for the given names (keep it secret; it works once)."""
    path = provisioner.key_path(home(), provisioner_id)
    if not path.exists():
        err.print(f"[red]no provisioner key at {path}[/]: run `certbus provisioner init` (make run does)")
        raise typer.Exit(EXIT_REFUSED)
    key, _ = provisioner.load_or_create(home(), provisioner_id)
    token = create_token(key, provisioner_id, san, utcnow(), _parse_ttl(ttl), profile=profile)
    _emit_json({"token": token}) if as_json else print(token)


@app.command()
def enroll(
    token: Annotated[str, typer.Option(help="The one-time token from `certbus token create`.")],
    san: Annotated[list[str], typer.Option("--san", help="A DNS name to certify (repeatable).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for key.pem, cert.pem, chain.pem.")],
    key_type: Annotated[str, typer.Option(help=f"One of {', '.join(KEY_TYPES)}.")] = "ec-p256",
    profile: str = "default-tls",
    timeout: float = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Generate a key here, request a certificate for it, and write key, certificate and chain."""
    if key_type not in KEY_TYPES:
        raise typer.BadParameter(f"choose one of {', '.join(KEY_TYPES)}", param_hint="--key-type")
    key = generate_key(key_type)
    csr = build_csr(key, san).decode()
    issued = _run(lambda c: c.enroll(csr, token, profile, timeout), requester=os.environ.get("USER", "cli"))
    out_dir.mkdir(parents=True, exist_ok=True)
    key_file = out_dir / "key.pem"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem(key))
    os.chmod(key_file, 0o600)
    (out_dir / "cert.pem").write_text(issued.cert_pem)
    (out_dir / "chain.pem").write_text(issued.chain_pem)
    result = {
        "serial": issued.serial,
        "issuer": issued.issuer_id,
        "not_after": issued.not_after,
        "dns_names": issued.dns_names,
        "dir": str(out_dir),
    }
    if as_json:
        _emit_json(result)
    else:
        out.print(
            f"issued serial [bold]{issued.serial}[/] by {issued.issuer_id}, "
            f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC"
        )
        out.print(f"wrote {key_file} (0600), {out_dir / 'cert.pem'}, {out_dir / 'chain.pem'}")


@app.command()
def status(serial: str, as_json: JsonOpt = False) -> None:
    """The status of a certificate by serial (hex): exit 0 good, 1 revoked or unknown."""
    answer = _run(lambda c: c.status(serial))
    if as_json:
        _emit_json(answer.model_dump(mode="json"))
    else:
        table = Table(show_header=False)
        for k, v in answer.model_dump().items():
            table.add_row(k, str(v))
        out.print(table)
    if answer.status != "good":
        raise typer.Exit(EXIT_REFUSED)


@app.command()
def validate(
    cert: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A PEM certificate.")],
    as_json: JsonOpt = False,
) -> None:
    """Validate a PEM certificate: exit 0 good, 1 revoked, expired, untrusted or unknown."""
    answer = _run(lambda c: c.validate(cert.read_text()))
    if as_json:
        _emit_json(answer.model_dump(mode="json"))
    else:
        colour = "green" if answer.status == "good" else "red"
        out.print(f"[{colour}]{answer.status}[/] serial {answer.serial}: {answer.detail}")
    if answer.status != "good":
        raise typer.Exit(EXIT_REFUSED)


@app.command()
def revoke(
    serial: str,
    reason: Annotated[str, typer.Option(help=f"One of {', '.join(REASONS)}.")] = "unspecified",
    as_json: JsonOpt = False,
) -> None:
    """Revoke a certificate by serial (hex), with an RFC 5280 reason."""
    if reason not in REASONS:
        raise typer.BadParameter(f"choose one of {', '.join(REASONS)}", param_hint="--reason")
    revoked = _run(lambda c: c.revoke(serial, reason), requester=os.environ.get("USER", "operator"))
    if as_json:
        _emit_json(revoked.model_dump(mode="json"))
    else:
        out.print(
            f"revoked serial [bold]{revoked.serial}[/] ({revoked.reason}) at {revoked.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        )


@app.command()
def crl(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the DER CRL.")],
    issuer: Annotated[str | None, typer.Option(help="Issuer id (default: the current issuing CA).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the newest CRL (DER) of the issuing CA."""
    answer = _run(lambda c: c.crl(issuer))
    out_file.write_bytes(base64.b64decode(answer.der_b64))
    info = {
        "issuer": answer.ca_id,
        "crl_number": answer.crl_number,
        "next_update": answer.next_update,
        "file": str(out_file),
    }
    _emit_json(info) if as_json else out.print(f"CRL #{answer.crl_number} of {answer.ca_id} written to {out_file}")


@audit_app.command("history")
def audit_history(serial: str, as_json: JsonOpt = False) -> None:
    """Every event of a certificate, in log order, from its request to now."""
    answer = _run(lambda c: c.history(serial))
    if not answer.events and not as_json:
        err.print(f"no events on the log name serial or certificate {serial}")
        raise typer.Exit(EXIT_REFUSED)
    if as_json:
        _emit_json(answer.model_dump(mode="json"))
    else:
        table = Table("seq", "event", "producer", "when (UTC)", "detail")
        for e in answer.events:
            detail = e.event.get("reason") or e.event.get("requested_by") or e.event.get("requester") or ""
            if isinstance(detail, dict):
                detail = detail.get("code", "")
            table.add_row(
                str(e.stream_seq), e.event_type, e.producer, f"{e.occurred_at:%Y-%m-%d %H:%M:%S}", str(detail)
            )
        out.print(table)
    if not answer.events:
        raise typer.Exit(EXIT_REFUSED)


@audit_app.command("replay")
def audit_replay(as_json: JsonOpt = False) -> None:
    """Rebuild the audit archive from stream sequence 1 and say whether it equals what it had."""
    answer = _run(lambda c: c.replay())
    if as_json:
        _emit_json(answer.model_dump(mode="json"))
    else:
        verdict = "[green]equal[/]" if answer.equal else "[yellow]differed; archive rebuilt from the log[/]"
        out.print(f"replayed {answer.events} events in {answer.seconds:.2f} s ({answer.rate_per_s:.0f}/s): {verdict}")
        out.print(f"head seq {answer.last_seq} hash {answer.head_hash}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
