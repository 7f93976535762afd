"""The kinds of key Certbus generates, by name: no imports, so a command line lists them without
loading cryptography (`crypto.generate_key` makes them)."""

from __future__ import annotations

from typing import Literal

KeyType = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519"]
KEY_TYPES: tuple[KeyType, ...] = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "ed25519")
