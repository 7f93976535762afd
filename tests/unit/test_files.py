"""Atomic replacement and destruction of files (keys, certificates)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shared.base.files import destroy_file, write_atomic, write_new


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_creates_a_key_file_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "key.pem", b"secret", 0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "key.pem").read_bytes() == b"secret"
    assert mode(tmp_path / "key.pem") == 0o600


def test_write_atomic_replaces_content_and_mode_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"old")
    path.chmod(0o666)
    write_atomic(path, b"new", 0o644)
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem"]


def test_write_atomic_is_a_rename_so_a_reader_holding_the_old_file_keeps_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"old")
    with path.open("rb") as reader:
        write_atomic(path, b"new")
        assert reader.read() == b"old"  # the old inode was replaced, never written into
    assert path.read_bytes() == b"new"


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem"]


def test_destroy_file_overwrites_the_data_in_place_then_unlinks(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    secret = b"-----BEGIN PRIVATE KEY-----" + b"A" * 200
    write_new(path, secret)
    witness = tmp_path / "witness"
    os.link(path, witness)  # shares the data: shows what the file's blocks hold afterwards
    assert destroy_file(path) is True
    assert not path.exists()
    left = witness.read_bytes()
    assert len(left) == len(secret)
    assert left != secret
    assert b"PRIVATE KEY" not in left


def test_destroy_file_of_a_missing_file_raises_unless_missing_is_fine(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        destroy_file(tmp_path / "gone.pem")
    assert destroy_file(tmp_path / "gone.pem", missing_ok=True) is False
