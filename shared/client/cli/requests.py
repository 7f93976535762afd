"""`certbus requests|approve|reject`: enrollment requests and the operator's approval of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shared.client.cli.common import (
    EXIT_REFUSED,
    JsonOpt,
    OperatorOpt,
    emit_json,
    err,
    operator,
    out,
    print_table,
    run,
    write_issued,
)

if TYPE_CHECKING:
    from shared.client.sdk import CertbusClient
    from shared.contract.events import CertificateIssued

requests_app = typer.Typer(help="Enrollment requests: list, inspect, fetch what was issued.", no_args_is_help=True)


@requests_app.command("list")
def requests_list(
    pending: Annotated[bool, typer.Option("--pending", help="Only requests waiting for an operator.")] = False,
    status: Annotated[
        str | None, typer.Option(help="Only requests in this status (pending, approved, issued, rejected, expired).")
    ] = None,
    limit: int = 100,
    as_json: JsonOpt = False,
) -> None:
    """Enrollment requests, newest first (an operator's query)."""
    wanted = "pending" if pending else status
    answer = run(lambda c: c.requests(wanted, limit), operator=operator())
    if as_json:
        emit_json([r.model_dump(mode="json") for r in answer.requests])
        return
    table = Table("request", "status", "profile", "names", "requester", "requested (UTC)", "expires / serial")
    for r in answer.requests:
        tail = r.serial or (f"{r.expires_at:%Y-%m-%d %H:%M}" if r.status == "pending" and r.expires_at else "")
        table.add_row(
            r.request_id,
            r.status,
            r.profile,
            ", ".join([*r.dns_names, *r.ip_addresses, *r.emails]),
            r.requester,
            f"{r.requested_at:%Y-%m-%d %H:%M:%S}",
            tail,
        )
    print_table(table)


@requests_app.command("show")
def requests_show(request_id: str, as_json: JsonOpt = False) -> None:
    """Everything enrollment knows of one request: names, profile, decision, reasons, certificate."""
    detail = run(lambda c: c.request(request_id))
    if as_json:
        emit_json(detail.model_dump(mode="json"))
        return
    table = Table(show_header=False)
    for key, value in detail.model_dump(exclude={"csr_pem", "reasons"}).items():
        if value not in (None, [], ""):
            table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    print_table(table)
    for reason in detail.reasons:
        out.print(f"  [bold]{reason['code']}[/]: {reason['message']}")


@requests_app.command("fetch")
def requests_fetch(
    request_id: str,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for cert.pem and chain.pem.")],
    as_json: JsonOpt = False,
) -> None:
    """Write the certificate issued for a request (e.g. after an operator approved it)."""

    async def fetch(c: CertbusClient) -> CertificateIssued | None:
        detail = await c.request(request_id)
        if detail.serial is None:
            return None
        return await c.issued_certificate(request_id)

    issued = run(fetch)
    if issued is None:
        err.print(f"no certificate has been issued for request {request_id} (see `certbus requests show`)")
        raise typer.Exit(EXIT_REFUSED)
    write_issued(issued, out_dir, as_json, "fetched")


def approve(
    request_id: str,
    comment: Annotated[str, typer.Option(help="A note recorded with the approval.")] = "",
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending request (as --operator); waits for its certificate."""
    issued = run(lambda c: c.approve(request_id, operator(who), comment), operator=operator(who))
    result = {"request": request_id, "serial": issued.serial, "approved_by": operator(who)}
    if as_json:
        emit_json(result)
    else:
        out.print(f"approved {request_id}: issued serial [bold]{issued.serial}[/]")


def reject(
    request_id: str,
    reason: Annotated[str, typer.Option(help="Why (the requester sees it).")],
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Refuse a pending request (as --operator), saying why."""
    rejected = run(lambda c: c.reject(request_id, operator(who), reason), operator=operator(who))
    if as_json:
        emit_json(rejected.model_dump(mode="json"))
    else:
        out.print(f"rejected {request_id} by {rejected.rejected_by}")
