"""`certbus ca`: the operator's CA lifecycle commands, each an event on the audited log."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from shared.client.cli.common import JsonOpt, OperatorOpt, emit_json, operator, out, run
from shared.client.cli.operators import OutOpt, publish_or_write

ca_app = typer.Typer(help="Certificate authorities: compromise, retire.", no_args_is_help=True)


@ca_app.command("compromise")
def ca_compromise(
    issuer_id: Annotated[str, typer.Argument(help="The issuing CA whose key is compromised.")],
    reason: Annotated[str, typer.Option("--reason", help="What happened (recorded on the log).")],
    who: OperatorOpt = None,
    as_json: JsonOpt = False,
    out_file: OutOpt = None,
) -> None:
    """Declare an issuing CA's key compromised. Signing stops using it at once, revokes its
    certificate in the root's CRL and creates a replacement issuing CA; revocation revokes every
    certificate it issued (cACompromise) and enrollment tells each holder to renew; validation
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
