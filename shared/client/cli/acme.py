"""`certbus acme eab`: external account binding credentials for ACME accounts, tied to provisioners.

An operator's admin command, run where ACME's database is reachable: it connects to ACME's schema
with ACME's own database setting (CERTBUS_DATABASE_URL, as the ACME service reads it, or
--database-url) and uses the credential SQL ACME itself uses (`shared.trust.eab`).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from shared.client.cli.common import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    JsonOpt,
    OperatorOpt,
    emit_json,
    err,
    operator,
    out,
    print_table,
)

if TYPE_CHECKING:
    import asyncpg

    from shared.trust.eab import Credential

acme_app = typer.Typer(
    help="The ACME service's administration (run where its database is reachable).", no_args_is_help=True
)
eab_app = typer.Typer(
    help="External account binding credentials (RFC 8555 §7.3.4), one per account.", no_args_is_help=True
)
acme_app.add_typer(eab_app, name="eab")
T = TypeVar("T")
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="ACME's database (default: CERTBUS_DATABASE_URL, the setting the ACME service reads).",
        show_default=False,
    ),
]
CONNECT_TIMEOUT_S = 10.0


def _with_acme_db(database_url: str | None, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `fn` on a connection to ACME's schema; exit 3 if the database cannot be reached, 1 if
    ACME's migrations have not run there."""
    import asyncio

    import asyncpg

    from shared.base.settings import AcmeSettings
    from shared.trust import eab

    dsn = database_url or AcmeSettings().database_url

    async def main() -> T:
        conn = await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"search_path": eab.SCHEMA, "application_name": "certbus-cli"},
        )
        try:
            if not await eab.migrated(conn):
                err.print(
                    f"[red]error:[/] ACME's schema `{eab.SCHEMA}` has no {eab.TABLE} table in this database: ACME's "
                    "migrations have not run here (start the ACME service once with this CERTBUS_DATABASE_URL), "
                    "or this is not ACME's database"
                )
                raise typer.Exit(EXIT_REFUSED)
            return await fn(conn)
        finally:
            await conn.close()

    unreachable = (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.InvalidAuthorizationSpecificationError,  # a wrong user or password
        asyncpg.InvalidCatalogNameError,  # no such database
    )
    shown = escape(_without_password(dsn))
    try:
        return asyncio.run(main())
    except unreachable as e:
        err.print(f"[red]unreachable:[/] ACME's database at {shown}: {escape(str(e))}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except asyncpg.PostgresError as e:  # for instance a role without rights on ACME's schema
        err.print(f"[red]error:[/] ACME's database at {shown} refused: {escape(str(e))}")
        raise typer.Exit(EXIT_REFUSED) from None


def _without_password(dsn: str) -> str:
    """The DSN as it may be shown: without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _when(value: object) -> str:
    return "" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def _json(c: Credential) -> dict[str, object]:
    return {
        "kid": c.kid,
        "provisioner": c.provisioner_id,
        "profile": c.profile,
        "account": c.account_id,
        "bound_at": c.bound_at,
        "created_at": c.created_at,
        "created_by": c.created_by,
        "revoked_at": c.revoked_at,
    }


@eab_app.command("create")
def eab_create(
    provisioner_id: Annotated[
        str, typer.Option("--provisioner", help="The provisioner whose scope judges the bound account's orders.")
    ],
    profile: Annotated[
        str | None, typer.Option(help="The profile its orders are enrolled under (default: CERTBUS_ACME_PROFILE).")
    ] = None,
    database_url: DatabaseOpt = None,
    operator_name: OperatorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a credential that binds one new ACME account to --provisioner; prints its key id and
    HMAC key (base64url), shown this once."""
    from shared.contract.events import utcnow
    from shared.trust import eab

    if not provisioner_id.strip():
        raise typer.BadParameter("name a provisioner", param_hint="--provisioner")
    by = operator(operator_name)
    kid, key = _with_acme_db(database_url, lambda conn: eab.create(conn, provisioner_id, profile, by, utcnow()))
    hmac_key = base64.urlsafe_b64encode(key).rstrip(b"=").decode()
    if as_json:
        emit_json({"kid": kid, "hmac_key": hmac_key, "provisioner": provisioner_id, "profile": profile})
    else:
        print(f"kid: {kid}", file=out.file)
        print(f"hmac key: {hmac_key}", file=out.file)
    err.print(
        "The HMAC key is shown this once. It binds one account: "
        f"certbot --eab-kid {kid} --eab-hmac-key KEY, or lego --eab --kid {kid} --hmac KEY.\n"
        f"ACME enrolls that account's orders as provisioner {escape(provisioner_id)}: register it with ACME's "
        f"public key if it is not yet (certbus provisioner add {escape(provisioner_id)} --public-key "
        ".certbus/acme/acme-provisioner.pub.pem --requester acme --profile ... --suffix ...).",
        highlight=False,
    )


@eab_app.command("list")
def eab_list(database_url: DatabaseOpt = None, as_json: JsonOpt = False) -> None:
    """Every credential: its key id, provisioner, profile, the account it bound, when it was created
    and by whom, and when it was revoked (never its key)."""
    from shared.trust import eab

    found = _with_acme_db(database_url, eab.listed)
    if as_json:
        emit_json([_json(c) for c in found])
        return
    table = Table("kid", "provisioner", "profile", "account", "created (UTC)", "created by", "revoked (UTC)")
    for c in found:
        table.add_row(
            escape(c.kid),
            escape(c.provisioner_id),
            escape(c.profile or ""),
            escape(c.account_id or ""),
            _when(c.created_at),
            escape(c.created_by),
            _when(c.revoked_at),
        )
    print_table(table)


@eab_app.command("revoke")
def eab_revoke(
    kid: Annotated[str, typer.Argument(help="The credential's key id (after `--` if it begins with `-`).")],
    database_url: DatabaseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke a credential: it binds no account from now on. An account it bound already stays, its
    orders judged by its provisioner's scope (change that scope to stop them)."""
    from shared.contract.events import utcnow
    from shared.trust import eab

    revoked = _with_acme_db(database_url, lambda conn: eab.revoke(conn, kid, utcnow()))
    if revoked is None:
        err.print(f"[red]error:[/] no EAB credential has key id {escape(kid)!r}")
        raise typer.Exit(EXIT_REFUSED)
    if as_json:
        emit_json(_json(revoked))
        return
    out.print(f"revoked {escape(revoked.kid)} (provisioner {escape(revoked.provisioner_id)})", highlight=False)
    if revoked.account_id is not None:
        err.print(
            f"it bound account {escape(revoked.account_id)} already: that account keeps ordering under provisioner "
            f"{escape(revoked.provisioner_id)}, whose scope judges its orders",
            highlight=False,
        )
