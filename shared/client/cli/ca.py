"""`certbus ca`: the operator's CA lifecycle commands, each an event on the audited log."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.base.files import write_atomic
from shared.client.cli.common import EXIT_REFUSED, JsonOpt, OperatorOpt, emit_json, operator, out, run
from shared.client.cli.operators import OutOpt, publish_or_write

if TYPE_CHECKING:
    from shared.contract.queries import IssuingRequestAnswer

ca_app = typer.Typer(
    help="Certificate authorities: compromise, retire, and the CSR an offline root's ceremony certifies.",
    no_args_is_help=True,
)


@ca_app.command("compromise")
def ca_compromise(
    issuer_id: Annotated[str, typer.Argument(help="The issuing CA whose key is compromised.")],
    reason: Annotated[str, typer.Option("--reason", help="What happened (recorded on the log).")],
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
    out_file: OutOpt = None,
) -> None:
    """Declare an issuing CA's key compromised. Signing stops using it at once, revokes its
    certificate in the root's CRL and creates a replacement issuing CA (under an offline root, it
    generates the replacement's key and waits for the ceremony to certify it: `certbus ca csr`);
    revocation revokes every certificate it issued (cACompromise) and enrollment tells each holder to renew; validation
    answers `revoked` for all of them from this event on. With a `ca_compromise` quorum above one,
    write it with `--out FILE`; the other operators `certbus operator cosign FILE`, one `submit`s it."""
    from shared.contract.events import CaCompromised, utcnow

    event = CaCompromised.first(
        issuer_id,
        producer="operator",
        at=utcnow(),
        correlation_id=f"compromise-{uuid.uuid4()}",
        ca_id=issuer_id,
        reason=reason,
        declared_by=operator(who),
    )
    publish_or_write(event, operator(who), out_file, as_json)


@ca_app.command("retire")
def ca_retire(
    issuer_id: Annotated[str, typer.Argument(help="The CA to retire (an issuing CA, or a root with none left).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the log).")],
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
    out_file: OutOpt = None,
) -> None:
    """Retire a CA for good: it issues nothing more (a current issuing CA is first replaced under the
    same root), signing publishes its final CRL (nextUpdate: the CA's notAfter) and then destroys its
    private key, saying so with CaKeyDestroyed. Refused (exit 1, with a code) for an unknown,
    compromised or already retired CA, and for a root that still has active issuing CAs. With a
    `ca_retire` quorum above one, write it with `--out FILE` for the others to co-sign and submit."""
    from shared.contract.events import CaRetired, utcnow

    if out_file is not None:
        retired = CaRetired.first(
            issuer_id,
            producer="operator",
            at=utcnow(),
            correlation_id=f"retire-{uuid.uuid4()}",
            ca_id=issuer_id,
            reason=reason,
            retired_by=operator(who),
        )
        publish_or_write(retired, operator(who), out_file, as_json)
        return
    destroyed = run(lambda c: c.retire_ca(issuer_id, reason, operator(who)), operator=operator(who))
    if as_json:
        emit_json(destroyed.model_dump(mode="json"))
    else:
        out.print(
            f"[red]CA {issuer_id} retired[/]: final CRL #{destroyed.final_crl_number}, "
            f"key destroyed at {destroyed.destroyed_at:%Y-%m-%d %H:%M:%S} UTC (SPKI sha256 {destroyed.spki_sha256})"
        )


@ca_app.command("csr")
def ca_csr(
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the CSR (PEM) to FILE instead of standard output.")
    ] = None,
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Under an offline root (CERTBUS_CA_ROOT=offline, docs/hsm.md): the CSR of the issuing CA key
    signing generated and waits to have certified, for the ceremony (`certbus-ceremony sign-issuing
    --csr FILE --ca-id ID`), and the serials the root's next CRL must name (`certbus-ceremony crl
    --revoked SERIAL`). The CSR goes to FILE or standard output, the rest to standard output with
    --out and to standard error without. Each revocation is printed as the ceremony's `--revoked`
    takes it (SERIAL:REASON@TIME). Exit 1 if no key waits."""
    answer = run(lambda c: c.issuing_request(), operator=operator(who))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        if answer.csr_pem is None:
            raise typer.Exit(EXIT_REFUSED)
        return
    to_stderr = out_file is None
    _print_root(answer, to_stderr)
    if answer.csr_pem is None or answer.ca_id is None:
        typer.echo("error: no issuing CA key waits for the ceremony", err=True)
        raise typer.Exit(EXIT_REFUSED)
    typer.echo(f"issuing CA: {answer.ca_id} (key generated {answer.requested_at:%Y-%m-%d %H:%M:%S} UTC)", err=to_stderr)
    if out_file is None:
        typer.echo(answer.csr_pem, nl=False)
        return
    write_atomic(out_file, answer.csr_pem.encode(), 0o644)
    typer.echo(
        f"CSR written to {out_file}: certify it with "
        f"`certbus-ceremony sign-issuing --csr {out_file} --ca-id {answer.ca_id} ...`"
    )


@ca_app.command("root")
def ca_root(who: OperatorOpt = None, as_json: JsonOpt = False) -> None:
    """Under an offline root: its last CRL (the ceremony's) and what the next must name, each
    revocation as `certbus-ceremony crl --revoked` takes it (SERIAL:REASON@TIME). Exit 1 if signing
    runs no offline root."""
    answer = run(lambda c: c.issuing_request(), operator=operator(who))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        _print_root(answer, to_stderr=False)
    if answer.root_id is None:
        raise typer.Exit(EXIT_REFUSED)


def _print_root(answer: IssuingRequestAnswer, to_stderr: bool) -> None:
    if answer.root_id is None:
        typer.echo("signing runs no offline root: its CAs need no ceremony", err=to_stderr)
        return
    revoked = " ".join(answer.root_revoked) or "none"
    last = (
        f"#{answer.root_crl_number}, next update {answer.root_crl_next_update:%Y-%m-%d %H:%M:%S} UTC"
        if answer.root_crl_next_update is not None
        else "none served yet"
    )
    typer.echo(f"root: {answer.root_id}", err=to_stderr)
    typer.echo(f"root CRL: {last}", err=to_stderr)
    typer.echo(f"revoked under the root: {revoked}", err=to_stderr)
