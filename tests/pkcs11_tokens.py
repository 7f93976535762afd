"""What the PKCS#11 tests share: the SoftHSM2 module, how a private key looks at rest (to show none
is written outside a token), and finalizing the module so the next test's SOFTHSM2_CONF is read."""

from __future__ import annotations

from pathlib import Path

import pkcs11

from deploy.local import softhsm

MODULE = softhsm.MODULE
# What a private key looks like at rest: PEM armour, or the start of PKCS#8 / SEC1 / PKCS#1 DER.
PRIVATE_KEY_MARKERS = (
    b"PRIVATE KEY-----",
    b"\x02\x01\x00\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01",  # PKCS#8 version 0, id-ecPublicKey
    b"\x02\x01\x00\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01",  # PKCS#8 version 0, rsaEncryption
    b"\x02\x01\x01\x04\x20",  # SEC1 ECPrivateKey version 1, 32-byte scalar
    b"\x02\x01\x01\x04\x30",  # ... 48-byte scalar
)


def finalize_module() -> None:
    """Finalize the PKCS#11 module if it is initialised: it reads SOFTHSM2_CONF when initialised again."""
    library = pkcs11.lib(str(MODULE))
    if library.initialized:
        library.finalize()


def ceremony_args(args: tuple[str, ...], token_label: str, pin_file: Path, out_dir: Path) -> list[str]:
    """`certbus-ceremony` arguments: the command (`args[0]`), the root's token, its PIN file, the out
    dir, the module and the tests' operator, then the rest of `args`."""
    return [
        args[0],
        "--token-label",
        token_label,
        "--pin-file",
        str(pin_file),
        "--out",
        str(out_dir),
        "--module",
        str(MODULE),
        "--operator",
        "ceremony-operator",
        *args[1:],
    ]
