"""A service's own provisioner key: the key a service signs its own one-time tokens with (validation
for its OCSP responder certificate, ACME for its orders and its server certificate). Created on first
start as Ed25519 (PKCS#8 PEM, mode 0600), its public half written beside it for the operator who
registers it (`certbus provisioner add ID --public-key FILE`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from shared.base.files import write_new
from shared.pki.crypto import key_pem
from shared.pki.tokens import ProvisionerKey

log = logging.getLogger("certbus.provisioner_keys")
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def public_key_file(path: Path) -> Path:
    """Where the public half of the key at `path` is written (`x.key.pem` -> `x.pub.pem`)."""
    return path.with_name(path.name.removesuffix(".pem").removesuffix(".key") + ".pub.pem")


def public_pem(key: ProvisionerKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, _SPKI)


def load_or_create(path: Path, public_path: Path | None = None, whose: str = "a service's") -> ProvisionerKey:
    """The provisioner key at `path`, created if missing (replicas sharing the file race safely),
    with its public half kept current at `public_path` (by default beside it)."""
    public_path = public_path or public_key_file(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an Ed25519 or EC P-256 provisioner key")
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ed25519.Ed25519PrivateKey.generate()
        try:
            write_new(path, key_pem(key))
        except FileExistsError:  # another replica created it just now
            return load_or_create(path, public_path, whose)
        log.info(f"created {whose} provisioner key", extra={"path": str(path)})
    if not public_path.exists() or public_path.read_bytes() != public_pem(key):
        tmp = public_path.with_name(f".{public_path.name}.{os.getpid()}")
        tmp.write_bytes(public_pem(key))
        os.replace(tmp, public_path)
    return key


def same_public_key(registered_pem: str, key: ProvisionerKey) -> bool:
    """Whether a registered provisioner's public key (PEM) is `key`'s."""
    try:
        registered = serialization.load_pem_public_key(registered_pem.encode())
    except ValueError:
        return False
    return registered.public_bytes(serialization.Encoding.DER, _SPKI) == key.public_key().public_bytes(
        serialization.Encoding.DER, _SPKI
    )
