"""A SoftHSM2 token for development and tests: initialised with softhsm2-util, its PINs typed into
a pseudo-terminal (never on a command line, where every process could read them)."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")  # Debian's softhsm2


def write_config(path: Path, token_dir: Path) -> None:
    """A SOFTHSM2_CONF at `path` keeping tokens in `token_dir` (created 0700)."""
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n")


def init_token(config: Path, label: str, pin: str, so_pin: str) -> None:
    """Initialise a token labelled `label` in the first free slot of the SoftHSM2 that `config`
    describes; RuntimeError with softhsm2-util's output (which echoes no PIN) if it fails."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            ["softhsm2-util", "--init-token", "--free", "--label", label],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SOFTHSM2_CONF": str(config)},
        )
        os.close(terminal)
        terminal = -1
        # It asks for the SO PIN twice, then the user PIN twice.
        os.write(controller, "".join(f"{p}\n" for p in (so_pin, so_pin, pin, pin)).encode())
        output, _ = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    if proc.returncode != 0:
        raise RuntimeError(f"softhsm2-util could not initialise token {label!r}: {output.decode().strip()}")
