"""The offline root ceremony (`certbus-ceremony`), on a SoftHSM2 token of each test's own, with no
bus and no database: the root key is made in the token and never leaves it; what the ceremony
writes (root, issuing CA certificate, root CRL) verifies with openssl and holds no key material."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pkcs11 import Attribute, ObjectClass
from typer.testing import CliRunner

from deploy.local import softhsm
from pkcs11_tokens import MODULE, PRIVATE_KEY_MARKERS, ceremony_args, finalize_module
from services.signing import domain
from services.signing.ceremony_cli import ceremony_app
from shared.contract.events import IssuingCaCertified, RootCaCreated, RootCrlSigned, parse_event
from shared.pki.crypto import spki_sha256
from shared.trust import operators

PIN = "ceremony-pin-3d7a-not-a-secret"
SO_PIN = "ceremony-so-pin-81c4-not-a-secret"


@dataclass(frozen=True)
class Token:
    label: str
    pin_file: Path


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    """A fresh SoftHSM2 token for this test alone, and its PIN in a 0600 file."""
    if shutil.which("softhsm2-util") is None or not MODULE.exists():
        pytest.skip("SoftHSM2 is not installed: `make softhsm` installs Debian's softhsm2")
    conf = tmp_path / "softhsm2.conf"
    softhsm.write_config(conf, tmp_path / "softhsm-tokens")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    label = f"root-{uuid.uuid4().hex[:8]}"
    softhsm.init_token(conf, label, PIN, SO_PIN)
    pin_file = tmp_path / "secrets" / "root.pin"
    pin_file.parent.mkdir(mode=0o700)
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    finalize_module()
    yield Token(label, pin_file)
    finalize_module()


def _ceremony(token: Token, out_dir: Path, *args: str, pin_file: Path | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        ceremony_app,
        ceremony_args(args, token.label, pin_file or token.pin_file, out_dir),
    )
    return result.exit_code, result.output


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def _csr(key: ec.EllipticCurvePrivateKey, *, path_length: int = 0) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "issuing")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(domain.ca_key_usage(), critical=True)
        .sign(key, hashes.SHA384())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _root_key_attributes(token: Token, root_id: str) -> dict[Attribute, object]:
    session = pkcs11.lib(str(MODULE)).get_token(token_label=token.label).open(user_pin=PIN)
    try:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=root_id, id=root_id.encode())
        names = (Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE, Attribute.ALWAYS_SENSITIVE)
        return {a: key[a] for a in (*names, Attribute.TOKEN, Attribute.PRIVATE)}
    finally:
        session.close()


def test_the_ceremony_makes_a_root_in_the_token_an_issuing_ca_and_root_crls_that_openssl_verifies(
    token: Token, tmp_path: Path
) -> None:
    out_dir = tmp_path / "ceremony"
    code, output = _ceremony(token, out_dir, "root", "--organization", "Certbus Test", "--days", "3650")
    assert code == 0, output
    created = parse_event((out_dir / "root.json").read_bytes())  # the operator command to publish, unsigned
    assert isinstance(created, RootCaCreated) and created.signatures == [] and created.producer == "operator"
    root_id = created.ca_id
    root = x509.load_pem_x509_certificate((out_dir / "root.pem").read_bytes())
    assert created.aggregate_id == root_id and created.cert_pem == (out_dir / "root.pem").read_text()
    assert created.spki_sha256 == spki_sha256(root.public_key()) and created.created_by == "ceremony-operator"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey) and root.public_key().key_size == 384

    # The root's key is in the token: sensitive, never extractable.
    attributes = _root_key_attributes(token, root_id)
    assert attributes[Attribute.TOKEN] is True and attributes[Attribute.PRIVATE] is True
    assert attributes[Attribute.SENSITIVE] is True and attributes[Attribute.ALWAYS_SENSITIVE] is True
    assert attributes[Attribute.EXTRACTABLE] is False and attributes[Attribute.NEVER_EXTRACTABLE] is True

    # An issuing CA's CSR (its key made elsewhere) certified by the root in the token.
    issuing_key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "issuing.csr").write_bytes(_csr(issuing_key))
    code, output = _ceremony(
        token,
        out_dir,
        "sign-issuing",
        "--csr",
        str(tmp_path / "issuing.csr"),
        "--ca-id",
        "issuing1",
        "--organization",
        "Certbus Test",
        "--base-url",
        "http://pki.example.test",
        "--days",
        "365",
    )
    assert code == 0, output
    issuing = x509.load_pem_x509_certificate((out_dir / "issuing-issuing1.pem").read_bytes())
    assert issuing.public_key() == issuing_key.public_key()
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert issuing.extensions.get_extension_for_class(x509.KeyUsage).value == domain.ca_key_usage()
    certified = parse_event((out_dir / "issuing-issuing1.json").read_bytes())
    assert isinstance(certified, IssuingCaCertified) and certified.ca_id == "issuing1"
    assert certified.parent_id == root_id and certified.root_cert_pem == (out_dir / "root.pem").read_text()
    assert certified.cert_pem == (out_dir / "issuing-issuing1.pem").read_text()
    verified = _openssl("verify", "-CAfile", str(out_dir / "root.pem"), str(out_dir / "issuing-issuing1.pem"))
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout + verified.stderr

    # Two root CRLs, numbered 1 and 2, the second revoking the issuing CA; both verify.
    code, output = _ceremony(token, out_dir, "crl", "--next-update-days", "365")
    assert code == 0, output
    code, output = _ceremony(
        token, out_dir, "crl", "--next-update-days", "365", "--revoked", format(issuing.serial_number, "x")
    )
    assert code == 0, output
    for number, revoked in ((1, []), (2, [issuing.serial_number])):
        crl_file = out_dir / f"root-{number}.crl"
        crl = x509.load_der_x509_crl(crl_file.read_bytes())
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == number
        assert [r.serial_number for r in crl] == revoked
        signed = parse_event((out_dir / f"root-{number}.json").read_bytes())
        assert isinstance(signed, RootCrlSigned) and signed.crl_number == number and signed.ca_id == root_id
        assert (
            x509.load_pem_x509_crl(signed.crl_pem.encode()).public_bytes(serialization.Encoding.DER)
            == crl_file.read_bytes()
        )
        checked = _openssl(
            "crl", "-inform", "DER", "-in", str(crl_file), "-CAfile", str(out_dir / "root.pem"), "-noout"
        )
        assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout, checked.stderr
    assert json.loads((out_dir / "ceremony.json").read_text()) == {"root_id": root_id, "crl_number": 2}

    # Nothing the ceremony wrote holds key material, nor the PIN.
    written = [p for p in out_dir.rglob("*") if p.is_file()]
    assert written and not [p for p in written if any(m in p.read_bytes() for m in PRIVATE_KEY_MARKERS)]
    assert not [p for p in written if PIN.encode() in p.read_bytes()]


def test_a_wrong_pin_refuses_cleanly_and_writes_nothing(token: Token, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("wrong-pin-77e1\n")
    out_dir = tmp_path / "ceremony"
    code, output = _ceremony(token, out_dir, "root", "--organization", "Certbus Test", "--days", "3650", pin_file=wrong)
    assert code == 1
    assert f"token {token.label!r} refused the PIN (PinIncorrect)" in " ".join(output.split())
    assert "Traceback" not in output and "wrong-pin-77e1" not in output and PIN not in output
    assert not out_dir.exists()


def test_a_csr_asking_for_more_than_an_issuing_ca_or_not_signed_by_its_key_is_refused(
    token: Token, tmp_path: Path
) -> None:
    out_dir = tmp_path / "ceremony"
    code, output = _ceremony(token, out_dir, "root", "--organization", "Certbus Test", "--days", "3650")
    assert code == 0, output
    args = ["--ca-id", "issuing1", "--organization", "O", "--base-url", "http://pki.example.test", "--days", "30"]
    (tmp_path / "pathlen.csr").write_bytes(_csr(ec.generate_private_key(ec.SECP256R1()), path_length=1))
    code, output = _ceremony(token, out_dir, "sign-issuing", "--csr", str(tmp_path / "pathlen.csr"), *args)
    assert code == 1 and "an issuing CA is ca=True, pathlen 0" in " ".join(output.split()), output
    # A CSR whose key is not the one that signed it: its signature does not verify.
    good, other = _csr(ec.generate_private_key(ec.SECP256R1())), ec.generate_private_key(ec.SECP256R1())
    csr = x509.load_pem_x509_csr(good)
    forged = x509.load_der_x509_csr(
        csr.public_bytes(serialization.Encoding.DER).replace(
            csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            other.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
    )
    (tmp_path / "forged.csr").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    code, output = _ceremony(token, out_dir, "sign-issuing", "--csr", str(tmp_path / "forged.csr"), *args)
    assert code == 1 and "does not verify with its own key" in " ".join(output.split()), output
    assert not list(out_dir.glob("issuing-*"))


def test_what_the_ceremony_writes_is_an_operator_command_that_co_signing_makes_valid(
    token: Token, tmp_path: Path
) -> None:
    out_dir = tmp_path / "ceremony"
    code, output = _ceremony(token, out_dir, "root", "--organization", "Certbus Test", "--days", "3650")
    assert code == 0, output
    assert "certbus operator cosign" in " ".join(output.split())
    unsigned = parse_event((out_dir / "root.json").read_bytes())
    assert isinstance(unsigned, RootCaCreated)
    alice, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    registry = operators.Registry({"alice": alice.public_key(), "bob": bob.public_key()}, {"ca_ceremony": 2})
    with pytest.raises(operators.NotAuthorised, match="needs 2 distinct operators' signatures, it has 0"):
        operators.signers(unsigned, registry)
    signed = operators.sign(operators.sign(unsigned, "alice", alice), "bob", bob)
    received = parse_event(signed.model_dump_json())  # as it arrives from the log
    assert isinstance(received, RootCaCreated)
    assert operators.signers(received, registry) == ("alice", "bob")
