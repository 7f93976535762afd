"""Files that hold secrets or must never be overwritten: created once, with their mode, synced."""

from __future__ import annotations

import os
from pathlib import Path


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` with `mode` and `data`, synced to disk; FileExistsError if it exists (so two
    processes creating the same key never overwrite each other: the loser loads the winner's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
