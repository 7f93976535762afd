"""`certbus revoke`: as the certificate's holder (signed with its key), as the requester that
obtained it, or as an operator (named)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from shared.client.cli.common import EXIT_REFUSED, JsonOpt, emit_json, err, operator, out, run
from shared.contract.revocation_reasons import REVOCATION_REASONS

WAYS = (
    "say who revokes: --key key.pem (the certificate's holder: the request is signed with its private "
    "key), --as-requester (the requester that obtained it, not for keyCompromise) or --operator NAME / "
    "--as-operator (an operator, named on the revocation)"
)


def revoke(
    serial: str,
    reason: Annotated[str, typer.Option(help=f"One of {', '.join(REVOCATION_REASONS)}.")] = "unspecified",
    key: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="The certificate's private key: revoke as its holder."),
    ] = None,
    who: Annotated[
        str | None,
        typer.Option("--operator", help="Revoke as this operator (who signs the order with its key)."),
    ] = None,
    as_operator: Annotated[
        bool, typer.Option("--as-operator", help="Revoke as the operator $CERTBUS_OPERATOR (default `operator`).")
    ] = False,
    as_requester: Annotated[
        bool,
        typer.Option(
            "--as-requester",
            help="Revoke as the requester that obtained the certificate (this CLI's identity), without its key; "
            "not for keyCompromise.",
        ),
    ] = False,
    invalid_since: Annotated[
        datetime | None,
        typer.Option(
            "--invalid-since",
            formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"],
            help="When the key was (or may have been) compromised, UTC unless an offset is given: the CRL "
            "entry's invalidityDate.",
        ),
    ] = None,
    timeout: float = 15.0,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a certificate by serial (hex), with an RFC 5280 reason, as its holder, as the requester
    that obtained it, or as an operator.

    keyCompromise also blocks the key for every future enrollment and revokes every other live
    certificate with it. Exit 0 revoked, 1 refused (the reason is printed), 2 usage error, 3 unreachable.
    """
    if reason not in REVOCATION_REASONS:
        raise typer.BadParameter(f"choose one of {', '.join(REVOCATION_REASONS)}", param_hint="--reason")
    by_operator = as_operator or who is not None
    ways = (key is not None) + by_operator + as_requester
    if ways != 1:
        raise typer.BadParameter(WAYS if ways == 0 else f"give one, not several: {WAYS}")
    since = invalid_since.replace(tzinfo=invalid_since.tzinfo or UTC) if invalid_since else None
    if key is not None:
        from shared.pki.holder import load_private_key

        try:
            holder_key = load_private_key(key.read_bytes(), str(key))
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(EXIT_REFUSED) from None
        requester = os.environ.get("USER", "holder")
        revoked = run(
            lambda c: c.revoke(serial, reason, timeout, key=holder_key, invalidity_date=since), requester=requester
        )
    elif as_requester:
        revoked = run(lambda c: c.revoke(serial, reason, timeout, invalidity_date=since))
    else:
        name = operator(who)
        revoked = run(
            lambda c: c.revoke_as_operator(serial, reason, name, timeout, invalidity_date=since), operator=name
        )
    if as_json:
        emit_json(revoked.model_dump(mode="json"))
        return
    out.print(
        f"revoked serial [bold]{revoked.serial}[/] ({revoked.reason}) at {revoked.revoked_at:%Y-%m-%d %H:%M:%S} UTC"
        f", requested by {revoked.requested_by}"
    )
    if revoked.reason == "keyCompromise":
        out.print("the key is blocked for future enrollments; every other live certificate with it is revoked too")


def destroy(
    serial: str,
    who: Annotated[
        str | None,
        typer.Option("--operator", help="Who orders it (recorded on the events; default $CERTBUS_OPERATOR or $USER)."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, in words (recorded on the destroyed event).")] = "",
    timeout: float = 15.0,
    as_json: JsonOpt = False,
) -> None:
    """Retire a certificate for good, by serial (hex), as an operator: revoked first (cessationOfOperation)
    if it is not revoked yet, then destroyed; validation and revocation purge their copies of its body
    (the audit archive keeps the log verbatim), and it can never be renewed.

    Exit 0 destroyed, 1 refused (certificate_unknown, certificate_destroyed, not_authorised), 3 unreachable.
    """
    name = operator(who)
    destroyed = run(lambda c: c.destroy(serial, name, reason, timeout), operator=name)
    if as_json:
        emit_json(destroyed.model_dump(mode="json"))
        return
    out.print(
        f"destroyed serial [bold]{destroyed.serial}[/] at {destroyed.destroyed_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"ordered by {destroyed.ordered_by}"
    )
    out.print("it is revoked, its body is purged from the projections, and it can never be renewed")
