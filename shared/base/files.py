"""Files that hold secrets or must survive a crash: created once, replaced atomically, or destroyed;
always with their mode and synced."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create `path` with `mode` and `data`, synced to disk; FileExistsError if it exists (so two
    processes creating the same key never overwrite each other: the loser loads the winner's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(directory: Path) -> None:
    """Sync a directory, so that a rename or unlink in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` all at once: a temporary file in the same directory, created with
    `mode` (0600 for keys), synced, renamed over `path`, and the directory synced. A reader (or a
    crash) sees the old content or the new, never a mix; the old content is not overwritten."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed it
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def destroy_file(path: Path, missing_ok: bool = False) -> bool:
    """Overwrite `path` in place with random bytes of its size, sync, unlink, and sync the directory;
    False if it did not exist (and `missing_ok`).

    Every hard link to the file sees the overwrite (they share the data). On a copy-on-write or
    journalling file system, or a flash device, old blocks may survive an overwrite: this removes
    the key from the file system's view and from this file's blocks, not from the medium."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise
    with os.fdopen(fd, "wb") as f:
        size = os.fstat(f.fileno()).st_size
        f.write(secrets.token_bytes(size))
        f.flush()
        os.fsync(f.fileno())
    path.unlink()
    fsync_dir(path.parent)
    return True
