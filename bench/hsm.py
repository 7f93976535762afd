"""`make bench` (HSM part): signing's throughput with its CA key in a PKCS#11 token (SoftHSM2, as
`CERTBUS_CA_KEYSTORE=pkcs11` runs it) against the same key type in memory (the file key store's
keys, decrypted once), in the same run.

For each key type (BENCH_HSM_KEY_TYPES, default ec-p256 and ec-p384) it builds and signs leaf
certificates as signing does (the builder, then the CA key's `sign` with the key's own hash) for
BENCH_HSM_SECONDS (default 2) at a time, alternating file and token for BENCH_HSM_ROUNDS (default
3) rounds so that load on the machine hits both alike, on one thread, and prints the median
certificates per second of each and their ratio. Each signature through the token is verified
against the CA's public key once, so a broken signer cannot look fast. Read medians and ratios: the
machine is a shared 2-core box, and SoftHSM is a software token (a network HSM adds its round trip).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.environment import save_result
from deploy.local import softhsm
from shared.pki.crypto import KeyType, PrivateKey, generate_key, signing_hash

KEY_TYPES = [cast(KeyType, k) for k in os.environ.get("BENCH_HSM_KEY_TYPES", "ec-p256,ec-p384").split(",") if k]
SECONDS = float(os.environ.get("BENCH_HSM_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_HSM_ROUNDS", "3"))
PIN = "bench-user-pin"
SO_PIN = "bench-so-pin"


def _builder(issuer: x509.Name, leaf_key: ec.EllipticCurvePublicKey, serial: int) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{serial}.corp.internal")]))
        .issuer_name(issuer)
        .public_key(leaf_key)
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"bench-{serial}.corp.internal")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )


def rate(ca_key: PrivateKey, seconds: float) -> float:
    """Leaf certificates built and signed with `ca_key` per second, over `seconds`."""
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA")])
    leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    digest = signing_hash(ca_key)
    serial, started = 1, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        _builder(issuer, leaf_key, serial).sign(ca_key, digest)
        serial += 1
    return (serial - 1) / (time.perf_counter() - started)


def _verified(ca_key: PrivateKey) -> None:
    """A leaf signed with `ca_key` verifies under a CA certificate of its public key (else raises)."""
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench Issuing CA")])
    now = datetime.now(UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(issuer)
        .issuer_name(issuer)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    digest = signing_hash(ca_key)
    leaf = _builder(issuer, ec.generate_private_key(ec.SECP256R1()).public_key(), 2)
    leaf.sign(ca_key, digest).verify_directly_issued_by(ca.sign(ca_key, digest))


def main() -> int:
    if shutil.which("softhsm2-util") is None or not softhsm.MODULE.exists():
        print("HSM bench skipped: SoftHSM2 is not installed (`make softhsm` installs Debian's softhsm2)")
        return 0
    from services.signing.hsm import Pkcs11KeyStore  # loads the PKCS#11 module: after SOFTHSM2_CONF is set

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="certbus-bench-hsm-") as tmp:
        conf = Path(tmp) / "softhsm2.conf"
        softhsm.write_config(conf, Path(tmp) / "tokens")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        label = f"bench-{uuid.uuid4().hex[:8]}"
        softhsm.init_token(conf, label, PIN, SO_PIN)
        store = Pkcs11KeyStore(softhsm.MODULE, PIN, token_label=label)
        try:
            for key_type in KEY_TYPES:
                in_memory = generate_key(key_type)
                in_token = store.generate(f"bench-{key_type}", key_type)
                _verified(in_token)
                file_rates, token_rates = [], []
                for _ in range(ROUNDS):
                    file_rates.append(rate(in_memory, SECONDS))
                    token_rates.append(rate(in_token, SECONDS))
                file_median, token_median = statistics.median(file_rates), statistics.median(token_rates)
                results[key_type] = {
                    "file_certs_per_s": round(file_median, 1),
                    "softhsm_certs_per_s": round(token_median, 1),
                    "ratio": round(token_median / file_median, 3),
                }
                print(
                    f"signing {key_type}: file key {file_median:,.0f} certs/s, SoftHSM {token_median:,.0f} certs/s "
                    f"(ratio {token_median / file_median:.2f}; medians of {ROUNDS} rounds of {SECONDS:g} s, one thread)"
                )
        finally:
            store.close()
    save_result("hsm", {"seconds": SECONDS, "rounds": ROUNDS, "key_types": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
