"""`certbus`: every command takes --json; exit 0 success, 1 refused/revoked/invalid, 2 usage error,
3 unreachable, 4 waiting for an operator's approval."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from shared.client.cli import provisioner
from shared.client.cli.acme import acme_app
from shared.client.cli.agent import agent, renew
from shared.client.cli.audit_views import print_replay, print_verify, replay_failed
from shared.client.cli.ca import ca_app
from shared.client.cli.common import (
    EXIT_REFUSED,
    JsonOpt,
    client_settings,
    emit_json,
    err,
    home,
    operator,
    out,
    print_table,
    run,
    write_issued,
)
from shared.client.cli.operators import operator_app
from shared.client.cli.policy import key_app, profile_app, provisioner_app
from shared.client.cli.report import audit_report
from shared.client.cli.requests import approve, reject, requests_app
from shared.client.cli.revoke import destroy, revoke
from shared.client.errors import OPTIONAL_SERVICES, Unreachable
from shared.pki.key_types import KEY_TYPES

# Each command imports the SDK (NATS), the contract and cryptography when it runs: `certbus --help`
# and a mistyped command never pay for them.
if TYPE_CHECKING:
    from shared.contract.queries import ReplayProgress

app = typer.Typer(
    help="Certbus: a private CA and certificate lifecycle manager.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="One-time enrollment tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit archive: history and replay.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(provisioner_app, name="provisioner")
app.add_typer(operator_app, name="operator")
app.add_typer(profile_app, name="profile")
app.add_typer(key_app, name="key")
app.add_typer(requests_app, name="requests")
app.add_typer(audit_app, name="audit")
app.add_typer(ca_app, name="ca")
app.add_typer(acme_app, name="acme")
app.command()(approve)
app.command()(reject)
app.command()(revoke)
app.command()(renew)
app.command()(agent)
app.command()(destroy)
audit_app.command("report")(audit_report)


def _parse_ttl(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smh])", text.strip())
    if not match:
        raise typer.BadParameter("use a number and a unit, like 90s, 15m or 1h")
    value, unit = int(match[1]), match[2]
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600}[unit])


@app.command()
def health(as_json: JsonOpt = False) -> None:
    """Ask each of the five services whether it is up and ready, with one row per replica, and ACME
    where it is deployed (its /readyz at CERTBUS_ACME_READYZ_URL); exit 0 only if the system can do
    its job: every service answers, an issuing CA exists, a profile is applied, validation has a
    current OCSP responder certificate for every issuing CA, and ACME (if deployed) serves over TLS.
    A service is ready if any replica that is not silent is; what its other replicas lack is a
    warning. Prints what is missing otherwise."""
    reports = run(lambda client: client.readiness())
    if as_json:
        emit_json(reports)
    else:
        asked = {r["service"] for r in reports}
        print_table(_health_table(reports, not_deployed=[s for s in OPTIONAL_SERVICES if s not in asked]))
        for warning in sorted({w for r in reports for w in r.get("warnings", [])}):
            err.print(f"[yellow]warning:[/] {escape(warning)}")
        for r in reports:
            for missing in r["missing"]:
                err.print(f"not ready: {r['service']}: {missing}", markup=False, highlight=False)
    if not all(r["ready"] for r in reports):
        raise typer.Exit(EXIT_REFUSED)


def _health_table(reports: list[dict[str, Any]], not_deployed: Sequence[str] = ()) -> Table:
    """One row per replica of each service, as `judge_readiness` settled them; one for each optional
    service not part of this deployment, which is neither ready nor missing."""
    table = Table(
        "service", "replica", "status", "ready", "database", "nats", "log used", "pid", "uptime (s)", "seen (s ago)"
    )
    for service in reports:
        for r in service["replicas"]:
            status = "silent" if r["silent"] else str(r.get("status", ""))
            used = r.get("log_used")
            table.add_row(
                service["service"],
                Text(str(r.get("instance", ""))),
                f"[{'green' if status == 'ok' else 'red'}]{escape(status)}[/]",
                "[green]yes[/]" if r["ready"] else "[red]no[/]",
                str(r.get("database", "")),
                str(r.get("nats", "")),
                f"{used:.1%}" if isinstance(used, float | int) else "",
                str(r.get("pid", "")),
                str(r.get("uptime_s", "")),
                str(r.get("seen_s", "")),
            )
    for name in not_deployed:
        table.add_row(name, "", "not deployed", "-", "", "", "", "", "", "")
    return table


@token_app.command("create")
def token_create(
    san: Annotated[list[str], typer.Option("--san", help="A name the token allows (repeatable).")],
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 15m (at most 1h).")] = "15m",
    profile: str = "tls-server",
    provisioner_id: Annotated[str, typer.Option("--provisioner")] = provisioner.DEFAULT_ID,
    as_json: JsonOpt = False,
) -> None:
    """Print a one-time enrollment token for the given names (keep it secret; it works once)."""
    from shared.contract.events import utcnow
    from shared.pki.tokens import create_token

    path = provisioner.key_path(home(), provisioner_id)
    if not path.exists():
        err.print(f"[red]no provisioner key at {path}[/]: run `certbus provisioner init` (make run does)")
        raise typer.Exit(EXIT_REFUSED)
    key, _ = provisioner.load_or_create(home(), provisioner_id)
    token = create_token(key, provisioner_id, san, utcnow(), _parse_ttl(ttl), profile=profile)
    emit_json({"token": token}) if as_json else print(token)


@app.command()
def enroll(
    token: Annotated[str, typer.Option(help="The one-time token from `certbus token create`.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for key.pem, cert.pem, chain.pem.")],
    san: Annotated[
        list[str] | None, typer.Option("--san", help="A name to certify (repeatable; DNS, IP or email).")
    ] = None,
    csr: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Submit this PEM CSR instead of generating a key here."),
    ] = None,
    key_type: Annotated[str, typer.Option(help=f"One of {', '.join(KEY_TYPES)}.")] = "ec-p256",
    profile: str = "tls-server",
    days: Annotated[int | None, typer.Option(help="Validity in days (default: the profile's).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for an operator's approval if the profile needs it.")
    ] = False,
    timeout: float = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Request a certificate and write it (with the key, if generated here) to --out.

    Exit 0 issued, 1 refused (every reason is printed), 3 unreachable, 4 waiting for an operator.
    """
    if key_type not in KEY_TYPES:
        raise typer.BadParameter(f"choose one of {', '.join(KEY_TYPES)}", param_hint="--key-type")
    from shared.pki.crypto import build_csr, generate_key, key_pem

    if (csr is None) == (not san):
        raise typer.BadParameter("give --san names (a key is generated here) or --csr FILE, not both")
    out_dir.mkdir(parents=True, exist_ok=True)
    key_file = out_dir / "key.pem"
    if csr is not None:
        csr_pem = csr.read_text(errors="replace")
    else:
        key = generate_key(key_type)
        dns = [n for n in san or [] if not _is_ip(n) and "@" not in n]
        ips = [n for n in san or [] if _is_ip(n)]
        csr_pem = build_csr(key, dns, ips, [n for n in san or [] if "@" in n]).decode()
        # Written before the request goes out, so that a request left pending keeps its key.
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem(key))
        os.chmod(key_file, 0o600)
    requester = os.environ.get("USER", "cli")
    issued = run(lambda c: c.enroll(csr_pem, token, profile, timeout, True, days, wait), requester=requester)
    write_issued(issued, out_dir, as_json, "issued")
    if not as_json:
        written = [str(key_file) + " (0600)"] if csr is None else []
        out.print(f"wrote {', '.join([*written, str(out_dir / 'cert.pem'), str(out_dir / 'chain.pem')])}")


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@app.command()
def status(serial: str, as_json: JsonOpt = False) -> None:
    """The status of a certificate by serial (hex): exit 0 good, 1 revoked or unknown."""
    answer = run(lambda c: c.status(serial))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        table = Table(show_header=False)
        for k, v in answer.model_dump().items():
            table.add_row(k, str(v))
        print_table(table)
    if answer.status != "good":
        raise typer.Exit(EXIT_REFUSED)


