"""Signing's PKCS#11 key store on SoftHSM2: keys made in a throwaway token of each test, never
extractable; certificates and CRLs signed through it verify with openssl; destruction and errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, ObjectClass

from deploy.local import devstack, softhsm
from harness import CRL_SHARDS, Harness
from pkcs11_tokens import MODULE, PRIVATE_KEY_MARKERS, finalize_module
from services.signing import domain
from services.signing.hsm import Pkcs11KeyStore
from services.signing.keystore import KeyStoreError
from shared.contract.events import CaKeyDestroyed
from shared.pki.crypto import KeyType, sign_message, spki_der, verify_message

PIN = "token-pin-5c1e-not-a-secret"
SO_PIN = "token-so-pin-9a2f-not-a-secret"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Token:
    label: str
    directory: Path  # the token's store: the one place key material may be

    def open(self) -> Pkcs11KeyStore:
        return Pkcs11KeyStore(MODULE, PIN, token_label=self.label)


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    """A fresh SoftHSM2 token in this test's temp dir (SOFTHSM2_CONF points the module at it)."""
    if shutil.which("softhsm2-util") is None or not MODULE.exists():
        pytest.skip("SoftHSM2 is not installed: `make softhsm` installs Debian's softhsm2")
    directory, conf = tmp_path / "softhsm-tokens", tmp_path / "softhsm2.conf"
    softhsm.write_config(conf, directory)
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    label = f"certbus-{uuid.uuid4().hex[:8]}"
    softhsm.init_token(conf, label, PIN, SO_PIN)
    finalize_module()  # the module reads SOFTHSM2_CONF when it is initialised: from this test's on
    yield Token(label, directory)
    finalize_module()


def _private_key_attributes(token: Token, ca_id: str) -> dict[Attribute, Any]:
    """CKA_* of the private key of `ca_id`, read through PKCS#11 in a session of the test's own."""
    library = pkcs11.lib(str(MODULE))
    found = library.get_token(token_label=token.label)
    try:
        session = found.open(user_pin=PIN)
    except pkcs11.exceptions.UserAlreadyLoggedIn:  # the store under test logged this process in
        session = found.open()
    try:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=ca_id, id=ca_id.encode())
        names = (Attribute.TOKEN, Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE)
        return {a: key[a] for a in (*names, Attribute.ALWAYS_SENSITIVE, Attribute.PRIVATE)}
    finally:
        session.close()


def _files_with_private_keys(root: Path, *, outside: Path) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and outside not in p.parents and any(m in p.read_bytes() for m in PRIVATE_KEY_MARKERS)
    ]


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_a_ca_key_is_generated_in_the_token_sensitive_and_never_extractable(token: Token, key_type: KeyType) -> None:
    store = token.open()
    key = store.generate("ca1", key_type)
    attributes = _private_key_attributes(token, "ca1")
    assert attributes[Attribute.TOKEN] is True and attributes[Attribute.PRIVATE] is True
    assert attributes[Attribute.SENSITIVE] is True and attributes[Attribute.ALWAYS_SENSITIVE] is True
    assert attributes[Attribute.EXTRACTABLE] is False and attributes[Attribute.NEVER_EXTRACTABLE] is True
    with pytest.raises(TypeError, match="not extractable"):
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    store.close()


