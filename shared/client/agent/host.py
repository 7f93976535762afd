"""The agent's effects on the host: installing a new certificate and key, and running commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field

from shared.base.files import fsync_dir, write_atomic
from shared.client.agent.config import CertificateEntry
from shared.contract.events import CertificateIssued


class CommandFailed(Exception):
    """A token command failed or printed nothing."""


class ReloadFailed(Exception):
    """The reload command failed: the new certificate is in place, but not in use yet."""


@dataclass(frozen=True)
class CommandResult:
    """How a shell command ended: its exit code (None: killed at the time limit) and its output."""

    exit_code: int | None
    stdout: str = field(repr=False)


async def run_command(command: str, env: dict[str, str], timeout: float) -> CommandResult:
    """Run `command` with the shell, in its own process group, killed (with its children) at `timeout`."""
    proc = await asyncio.create_subprocess_shell(
        command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return CommandResult(None, "")
    return CommandResult(proc.returncode, stdout.decode(errors="replace"))


def install(entry: CertificateEntry, issued: CertificateIssued) -> None:
    """Put the new certificate and key in place; idempotent, so a crash half-way is finished by a rerun.

    The chain first, then the certificate to `<cert>.next`; then the old key is linked to `<key>.old`
    (to be destroyed later, no copy of it is made) and the new key renamed over it; last, the
    certificate renamed into place."""
    next_cert = entry.cert.with_name(entry.cert.name + ".next")
    next_key, old_key = entry.beside_key(".next"), entry.beside_key(".old")
    write_atomic(entry.chain_path, issued.chain_pem.encode(), 0o644)
    write_atomic(next_cert, issued.cert_pem.encode(), 0o644)
    if next_key.exists():
        if not old_key.exists():
            os.link(entry.key, old_key)
        os.replace(next_key, entry.key)
        fsync_dir(entry.key.parent)
    os.replace(next_cert, entry.cert)
    fsync_dir(entry.cert.parent)
