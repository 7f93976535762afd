"""The operator's local provisioner key (it signs enrollment tokens; never leaves this side)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared.base.files import write_new

# cryptography loads where a key is touched: every `certbus` start imports this module (DEFAULT_ID).
if TYPE_CHECKING:
    from shared.pki.tokens import ProvisionerKey

DEFAULT_ID = "default"


def key_path(home: Path, provisioner_id: str = DEFAULT_ID) -> Path:
    """Where the operator keeps a provisioner's private key."""
    return home / "provisioners" / f"{provisioner_id}.key.pem"


def load_or_create(
    home: Path, provisioner_id: str = DEFAULT_ID, algorithm: str = "EdDSA"
) -> tuple[ProvisionerKey, bool]:
    """The provisioner key, created (mode 0600; Ed25519 for EdDSA, P-256 for ES256) if missing;
    the flag says it was created."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from shared.pki.crypto import key_pem

    path = key_path(home, provisioner_id)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an Ed25519 or EC P-256 provisioner key")
        return key, False
    if algorithm not in ("EdDSA", "ES256"):
        raise ValueError(f"unknown token algorithm {algorithm!r}: use EdDSA or ES256")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    new: ProvisionerKey = (
        ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    )
    write_new(path, key_pem(new))
    return new, True


def public_pem(key: ProvisionerKey) -> str:
    """The provisioner's public key as PEM (what goes on the log)."""
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
