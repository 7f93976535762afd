"""`certbus renew` (one renewal, by hand) and `certbus agent` (renewals with no human in the loop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.base.files import destroy_file, write_atomic
from shared.client.cli.common import JsonOpt, client_settings, err, out, run, write_issued
from shared.client.errors import Pending, Rejected

# The agent, the SDK and cryptography load when `renew` or `agent` runs, not with every command.
if TYPE_CHECKING:
    from shared.client.agent import Agent
    from shared.client.sdk import CertbusClient, Renewed


def renew(
    cert: Annotated[Path, typer.Option("--cert", exists=True, dir_okay=False, help="The current certificate (PEM).")],
    key: Annotated[
        Path, typer.Option("--key", exists=True, dir_okay=False, help="Its private key (PEM), which signs the request.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the new key.pem, cert.pem, chain.pem.")],
    profile: Annotated[str | None, typer.Option(help="Profile (default: the current certificate's).")] = None,
    days: Annotated[int | None, typer.Option(help="Validity in days (default: the profile's).")] = None,
    timeout: float = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Renew a certificate with a NEW key, proving possession of the current one (no token needed).

    Writes key.pem (0600, before the request goes out), cert.pem and chain.pem to --out, which must
    not hold the current key. The old key is left alone: destroy it once the new one is in use
    (`certbus agent` does all of this by itself). Exit 0 renewed, 1 refused (every reason is
    printed), 3 unreachable, 4 waiting for an operator.
    """
    from shared.pki.crypto import key_pem
    from shared.pki.holder import load_private_key, new_key_like

    key_file = out_dir / "key.pem"
    if key_file.exists() and key_file.resolve() == key.resolve():
        raise typer.BadParameter(
            f"{key_file} is the current key: renew into another directory (or let `certbus agent` renew in place)",
            param_hint="--out",
        )
    try:
        current_key = load_private_key(key.read_bytes(), str(key))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--key") from None
    cert_pem = cert.read_text(errors="replace")
    new_key = new_key_like(current_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Written before the request goes out, so that a request left pending keeps its key.
    write_atomic(key_file, key_pem(new_key), 0o600)

    async def renew_with(c: CertbusClient) -> Renewed:
        try:
            return await c.renew(cert_pem, current_key, new_key, profile, days, timeout=timeout)
        except Rejected:
            destroy_file(key_file)  # never certified: nothing will use it
            raise
        except Pending:
            err.print(f"the new key is {key_file} (0600): keep it for the certificate")
            raise

    renewed = run(renew_with, requester=os.environ.get("USER", "cli"))
    issued = renewed.issued
    write_issued(issued, out_dir, as_json, "renewed")
    if not as_json:
        out.print(f"wrote {key_file} (0600), {out_dir / 'cert.pem'}, {out_dir / 'chain.pem'}")


def agent(
    cert: Annotated[Path | None, typer.Option("--cert", dir_okay=False, help="The certificate to keep fresh.")] = None,
    key: Annotated[Path | None, typer.Option("--key", dir_okay=False, help="Its private key.")] = None,
    chain: Annotated[
        Path | None, typer.Option(dir_okay=False, help="Where to write the chain (default: beside the cert).")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Profile (default: the current certificate's).")] = None,
    reload: Annotated[
        str | None, typer.Option("--exec", help="Shell command run after each renewal (e.g. a reload).")
    ] = None,
    token_command: Annotated[
        str | None,
        typer.Option(help="Shell command printing a one-time token: re-enroll when renewal is refused (revoked)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="A TOML file: \\[agent] settings, \\[\\[certificate]] entries."),
    ] = None,
) -> None:
    """Keep certificates fresh: renew with a new key when a third of the lifetime is left (or when
    renewal is due, or the certificate is revoked), install atomically, run --exec, and destroy the
    old key after attesting it. Runs until interrupted; logs one line per event.

    Either --cert and --key (one certificate) or --config FILE (several)."""
    from shared.base import logs
    from shared.client.agent import Agent, AgentSettings, CertificateEntry, check_entries, load_config

    common = client_settings()  # its identity: CERTBUS_NATS_SEED_FILE, or $CERTBUS_HOME/identities
    logs.configure(common.log_level, common.log_format)
    if config is not None:
        if cert is not None or key is not None:
            raise typer.BadParameter("give --config FILE or --cert and --key, not both")
        try:
            settings, entries = load_config(config)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from None
    else:
        if cert is None or key is None:
            raise typer.BadParameter("give --cert and --key (or --config FILE for several certificates)")
        settings = AgentSettings()
        entries = [
            CertificateEntry(
                cert=cert, key=key, chain=chain, profile=profile, reload=reload, token_command=token_command
            )
        ]
    try:
        check_entries(entries)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    for entry in entries:
        for path in (entry.cert, entry.key):
            if not path.is_file():
                raise typer.BadParameter(f"{path} does not exist: enroll first (`certbus enroll`)")
    out.print(f"certbus agent: looking after {len(entries)} certificate(s); Ctrl-C or SIGTERM stops")
    asyncio.run(_until_signalled(Agent(entries, settings, common)))


async def _until_signalled(agent: Agent) -> None:
    """Run the agent until SIGTERM or SIGINT, then stop it cleanly (exit 0): a renewal cut short
    resumes from its saved state at the next start."""
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    out.print("certbus agent: stopped")