def test_a_key_is_found_again_after_a_restart(token: Token) -> None:
    store = token.open()
    public = spki_der(store.generate("ca1", "ec-p384").public_key())
    store.close()
    finalize_module()
    again = token.open()
    assert again.has("ca1") and not again.has("ca2")
    assert spki_der(again.load("ca1").public_key()) == public
    with pytest.raises(KeyStoreError, match="already holds a key for CA ca1"):
        again.generate("ca1", "ec-p384")  # never a second key under one CA id


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_certificates_and_a_crl_signed_through_the_token_verify_with_openssl(
    token: Token, tmp_path: Path, key_type: KeyType
) -> None:
    store = token.open()
    root_key = store.generate("root1", key_type)
    root = domain.CaIdentity("root1", domain.root_certificate(root_key, "root1", "Certbus Test", NOW, 3650))
    issuing_key = store.generate("issuing1", key_type)
    urls = domain.Urls("http://pki.example.test")
    issuing_cert = domain.issuing_certificate(
        issuing_key.public_key(), "issuing1", root, store.load("root1"), "Certbus Test", urls, NOW, 365
    )
    revoked = domain.RevokedEntry(0x1234, NOW, "keyCompromise")
    crl = domain.crl(
        domain.CaIdentity("issuing1", issuing_cert), issuing_key, 7, [revoked], NOW, NOW + timedelta(days=7)
    )
    root_crl = domain.crl(root, root_key, 1, [], NOW, NOW + timedelta(days=30))
    files = {
        "root.pem": root.cert.public_bytes(serialization.Encoding.PEM),
        "issuing.pem": issuing_cert.public_bytes(serialization.Encoding.PEM),
        "crl.pem": crl.public_bytes(serialization.Encoding.PEM),
        "root-crl.pem": root_crl.public_bytes(serialization.Encoding.PEM),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    at = str(int((NOW + timedelta(days=1)).timestamp()))  # inside every validity period
    verified = _openssl("verify", "-attime", at, "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "issuing.pem"))
    assert verified.returncode == 0 and "issuing.pem: OK" in verified.stdout, verified.stdout + verified.stderr
    for crl_file, issuer in (("crl.pem", "issuing.pem"), ("root-crl.pem", "root.pem")):
        checked = _openssl("crl", "-in", str(tmp_path / crl_file), "-CAfile", str(tmp_path / issuer), "-noout")
        assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout, checked.stderr
    # Nothing but the token's own store holds key material.
    assert _files_with_private_keys(tmp_path, outside=token.directory) == []
    store.close()


def test_destroying_a_key_removes_the_pair_from_the_token_and_returns_its_answer(token: Token) -> None:
    store = token.open()
    store.generate("ca1", "ec-p256")
    store.generate("ca2", "ec-p256")
    destruction = store.destroy("ca1")
    assert destruction.existed and destruction.answer.startswith("CKR_OK: C_DestroyObject on 2 objects")
    with pytest.raises(KeyStoreError, match="holds 0 private and 0 public keys for CA ca1"):
        store.load("ca1")
    store.close()
    finalize_module()
    again = token.open()  # gone from the token, not only from the store's memory
    assert not again.has("ca1") and again.has("ca2")
    with pytest.raises(pkcs11.exceptions.NoSuchKey):
        _private_key_attributes(token, "ca1")
    second = again.destroy("ca1")
    assert not second.existed and "no private key object for CA ca1" in second.answer


def test_a_session_the_token_lost_is_opened_again_and_the_signature_made(
    token: Token, caplog: pytest.LogCaptureFixture
) -> None:
    store = token.open()
    key = store.generate("ca1", "ec-p256")
    store._session.close()  # as a restarted HSM forgets it (and, with its last session, the login)
    assert verify_message(key.public_key(), sign_message(key, b"after"), b"after")
    assert "the token lost signing's session: logging in again" in caplog.text and PIN not in caplog.text
    store.close()


def test_a_wrong_pin_is_a_key_store_error_that_never_shows_the_pin(token: Token) -> None:
    wrong = "wrong-pin-0b7d"
    with pytest.raises(KeyStoreError) as refused:
        Pkcs11KeyStore(MODULE, wrong, token_label=token.label)
    assert str(refused.value) == f"token {token.label!r} refused the PIN (PinIncorrect)"
    assert wrong not in repr(refused.value) and refused.value.__cause__ is None


def test_an_unknown_token_or_slot_is_a_key_store_error_naming_the_tokens_present(token: Token) -> None:
    with pytest.raises(KeyStoreError, match=rf"token 'nope' is not in PKCS#11 module .*'{token.label}' \(slot"):
        Pkcs11KeyStore(MODULE, PIN, token_label="nope")
    with pytest.raises(KeyStoreError, match="the token in slot 424242 is not in PKCS#11 module"):
        Pkcs11KeyStore(MODULE, PIN, slot=424242)
    with pytest.raises(KeyStoreError, match="by its label or by its slot id"):
        Pkcs11KeyStore(MODULE, PIN)


def test_a_missing_module_is_a_key_store_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=f"cannot load the PKCS#11 module {tmp_path}/none.so"):
        Pkcs11KeyStore(tmp_path / "none.so", PIN, token_label="any")


def _crl_der(h: Harness, ca_id: str, shard: int) -> bytes:
    url = f"http://127.0.0.1:{h.http_ports['validation']}/crl/{ca_id}/{shard}.crl"
    with urllib.request.urlopen(url, timeout=5) as response:
        data: bytes = response.read()
        return data


async def test_signing_on_a_token_issues_and_retires_with_no_ca_key_on_disk(
    token: Token, harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # token before harness: the services stop before the module is finalised
    pin_file = tmp_path / "secrets" / "pkcs11.pin"
    pin_file.parent.mkdir()
    pin_file.write_text(PIN)
    harness.overrides["signing"] = {
        "ca_keystore": "pkcs11",
        "ca_pkcs11_token_label": token.label,
        "ca_pkcs11_pin_file": pin_file,
        "ca_passphrase": None,
    }
    stack = await harness.serve()
    issued = await stack.enroll("a.corp.internal")
    old = issued.issuer_id
    chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
    store = token.open()  # the same token, as a second look at it
    assert store.has(old) and not stack.key_dir.exists()
    assert spki_der(store.load(old).public_key()) == spki_der(chain[0].public_key())  # type: ignore[arg-type]

    # The leaf and its issuer verify with openssl against the root; so does the issuer's CRL.
    (tmp_path / "leaf.pem").write_text(issued.cert_pem)
    (tmp_path / "chain.pem").write_text(issued.chain_pem)
    (tmp_path / "root.pem").write_bytes(chain[-1].public_bytes(serialization.Encoding.PEM))
    leaf, untrusted, root = (str(tmp_path / n) for n in ("leaf.pem", "chain.pem", "root.pem"))
    verified = _openssl("verify", "-CAfile", root, "-untrusted", untrusted, leaf)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    crl_file = tmp_path / "issuer.crl"
    crl_file.write_bytes(await asyncio.to_thread(_crl_der, stack, old, int(issued.serial, 16) % CRL_SHARDS))
    checked = _openssl("crl", "-inform", "DER", "-in", str(crl_file), "-CAfile", untrusted, "-noout")
    assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout, checked.stderr

    # Retirement destroys the object in the token; its replacement's key is made there too.
    result = await stack.cli("ca", "retire", old, "--reason", "rotation on a token", "--json")
    assert result.returncode == 0, result.stderr
    destroyed = CaKeyDestroyed.model_validate(json.loads(result.stdout))
    assert destroyed.ca_id == old and destroyed.key_store_answer is not None
    assert destroyed.key_store_answer.startswith("CKR_OK: C_DestroyObject on 2 objects in token")  # on the log
    assert not store.has(old)
    replacement = await stack.enroll("b.corp.internal")
    assert replacement.issuer_id != old and store.has(replacement.issuer_id)

    # Key material on disk: only the token's store; the other private keys there are not CAs'.
    ca_keys = {spki_der(c.public_key()) for c in chain}  # type: ignore[arg-type]
    for path in _files_with_private_keys(tmp_path, outside=token.directory):
        other = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert spki_der(other.public_key()) not in ca_keys, path  # type: ignore[arg-type]
    assert PIN not in caplog.text  # nor the PIN in what signing logged
    store.close()


def test_make_run_makes_a_softhsm_token_once_and_names_it_in_signing_s_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("softhsm2-util") is None or not MODULE.exists():
        pytest.skip("SoftHSM2 is not installed: `make softhsm` installs Debian's softhsm2")
    home = tmp_path / "home"
    env = devstack.ensure_softhsm_token(home)
    assert devstack.ensure_softhsm_token(home) == env  # the second run finds the first's token
    pin_file = Path(env["CERTBUS_CA_PKCS11_PIN_FILE"])
    assert pin_file.stat().st_mode & 0o077 == 0
    monkeypatch.setenv("SOFTHSM2_CONF", env["SOFTHSM2_CONF"])
    finalize_module()
    try:
        store = Pkcs11KeyStore(MODULE, pin_file.read_text(), token_label=env["CERTBUS_CA_PKCS11_TOKEN_LABEL"])
        store.generate("ca1", "ec-p256")
        store.close()
    finally:
        finalize_module()
