"""`certbus-audit`: replay and verify the audit archive with no Certbus service running.

An auditor needs only the log (NATS JetStream, read access to the stream) and audit's database:
this process reads the stream from sequence 1 itself, rebuilds the archive into fresh tables,
compares it with what the database held, and verifies it against the stream and the signed
checkpoints. `certbus audit replay` runs this when no audit service answers.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import asyncpg
import nats
import typer
from nats.js import JetStreamContext
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from services.audit import checkpoints, replay, verify
from services.audit.handlers import NAME
from shared.base.settings import AuditSettings
from shared.client.api import JsonOpt, emit_json, err, print_replay, print_verify, replay_failed
from shared.contract.queries import ReplayAnswer, VerifyAnswer
from shared.runtime import db

app = typer.Typer(help="Replay and verify the audit archive without any Certbus service.", no_args_is_help=True)
T = TypeVar("T")
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--public-key",
        help="Audit's checkpoint public key (raw Ed25519, base64); default: read from CERTBUS_CHECKPOINT_KEY_FILE.",
    ),
]
EXIT_TAMPERED, EXIT_UNREACHABLE = 1, 3


class Unavailable(Exception):
    """NATS or the database cannot be reached, or the checkpoint key is not known."""


@asynccontextmanager
async def _connected(settings: AuditSettings) -> AsyncIterator[tuple[JetStreamContext, asyncpg.Pool]]:
    try:
        nc = await nats.connect(
            settings.nats_servers,
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            name="certbus-audit-offline",
            **settings.connect_options(),  # audit's identity, as the service connects
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise Unavailable(f"cannot reach NATS at {settings.nats_url}: {exc}") from exc
    try:
        await db.ensure_database(settings.database_url)
        pool = await db.create_pool(settings.database_url, NAME, 1, 3)
    except (OSError, asyncpg.PostgresError) as exc:
        await nc.close()
        raise Unavailable(f"cannot reach the audit database: {exc}") from exc
    try:
        await db.migrate(pool, NAME, [replay.MIGRATIONS])
        yield nc.jetstream(prefix=settings.js_prefix), pool
    finally:
        await pool.close()
        await nc.close()


def _public_key(settings: AuditSettings, given: str | None) -> str:
    """The pinned checkpoint key: given, or derived from audit's key file (never read from the log)."""
    if given:
        try:
            if len(base64.b64decode(given, validate=True)) != 32:
                raise ValueError
        except ValueError:
            raise Unavailable("--public-key must be a raw Ed25519 public key, base64 (32 bytes)") from None
        return given
    path = settings.checkpoint_key_file
    if not path.exists():
        raise Unavailable(f"no checkpoint key at {path}: pass --public-key (audit's checkpoint public key)")
    return checkpoints.public_key_b64(checkpoints.load_or_create_key(path))


async def run_replay(
    settings: AuditSettings, then_verify: bool, public_key: str | None, progress: replay.Progress
) -> ReplayAnswer:
    """Replay the archive from the stream in this process (and verify it if asked)."""
    key = _public_key(settings, public_key) if then_verify else None
    async with _connected(settings) as (js, pool):
        root = settings.subject_root
        answer = await replay.replay(pool, js, stream=settings.stream, root=root, live_schema=NAME, progress=progress)
        if key is not None:
            verified = await verify.verify(
                pool, js, stream=settings.stream, root=root, live_schema=NAME, public_key=key
            )
            answer = answer.model_copy(update={"verified": verified})
        return answer


async def run_verify(settings: AuditSettings, public_key: str | None) -> VerifyAnswer:
    """Verify the archive against the stream and the signed checkpoints, in this process."""
    key = _public_key(settings, public_key)
    async with _connected(settings) as (js, pool):
        return await verify.verify(
            pool, js, stream=settings.stream, root=settings.subject_root, live_schema=NAME, public_key=key
        )


def _run(main: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(main())  # type: ignore[arg-type]
    except Unavailable as exc:
        err.print(f"[red]unreachable:[/] {exc}")
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except replay.ReplayBusy as exc:
        err.print(f"[red]busy:[/] {exc}")
        raise typer.Exit(EXIT_TAMPERED) from None
    except replay.StreamUnreadable as exc:
        err.print(f"[red]unreadable:[/] {exc}")
        raise typer.Exit(EXIT_UNREACHABLE) from None


@app.command("replay")
def replay_command(
    then_verify: Annotated[bool, typer.Option("--verify", help="Verify the rebuilt archive afterwards.")] = False,
    public_key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the archive from stream sequence 1 into fresh tables, compare with what the database
    held (adopting the rebuilt one if they differ). Exit 0 equal (and clean), 1 differed or tampered."""
    settings = AuditSettings()
    progress = replay.Progress()
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"))

    async def main() -> ReplayAnswer:
        with Progress(*columns, console=err, disable=as_json, transient=True) as bar:
            task = bar.add_task("replay", total=None, rate="")
            work = asyncio.create_task(run_replay(settings, then_verify, public_key, progress))
            while not work.done():
                await asyncio.wait({work}, timeout=0.3)
                rate = f"{progress.rate():.0f} events/s"
                bar.update(task, total=progress.total or None, completed=progress.done, rate=rate)
            return await work

    answer = _run(main)
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        print_replay(answer)
    if replay_failed(answer):
        raise typer.Exit(EXIT_TAMPERED)


@app.command("verify")
def verify_command(public_key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Recompute the hash chain, check the signed checkpoints, compare with the stream. Exit 0 clean,
    1 tampered."""
    answer = _run(lambda: run_verify(AuditSettings(), public_key))
    if as_json:
        emit_json(answer.model_dump(mode="json"))
    else:
        print_verify(answer)
    if not answer.clean:
        raise typer.Exit(EXIT_TAMPERED)


def main() -> None:
    """Console-script entry point (`certbus-audit`)."""
    app()


if __name__ == "__main__":
    main()
