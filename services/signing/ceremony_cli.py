"""`certbus-ceremony`: the offline root ceremony, a program of its own (as Boulder's `ceremony`),
run where the root's token is, with no bus and no database. The commands parse options and print;
every use of the root's key is `services.signing.ceremony`'s (imported when a command runs, so
`--help` loads no PKCS#11 module)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar, cast

import typer

if TYPE_CHECKING:
    from services.signing.ceremony import RootToken
    from shared.pki.crypto import KeyType

T = TypeVar("T")
EXIT_REFUSED = 1
OperatorOpt = Annotated[
    str | None,
    typer.Option(
        "--operator",
        envvar="CERTBUS_OPERATOR",
        help="The operator conducting the ceremony, recorded on what it writes (default `operator`).",
    ),
]


def _refused(message: str) -> typer.Exit:
    """One line on stderr (plain: a pipe gets it whole), and exit 1."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_REFUSED)


ceremony_app = typer.Typer(
    name="certbus-ceremony",
    help="The offline root ceremony (where the root's token is; no bus, no database).",
    no_args_is_help=True,
)

TokenOpt = Annotated[str, typer.Option("--token-label", help="The label of the root's PKCS#11 token.")]
PinFileOpt = Annotated[
    Path, typer.Option("--pin-file", help="A file holding the token's user PIN (never on the command line).")
]
ModuleOpt = Annotated[
    Path, typer.Option("--module", envvar="CERTBUS_CA_PKCS11_MODULE", help="The PKCS#11 module (a .so).")
]
OutDirOpt = Annotated[Path, typer.Option("--out", help="The ceremony's directory: certificates, CRLs, artifacts.")]
DEFAULT_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


def _with_token(module: Path, token_label: str, pin_file: Path, action: Callable[[RootToken], T]) -> T:
    """Run `action` with the root's token open; a refusal (a wrong PIN, no such token, a refused
    CSR) is one line on stderr and exit 1, never a traceback, never a secret."""
    from services.signing import ceremony

    try:
        store = ceremony.open_token(module, token_label, pin_file)
    except (ceremony.CeremonyError, ceremony.KeyStoreError) as error:
        raise _refused(str(error)) from None
    try:
        return action(store)
    except (ceremony.CeremonyError, ceremony.KeyStoreError) as error:
        raise _refused(str(error)) from None
    finally:
        store.close()


def _publish_hint(artifact: Path) -> None:
    typer.echo(
        f"to publish, where the bus is: `certbus operator cosign {artifact}` (each operator the "
        f"`ca_ceremony` quorum asks for), then `certbus operator submit {artifact}`"
    )


@ceremony_app.command("root")
def ceremony_root(
    token_label: TokenOpt,
    pin_file: PinFileOpt,
    organization: Annotated[str, typer.Option("--organization", help="The root's subject O (its CN follows).")],
    days: Annotated[int, typer.Option("--days", help="How long the root is valid.")],
    out_dir: OutDirOpt,
    key_type: Annotated[str, typer.Option("--key-type", help="ec-p256, ec-p384, rsa-2048 or rsa-3072.")] = "ec-p384",
    root_id: Annotated[str | None, typer.Option("--ca-id", help="The root's CA id (default: a random one).")] = None,
    module: ModuleOpt = DEFAULT_MODULE,
    who: OperatorOpt = None,
) -> None:
    """Generate a root key inside the token (never extractable) and self-sign the root certificate
    with signing's root profile. Writes root.pem and root.json (the artifact for the online side)."""
    from services.signing import ceremony
    from shared.contract.events import utcnow

    cert = _with_token(
        module,
        token_label,
        pin_file,
        lambda store: ceremony.make_root(
            store,
            out_dir,
            organization=organization,
            days=days,
            now=utcnow(),
            key_type=cast("KeyType", key_type),  # the token refuses a type it does not make
            root_id=root_id,
            operator=who or "operator",
        ),
    )
    typer.echo(f"root {cert.subject.rfc4514_string()} written to {out_dir / 'root.pem'}")
    _publish_hint(out_dir / "root.json")


@ceremony_app.command("sign-issuing")
def ceremony_sign_issuing(
    token_label: TokenOpt,
    pin_file: PinFileOpt,
    csr: Annotated[Path, typer.Option("--csr", help="The issuing CA's CSR (PEM), made where its key is.")],
    issuing_id: Annotated[str, typer.Option("--ca-id", help="The issuing CA's id.")],
    organization: Annotated[str, typer.Option("--organization", help="The issuing CA's subject O.")],
    base_url: Annotated[str, typer.Option("--base-url", help="Public base URL (the root's CRL and certificate).")],
    days: Annotated[int, typer.Option("--days", help="How long the issuing CA is valid (at most the root's).")],
    out_dir: OutDirOpt,
    module: ModuleOpt = DEFAULT_MODULE,
    who: OperatorOpt = None,
) -> None:
    """Certify an issuing CA's key (its CSR checked: signature, key type, no constraints but pathlen
    0 and an issuing CA's key usages) with the root's key in the token."""
    from services.signing import ceremony
    from shared.contract.events import utcnow

    try:
        csr_pem = csr.read_bytes()
    except OSError as error:
        raise _refused(f"cannot read {csr}: {error.strerror}") from None
    cert = _with_token(
        module,
        token_label,
        pin_file,
        lambda store: ceremony.sign_issuing(
            store,
            out_dir,
            csr_pem,
            issuing_id=issuing_id,
            organization=organization,
            base_url=base_url,
            days=days,
            now=utcnow(),
            operator=who or "operator",
        ),
    )
    typer.echo(
        f"issuing CA {issuing_id} certified: {out_dir / f'issuing-{issuing_id}.pem'} (serial {cert.serial_number:x})"
    )


@ceremony_app.command("crl")
def ceremony_crl(
    token_label: TokenOpt,
    pin_file: PinFileOpt,
    next_update_days: Annotated[int, typer.Option("--next-update-days", help="Days until the CRL's nextUpdate.")],
    out_dir: OutDirOpt,
    revoked: Annotated[
        list[str] | None,
        typer.Option(
            "--revoked",
            help="A revoked issuing CA certificate, SERIAL[:REASON[@TIME]] (hex serial, RFC 5280 reason name, "
            "UTC time; `certbus ca csr` prints them so); repeat for each. Default reason unspecified, time now.",
        ),
    ] = None,
    module: ModuleOpt = DEFAULT_MODULE,
    who: OperatorOpt = None,
) -> None:
    """Sign the root's next CRL (full: name every revoked issuing CA serial), its number one above
    the last the ceremony signed."""
    from services.signing import ceremony, domain
    from shared.contract.events import utcnow

    now = utcnow()
    try:
        entries = [domain.parse_ceremony_revoked(text, now) for text in revoked or []]
    except ValueError as error:
        raise _refused(f"--revoked {error}") from None
    crl = _with_token(
        module,
        token_label,
        pin_file,
        lambda store: ceremony.sign_crl(
            store, out_dir, entries, next_update_days=next_update_days, now=now, operator=who or "operator"
        ),
    )
    from cryptography import x509

    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    typer.echo(f"root CRL #{number} written to {out_dir / f'root-{number}.crl'}")
    _publish_hint(out_dir / f"root-{number}.json")


def main() -> None:
    """The `certbus-ceremony` console script."""
    ceremony_app()


if __name__ == "__main__":
    main()
