"""What every `certbus` command shares: running a client call, printing, exit codes, identity."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from shared.base.files import write_atomic
from shared.client.errors import CertbusError, Pending, Rejected, Unreachable

# What a command needs only once it runs is imported there: `certbus --help` loads none of it.
if TYPE_CHECKING:
    from shared.base.settings import CommonSettings
    from shared.client.sdk import CertbusClient
    from shared.contract.events import CertificateIssued

UNBOUNDED_WIDTH = 1_000_000  # off a terminal: no line is ever wrapped
# A cell printed as one field of one line: tabs and line breaks inside it are written as escapes.
_ONE_FIELD = str.maketrans({"\t": "\\t", "\n": "\\n"})


def _is_terminal(stream: Any) -> bool:
    return stream is not None and bool(stream.isatty())


def _console(stderr: bool = False) -> Console:
    """A console that, writing to a terminal, fits its width; writing anywhere else (a pipe, a file),
    never wraps, folds or shrinks a line or a table cell, so serials and names arrive whole."""
    if _is_terminal(sys.stderr if stderr else sys.stdout):
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=UNBOUNDED_WIDTH, soft_wrap=True)


out = _console()
err = _console(stderr=True)
T = TypeVar("T")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
OperatorOpt = Annotated[
    str | None,
    typer.Option(
        "--operator",
        help="Which operator acts: connects as that operator and signs with its key "
        "($CERTBUS_HOME/operators/NAME.key.pem); recorded as the key's owner. Default $CERTBUS_OPERATOR "
        "or `operator`.",
    ),
]
# Exit codes: 0 success, 1 refused / revoked / invalid, 2 usage error (typer), 3 unreachable,
# 4 waiting for an operator's approval.
EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_PENDING = 1, 3, 4


def home() -> Path:
    """The operator's local Certbus directory (CERTBUS_HOME, default ./.certbus)."""
    return Path(os.environ.get("CERTBUS_HOME", ".certbus"))


def operator(name: str | None = None) -> str:
    """The operator who acts: their identity on the bus and the owner of the key that signs."""
    return name or os.environ.get("CERTBUS_OPERATOR") or "operator"


def client_settings(operator: str | None = None) -> CommonSettings:
    """How the CLI connects: the credentials in the environment if any (CERTBUS_NATS_SEED_FILE, or a
    user and password), else an identity from the identities directory (CERTBUS_IDENTITIES, default
    `$CERTBUS_HOME/identities`, which `make run` fills): the requester named by CERTBUS_REQUESTER
    (default `requester`), or for an operator's command, operator `operator`, who signs it with its
    key (CERTBUS_OPERATOR_KEY_FILE, default `$CERTBUS_HOME/operators/<name>.key.pem`). ACME's
    readiness URL: CERTBUS_ACME_READYZ_URL, else the one `make run` wrote in `$CERTBUS_HOME`."""
    from shared.base.settings import ACME_READYZ_URL_FILE, CommonSettings
    from shared.trust.identities import IdentityStore

    settings = CommonSettings()
    if settings.acme_readyz_url is None and (home() / ACME_READYZ_URL_FILE).is_file():
        written = (home() / ACME_READYZ_URL_FILE).read_text().strip()
        settings = settings.model_copy(update={"acme_readyz_url": written})
    name = operator
    if name is not None and settings.operator_key_file is None:
        key_file = home() / "operators" / f"{name}.key.pem"
        if key_file.exists():
            settings = settings.model_copy(update={"operator_key_file": key_file})
    if settings.nats_seed_file is not None or settings.nats_user is not None:
        return settings
    store = IdentityStore(Path(os.environ.get("CERTBUS_IDENTITIES", str(home() / "identities"))))
    name = name or os.environ.get("CERTBUS_REQUESTER", "requester")
    if store.get(name) is None:
        return settings  # no credentials: the server will say so
    return settings.model_copy(update={"identity": name, "nats_seed_file": store.seed_file(name)})


