"""A deployment's identities on the bus and their NKey seeds, kept in one directory.

`make run` keeps them under `.certbus/identities/` and the tests under each test's own directory:
`identities.json` lists every identity (name, role, public NKey: nothing secret), and each
identity's seed is `<name>.nk` (mode 0600). The NATS server configuration is rendered from the
list (`shared.trust.accounts.render`), so the server knows only public keys; a seed never leaves the
machine of the process that uses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nkeys

from shared.base.files import write_atomic, write_new
from shared.base.settings import CommonSettings
from shared.trust.accounts import Identity, Names, Role, render


def new_seed() -> bytes:
    """A new NKey user seed (`SU...`)."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed


def public_key(seed: bytes) -> str:
    """The public NKey (`U...`) of a seed."""
    key: bytes = nkeys.from_seed(bytearray(seed)).public_key
    return key.decode()


class IdentityStore:
    """The identities of one deployment in `directory` (created 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def _index(self) -> Path:
        return self.directory / "identities.json"

    def seed_file(self, name: str) -> Path:
        """Where identity `name`'s seed is kept."""
        return self.directory / f"{name}.nk"

    def all(self) -> list[Identity]:
        """Every identity, in the order they were added."""
        if not self._index.exists():
            return []
        return [Identity(**entry) for entry in json.loads(self._index.read_text())]

    def get(self, name: str) -> Identity | None:
        """Identity `name`, if there is one."""
        return next((identity for identity in self.all() if identity.name == name), None)

    def ensure(self, name: str, role: Role) -> Identity:
        """Identity `name` with `role`: created (with a new seed) if missing; ValueError if it
        exists with another role."""
        existing = self.get(name)
        if existing is not None:
            if existing.role != role:
                raise ValueError(f"identity {name!r} exists as a {existing.role}, not a {role}")
            return existing
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed = new_seed()
        identity = Identity(name=name, role=role, nkey=public_key(seed))
        write_new(self.seed_file(name), seed)  # 0600, refuses to overwrite
        entries = [vars(i) for i in self.all()] + [vars(identity)]
        write_atomic(self._index, (json.dumps(entries, indent=2) + "\n").encode(), mode=0o600)
        return identity


def write_nats_config(home: Path, store: IdentityStore, settings: CommonSettings) -> Path:
    """The nats-server configuration of `make run`: the accounts `shared.trust.accounts` renders (the same
    as deploy/nats) for these identities; no anonymous user, so no unauthenticated connection."""
    directory = home / "nats"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(directory / "accounts.conf", render(store.all(), Names.of(settings)).encode(), mode=0o600)
    conf = directory / "server.conf"
    write_atomic(conf, b"max_payload: 1MB\ninclude ./accounts.conf\n", mode=0o600)
    return conf