@app.command()
def validate(
    cert: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A PEM certificate.")],
    as_json: JsonOpt = False,
) -> None:
    """Validate a PEM certificate: exit 0 good, 1 revoked, expired, untrusted or unknown."""
    answer = run(lambda c: c.validate(cert.read_text()))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        colour = "green" if answer.status == "good" else "red"
        out.print(f"[{colour}]{answer.status}[/] serial {answer.serial}: {answer.detail}")
    if answer.status != "good":
        raise typer.Exit(EXIT_REFUSED)


@app.command()
def crl(
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the DER CRL.")],
    issuer: Annotated[str | None, typer.Option(help="Issuer id (default: the current issuing CA).")] = None,
    shard: Annotated[
        int | None, typer.Option(min=0, help="The CRL shard (a sharded issuer publishes one CRL per shard).")
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, readable=True, help="Fetch the CRL this PEM certificate names (its shard)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the newest CRL (DER) of the issuing CA, of one of its shards, or of a certificate's shard."""
    if cert is not None:
        if issuer is not None or shard is not None:
            raise typer.BadParameter("--cert names the issuer and shard itself: give it without --issuer or --shard")
        from shared.client.sdk import crl_of_certificate

        try:
            issuer, shard = crl_of_certificate(cert.read_bytes())
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--cert") from None
    answer = run(lambda c: c.crl(issuer, shard=shard))
    out_file.write_bytes(base64.b64decode(answer.der_b64))
    info = {
        "issuer": answer.ca_id,
        "shard": answer.shard,
        "crl_number": answer.crl_number,
        "next_update": answer.next_update,
        "file": str(out_file),
    }
    which = answer.ca_id if answer.shard is None else f"{answer.ca_id} shard {answer.shard}"
    emit_json(info) if as_json else out.print(f"CRL #{answer.crl_number} of {which} written to {out_file}")


@audit_app.command("history")
def audit_history(serial: str, as_json: JsonOpt = False) -> None:
    """Every event of a certificate, in log order, from its request to now."""
    answer = run(lambda c: c.history(serial), operator=operator())
    if not answer.events and not as_json:
        err.print(f"no events on the log name serial or certificate {serial}")
        raise typer.Exit(EXIT_REFUSED)
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        table = Table("seq", "when (UTC)", "event", "who", "by service", "detail")
        for e in answer.events:
            when = f"{e.occurred_at:%Y-%m-%d %H:%M:%S}"
            table.add_row(str(e.stream_seq), when, e.event_type, e.actor, e.producer, history_detail(e.event))
        print_table(table)
    if not answer.events:
        raise typer.Exit(EXIT_REFUSED)


# How a history row names another certificate (a renewal's old or new one) and a few other facts.
_HISTORY_LINKS = (
    ("renews_serial", "renews"),
    ("supersedes", "renewal of"),
    ("superseded_by", "superseded by"),
    ("cause", "cause"),
)


def history_detail(event: dict[str, Any]) -> str:
    """The few facts of a history event worth a column: names, profile, serial, renewal links, reason."""
    from shared.contract.reasons import printable

    parts = []
    if names := event.get("dns_names"):
        parts.append(", ".join(map(str, names[:3])) + (f" (+{len(names) - 3})" if len(names) > 3 else ""))
    for key in ("profile", "issuer_id", "serial", "provisioner_id"):
        if isinstance(event.get(key), str):
            parts.append(f"{key.removesuffix('_id')} {event[key]}")
    for key, label in _HISTORY_LINKS:
        if isinstance(event.get(key), str) and event[key]:
            parts.append(f"{label} {event[key]}")
    if event.get("event_type") == "KeyDestroyed" and isinstance(event.get("spki_sha256"), str):
        parts.append(f"key {event['spki_sha256'][:16]}… destroyed by its holder")
    if event.get("event_type") == "CertificateDestroyed":
        fingerprint = str(event.get("fingerprint_sha256") or "?")
        parts.append(f"fingerprint {fingerprint[:16]}…; body purged from projections")
    if event.get("not_after"):
        parts.append(f"until {str(event['not_after'])[:10]}")
    reason = event.get("reason")
    if isinstance(reason, dict):
        reason = reason.get("code")
    if reason:
        parts.append(f"reason {reason}")
    return printable("; ".join(parts))


@audit_app.command("findings")
def audit_findings(limit: int = 50, as_json: JsonOpt = False) -> None:
    """Findings, newest first: certificates refused before release, issued certificates that fail
    pkilint, messages on the log that are not valid events on their subject (oversize, malformed,
    unknown_type, subject_mismatch), what the scheduled consistency checks found, and profiles whose
    templates fail lint. Exit 1 if there is any finding but a usable profile's verdict."""
    from rich.markup import escape  # findings quote what hostile messages hold: never markup

    from shared.contract.reasons import printable

    def text(value: Any, limit: int = 200) -> str:
        """A field of a finding as printable, escaped text ("" unless it is a string or a number)."""
        shown = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
        return escape(printable(shown[:limit]))

    answer = run(lambda c: c.findings(limit), operator=operator())
    alarms = [
        e
        for e in answer.findings
        if e.event_type in ("CertificateLintFailed", "AuditFindingRaised") or e.event.get("usable") is False
    ]
    if as_json:
        emit_json([e.model_dump(mode="json") for e in answer.findings])
    else:
        table = Table("seq", "when (UTC)", "what", "about", "findings")
        for e in answer.findings:
            ev = e.event
            lint = found if isinstance(found := ev.get("findings"), list) else []
            codes = ", ".join(sorted({text(f.get("code")) for f in lint if isinstance(f, dict)} - {""}))
            serial = f" / {text(ev.get('serial'))}" if text(ev.get("serial")) else ""
            if e.event_type == "AuditFindingRaised":
                check = text(ev.get("check"), 64) or "?"
                what = "pkilint failed after issuance" if check == "pkilint" else f"audit: {check}"
                about = f"seq {text(ev.get('stream_seq'))}{serial}"
                codes = codes or text(ev.get("detail"))
            elif e.event_type == "CertificateLintFailed":
                what = f"{text(ev.get('stage'), 32) or '?'} lint failed"
                about = f"{text(ev.get('profile')) or '?'}{serial}"
            else:
                what = "profile linted" + (": usable" if ev.get("usable") is True else ": [red]UNUSABLE[/]")
                parts = e.subject.split(".")
                about = f"{text(parts[2]) if len(parts) == 4 else '?'}{serial}"
            table.add_row(str(e.stream_seq), f"{e.occurred_at:%Y-%m-%d %H:%M:%S}", what, about, codes)
        print_table(table)
    if alarms:
        raise typer.Exit(EXIT_REFUSED)


@audit_app.command("check")
def audit_check(as_json: JsonOpt = False) -> None:
    """Consistency checks over the whole log: producers, one approval per certificate, announced
    issuers, unique serials, revocations of issued certificates. Exit 0 consistent, 1 findings."""
    answer = run(lambda c: c.check(), operator=operator())
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    elif not answer.findings:
        out.print(f"[green]consistent[/]: {answer.events} events checked in {answer.seconds:.2f} s")
    else:
        table = Table("seq", "check", "finding")
        for f in answer.findings:
            table.add_row(str(f.stream_seq), f.check, f.detail)
        print_table(table)
    if answer.findings:
        raise typer.Exit(EXIT_REFUSED)


@audit_app.command("lint")
def audit_lint(as_json: JsonOpt = False) -> None:
    """Post-issuance pkilint's coverage over the log: certificates issued, linted clean, linted
    failing, passed over (its backlog had reached its bound) and still waiting. Exit 0 when no
    linted certificate failed, 1 otherwise (`certbus audit findings` lists them)."""
    answer = run(lambda c: c.lint_coverage(), operator=operator())
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        linted = answer.clean + answer.failed
        share = f"{100 * linted / answer.issued:.1f}%" if answer.issued else "-"
        out.print(
            f"{answer.issued} issued, {linted} linted ({share}): {answer.clean} clean, {answer.failed} failing; "
            f"{answer.passed_over} passed over, {answer.waiting} waiting (log position {answer.through_seq})"
        )
        table = Table("profile", "clean", "failing")
        for profile, counts in answer.by_profile.items():
            table.add_row(escape(profile), str(counts.get("clean", 0)), str(counts.get("failed", 0)))
        print_table(table)
    if answer.failed:
        raise typer.Exit(EXIT_REFUSED)


@audit_app.command("verify")
def audit_verify(as_json: JsonOpt = False) -> None:
    """Recompute the archive's hash chain, check every signed checkpoint and compare the archive with
    the stream. Exit 0 clean, 1 tampered (the first position and what happened there are printed).
    `certbus-audit verify` does the same with no audit service running."""
    answer = run(lambda c: c.verify(), operator=operator())
    emit_json(answer.model_dump(mode="json")) if as_json else print_verify(answer)
    if not answer.clean:
        raise typer.Exit(EXIT_REFUSED)


@audit_app.command("replay")
def audit_replay(
    then_verify: Annotated[bool, typer.Option("--verify", help="Verify the rebuilt archive afterwards.")] = False,
    standalone: Annotated[
        bool, typer.Option("--standalone", help="Replay in this process, even if an audit service is running.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the audit archive from stream sequence 1 into fresh tables (with a progress bar and
    the rate) and say whether it equals what audit had. Exit 0 equal (and clean), 1 otherwise.

    It needs only NATS and audit's database: when no audit service answers (or with --standalone)
    the replay runs in this process (`certbus-audit replay`, with audit's CERTBUS_* settings)."""
    import subprocess

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    if standalone or not audit_answers():
        if not standalone:
            err.print("no audit service answers: replaying in this process")
        args = ["replay", *(["--verify"] if then_verify else []), *(["--json"] if as_json else [])]
        # A process of its own: the CLI never imports a service's code.
        raise typer.Exit(subprocess.call([sys.executable, "-m", "services.audit.offline", *args]))
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"))
    with Progress(*columns, console=err, disable=as_json, transient=True) as bar:
        task = bar.add_task("replay", total=None, rate="")

        def show(p: ReplayProgress) -> None:
            bar.update(task, total=p.total or None, completed=p.done, rate=f"{p.rate_per_s:.0f} events/s")

        answer = run(lambda c: c.replay(on_progress=show, verify=then_verify), operator=operator())
    emit_json(answer.model_dump(mode="json")) if as_json else print_replay(answer)
    if replay_failed(answer):
        raise typer.Exit(EXIT_REFUSED)


def audit_answers() -> bool:
    """Whether an audit service answers its health query."""
    from shared.client.sdk import CertbusClient

    async def ask() -> bool:
        try:
            async with CertbusClient(client_settings(operator())) as client:
                await client.health("audit")
        except Unreachable:
            return False
        return True

    return asyncio.run(ask())


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