def _import_nats_without_websockets() -> None:
    """Import nats-py without aiohttp, unless the NATS URL is a WebSocket one.

    nats-py imports aiohttp (and multidict) for its WebSocket transport only, falling back to
    none when they are missing; that import is about a third of a command's start-up. The CLI
    hides aiohttp while it imports nats (a None in sys.modules makes the import fail) and then
    un-hides it, so anything else may still import aiohttp; only ws:// and wss:// need it.
    """
    if "nats" in sys.modules or "aiohttp" in sys.modules:
        return
    from shared.base.settings import CommonSettings

    try:
        url = CommonSettings().nats_url
    except Exception:  # noqa: BLE001 - the command reports bad settings itself; import nats as usual
        return
    if "ws://" in url or "wss://" in url:
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
    try:
        import nats  # noqa: F401
    finally:
        del sys.modules["aiohttp"]


def run(fn: Callable[[CertbusClient], Awaitable[T]], requester: str = "cli", operator: str | None = None) -> T:
    """Run one client call; map Certbus errors to messages and exit codes. With `operator`, the call
    is that operator's: it connects as the operator and signs operator commands with its key."""
    import asyncio

    _import_nats_without_websockets()
    from shared.client.sdk import CertbusClient
    from shared.pki.tokens import TokenError

    async def main() -> T:
        settings = client_settings(operator)
        async with CertbusClient(settings, requester=settings.who or requester) as client:
            return await fn(client)

    try:
        return asyncio.run(main())
    except Unreachable as exc:
        err.print(f"[red]unreachable:[/] {exc}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except Rejected as exc:
        raise refused(exc) from None
    except Pending as exc:
        err.print(f"[yellow]pending:[/] {exc}")
        err.print(
            f"  an operator runs `certbus approve {exc.request_id}`; then `certbus requests fetch {exc.request_id}`"
        )
        raise typer.Exit(EXIT_PENDING) from None
    except (CertbusError, TokenError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_REFUSED) from None


def refused(exc: Rejected) -> typer.Exit:
    """Print every reason of a refusal (code and what to do) and return the exit to raise."""
    err.print("[red]refused:[/]")
    for reason in exc.reasons:
        err.print(f"  [bold]{reason.code}[/]: {reason.message}")
    return typer.Exit(EXIT_REFUSED)


def print_table(table: Table) -> None:
    """Print `table` to stdout: drawn by rich on a terminal; anywhere else (a pipe, a file) as plain
    lines a script splits on tabs: its title if it has one, the header, then one line per row, every
    cell whole and without markup."""
    if _is_terminal(out.file):
        out.print(table)
        return
    lines = [_plain(table.title)] if table.title is not None else []
    if table.show_header:
        lines.append("\t".join(_plain(column.header) for column in table.columns))
    rows = zip(*(column.cells for column in table.columns), strict=True)
    lines.extend("\t".join(_plain(cell) for cell in row) for row in rows)
    for line in lines:
        print(line, file=out.file)


def _plain(cell: RenderableType) -> str:
    """A cell's text as the table shows it (a string is rich markup), on one line."""
    if isinstance(cell, str):
        cell = Text.from_markup(cell)
    text = cell.plain if isinstance(cell, Text) else str(cell)
    return text.translate(_ONE_FIELD)


def emit_json(data: Any) -> None:
    """Print JSON for scripts."""
    out.print_json(json.dumps(data, default=str))


def write_issued(issued: CertificateIssued, out_dir: Path, as_json: bool, said: str) -> None:
    """Write `out_dir`/cert.pem and chain.pem (atomically) and say what was issued: JSON for
    scripts, or `said` ("issued", "renewed", ...) with the serial, issuer and validity."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "cert.pem", issued.cert_pem.encode())
    write_atomic(out_dir / "chain.pem", issued.chain_pem.encode())
    result = {
        "serial": issued.serial,
        "issuer": issued.issuer_id,
        "not_after": issued.not_after,
        "dns_names": issued.dns_names,
        "dir": str(out_dir),
    }
    if issued.supersedes is not None:
        result["supersedes"] = issued.supersedes
    if as_json:
        emit_json(result)
    else:
        out.print(
            f"{said}: serial [bold]{issued.serial}[/] by {issued.issuer_id}, "
            f"valid until {issued.not_after:%Y-%m-%d %H:%M} UTC"
        )
