"""CA private keys at rest: encrypted PKCS#8 files, one per CA. The only module that loads them
(services/signing/hsm.py keeps them in a PKCS#11 token instead, behind the same `CaKeyStore`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from shared.base.files import destroy_file
from shared.pki.crypto import KeyType, PrivateKey, generate_key, key_pem


class KeyStoreError(Exception):
    """A CA key that cannot be used (missing, destroyed, or the passphrase is wrong)."""


@dataclass(frozen=True)
class KeyDestruction:
    """What destroying a CA key found and what the store answered (a file shredded, a token's CKR)."""

    existed: bool
    answer: str


class CaKeyStore(Protocol):
    """Where signing's CA keys are generated, found, used and destroyed (a directory or a token)."""

    def generate(self, ca_id: str, key_type: KeyType) -> PrivateKey:
        """A new key for `ca_id`, kept in the store."""
        ...

    def has(self, ca_id: str) -> bool:
        """Whether the store holds a key for `ca_id`."""
        ...

    def load(self, ca_id: str) -> PrivateKey:
        """The key of `ca_id` (KeyStoreError if there is none or it cannot be used)."""
        ...

    def destroy(self, ca_id: str) -> KeyDestruction:
        """Destroy the key of `ca_id` for good."""
        ...

    def retain(self, ca_ids: Iterable[str]) -> None:
        """Forget every key held in memory but those of `ca_ids`."""
        ...


class KeyStore:
    """Encrypted CA keys in a directory; decrypted keys stay in this process's memory only."""

    def __init__(self, directory: Path, passphrase: bytes) -> None:
        self._dir = directory
        self._passphrase = passphrase
        self._cache: dict[str, PrivateKey] = {}

    def __repr__(self) -> str:
        return f"KeyStore({str(self._dir)!r})"

    def _path(self, ca_id: str) -> Path:
        return self._dir / f"{ca_id}.key.pem"

    def generate(self, ca_id: str, key_type: KeyType) -> PrivateKey:
        """A new key of `key_type` for `ca_id`, saved encrypted."""
        key = generate_key(key_type)
        self.save(ca_id, key)
        return key

    def save(self, ca_id: str, key: PrivateKey) -> None:
        """Write `key` encrypted, mode 0600, atomically (temp file, fsync, rename)."""
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(ca_id)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key_pem(key, self._passphrase))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._cache[ca_id] = key

    def has(self, ca_id: str) -> bool:
        """Whether the key file of `ca_id` exists."""
        return self._path(ca_id).exists()

    def destroy(self, ca_id: str) -> KeyDestruction:
        """Destroy the key of `ca_id`: shred its file (and any half-written one), forget the decrypted
        key; not `existed` if there was no file (destroyed before, e.g. by a run that crashed before saying so)."""
        self._cache.pop(ca_id, None)
        path = self._path(ca_id)
        destroy_file(path.with_suffix(".tmp"), missing_ok=True)
        existed = destroy_file(path, missing_ok=True)
        return KeyDestruction(existed, "key file overwritten and removed" if existed else "no key file")

    def retain(self, ca_ids: Iterable[str]) -> None:
        """Forget every decrypted key but those of `ca_ids` (CAs closed since are never used again)."""
        keep = set(ca_ids)
        for ca_id in [c for c in self._cache if c not in keep]:
            del self._cache[ca_id]

    def load(self, ca_id: str) -> PrivateKey:
        """The decrypted key of `ca_id` (decrypted once, then kept in memory)."""
        if ca_id in self._cache:
            return self._cache[ca_id]
        path = self._path(ca_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyStoreError(f"no key file for CA {ca_id} in {self._dir}") from None
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase)
        except (ValueError, TypeError):
            raise KeyStoreError(f"the key of CA {ca_id} cannot be decrypted: wrong passphrase?") from None
        if not isinstance(key, PrivateKey):
            raise KeyStoreError(f"the key of CA {ca_id} is of an unsupported type")
        self._cache[ca_id] = key
        return key
