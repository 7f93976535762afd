"""The offline root ceremony: what is done with the root's key, where its token is, with no bus and
no database. The root key is generated inside the token (sensitive, never extractable, through
`Pkcs11KeyStore`) and used there only, to self-sign the root certificate, to certify issuing CAs
whose keys were generated elsewhere (their CSRs), and to sign the root's CRL. Certificates come
from signing's own templates (`services.signing.domain`), so a ceremony's root and issuing CAs
have the profile signing's own have.

Everything the ceremony writes to its out dir is public: certificates, CRLs, artifacts (each the
operator command to publish, unsigned: RootCaCreated, IssuingCaCertified, RootCrlSigned) and its
state (the root's id, the last CRL number). No PIN and no key material is ever written, logged or
put in an error message."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.signing import domain
from services.signing.hsm import Pkcs11KeyStore
from services.signing.keystore import KeyStoreError
from shared.contract.events import IssuingCaCertified, OperatorCommand, RootCaCreated, RootCrlSigned
from shared.pki.crypto import KeyType, spki_der, spki_sha256

STATE = "ceremony.json"
ROOT_PEM = "root.pem"
# The issuing keys a root certifies: those signing makes for its issuing CAs.
ISSUING_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")


RootToken = Pkcs11KeyStore  # the root's token, as the ceremony's commands hold it


class CeremonyError(Exception):
    """What the ceremony refused, said without any secret."""


def read_pin(pin_file: Path) -> str:
    """The token's user PIN from a file (its trailing newline dropped); never from a command line."""
    try:
        pin = pin_file.read_text().rstrip("\r\n")
    except OSError as error:
        raise CeremonyError(f"cannot read the PIN file {pin_file}: {error.strerror}") from None
    if not pin:
        raise CeremonyError(f"the PIN file {pin_file} is empty")
    return pin


def open_token(module: Path, token_label: str, pin_file: Path) -> Pkcs11KeyStore:
    """The root's token, logged in (a KeyStoreError for a wrong PIN names the token's answer only)."""
    return Pkcs11KeyStore(module, read_pin(pin_file), token_label=token_label)


@dataclass(frozen=True)
class State:
    """What the ceremony remembers between its sessions, in its out dir (public)."""

    root_id: str
    crl_number: int  # the last root CRL's number (0: none signed yet)

    @classmethod
    def read(cls, out_dir: Path) -> State:
        path = out_dir / STATE
        try:
            data = json.loads(path.read_text())
            return cls(str(data["root_id"]), int(data["crl_number"]))
        except FileNotFoundError:
            raise CeremonyError(f"{out_dir} holds no ceremony: run `ceremony root` first") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CeremonyError(f"{path} is not a ceremony's state: {error}") from None

    def write(self, out_dir: Path) -> None:
        _write(out_dir / STATE, json.dumps({"root_id": self.root_id, "crl_number": self.crl_number}, indent=2))


def _write(path: Path, text: str | bytes) -> None:
    """Write `path` whole (a temporary file renamed over it)."""
    data = text.encode() if isinstance(text, str) else text
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _command(command: OperatorCommand) -> str:
    """The artifact: the operator command to publish, unsigned (operators add their signatures with
    `certbus operator cosign FILE`, one of them `certbus operator submit FILE`s it)."""
    return command.model_dump_json(indent=2) + "\n"


def _root(out_dir: Path) -> tuple[State, x509.Certificate]:
    state = State.read(out_dir)
    try:
        cert = x509.load_pem_x509_certificate((out_dir / ROOT_PEM).read_bytes())
    except (OSError, ValueError) as error:
        raise CeremonyError(f"{out_dir / ROOT_PEM} is not the ceremony's root certificate: {error}") from None
    return state, cert


def _root_key(store: Pkcs11KeyStore, root_id: str, cert: x509.Certificate) -> Any:
    """The root's key in the token, checked to be the one `cert` certifies."""
    if not store.has(root_id):
        raise CeremonyError(f"{store!r} holds no key for root {root_id}: is this the root's token?")
    key = store.load(root_id)
    if spki_der(key.public_key()) != spki_der(cert.public_key()):  # type: ignore[arg-type]
        raise CeremonyError(f"the key of root {root_id} in {store!r} is not the key of {ROOT_PEM}")
    return key


def make_root(
    store: Pkcs11KeyStore,
    out_dir: Path,
    *,
    organization: str,
    days: int,
    now: datetime,
    operator: str,
    key_type: KeyType = "ec-p384",
    root_id: str | None = None,
) -> x509.Certificate:
    """A new root: its key generated in the token, its certificate self-signed there. Writes
    root.pem, root.json (the artifact) and the ceremony's state to `out_dir` (which must hold none)."""
    if (out_dir / STATE).exists():
        raise CeremonyError(f"{out_dir} already holds a ceremony (root {State.read(out_dir).root_id})")
    if days < 1:
        raise CeremonyError("a root is valid for one day at least")
    out_dir.mkdir(parents=True, exist_ok=True)
    root_id = root_id or uuid.uuid4().hex[:16]
    key = store.generate(root_id, key_type)
    cert = domain.root_certificate(key, root_id, organization, now, days)
    created = RootCaCreated.first(
        root_id,
        producer="operator",
        at=now,
        correlation_id=f"ceremony-{root_id}",
        ca_id=root_id,
        subject_dn=cert.subject.rfc4514_string(),
        cert_pem=_pem(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
        created_by=operator,
    )
    _write(out_dir / ROOT_PEM, _pem(cert))
    _write(out_dir / "root.json", _command(created))
    State(root_id, 0).write(out_dir)
    return cert


def csr_problems(csr: x509.CertificateSigningRequest) -> list[str]:
    """Why a CSR for an issuing CA cannot be certified (empty: it can). The certificate's
    extensions come from signing's issuing profile, never from the CSR; a CSR that asks for other
    constraints or key usages than that profile gives is refused rather than silently narrowed."""
    problems = []
    if not csr.is_signature_valid:
        problems.append("the CSR's signature does not verify with its own key")
    public = csr.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        if f"ec-p{public.key_size}" not in ISSUING_KEY_TYPES or public.curve.name not in ("secp256r1", "secp384r1"):
            problems.append(f"an issuing CA key on curve {public.curve.name} is not supported: P-256 or P-384")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            problems.append(f"an issuing CA RSA key of {public.key_size} bits is too short: 2048 at least")
    else:
        problems.append(f"an issuing CA key of type {type(public).__name__} is not supported")
    for extension in csr.extensions:
        value = extension.value
        if isinstance(value, x509.BasicConstraints):
            if not value.ca or value.path_length != 0:
                problems.append(f"the CSR asks for {value}: an issuing CA is ca=True, pathlen 0")
        elif isinstance(value, x509.KeyUsage):
            if value != domain.ca_key_usage():
                problems.append(
                    "the CSR asks for other key usages than an issuing CA's (keyCertSign, cRLSign, digitalSignature)"
                )
        elif not isinstance(value, x509.SubjectKeyIdentifier | x509.SubjectAlternativeName):
            problems.append(
                f"the CSR asks for an extension the issuing profile does not give: {extension.oid.dotted_string}"
            )
    return problems


def sign_issuing(
    store: Pkcs11KeyStore,
    out_dir: Path,
    csr_pem: bytes,
    *,
    issuing_id: str,
    organization: str,
    base_url: str,
    days: int,
    now: datetime,
    operator: str,
) -> x509.Certificate:
    """An issuing CA certificate for the key of `csr_pem`, signed with the root's key in the token.
    Writes issuing-<id>.pem and issuing-<id>.json (the IssuingCaCertified to publish)."""
    state, root_cert = _root(out_dir)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as error:
        raise CeremonyError(f"not a PEM certificate signing request: {error}") from None
    if problems := csr_problems(csr):
        raise CeremonyError("the CSR is refused: " + "; ".join(problems))
    if spki_der(csr.public_key()) == spki_der(root_cert.public_key()):  # type: ignore[arg-type]
        raise CeremonyError("the CSR's key is the root's own")
    if (out_dir / f"issuing-{issuing_id}.pem").exists():
        raise CeremonyError(f"{out_dir} already holds a certificate for issuing CA {issuing_id}")
    key = _root_key(store, state.root_id, root_cert)
    root = domain.CaIdentity(state.root_id, root_cert)
    cert = domain.issuing_certificate(
        csr.public_key(),  # type: ignore[arg-type]
        issuing_id,
        root,
        key,
        organization,
        domain.Urls(base_url),
        now,
        days,
    )
    _write(out_dir / f"issuing-{issuing_id}.pem", _pem(cert))
    certified = IssuingCaCertified.first(
        issuing_id,
        producer="operator",
        at=now,
        correlation_id=f"ceremony-{state.root_id}",
        ca_id=issuing_id,
        parent_id=state.root_id,
        subject_dn=cert.subject.rfc4514_string(),
        cert_pem=_pem(cert),
        root_cert_pem=_pem(root_cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        spki_sha256=spki_sha256(cert.public_key()),  # type: ignore[arg-type]
        certified_by=operator,
    )
    _write(out_dir / f"issuing-{issuing_id}.json", _command(certified))
    return cert


def sign_crl(
    store: Pkcs11KeyStore,
    out_dir: Path,
    revoked: list[domain.RevokedEntry],
    *,
    next_update_days: int,
    now: datetime,
    operator: str,
) -> x509.CertificateRevocationList:
    """The root's next full CRL (its number one above the last) listing `revoked`, every issuing CA
    certificate the root has revoked, each with its reason and time (each CRL is whole: name them
    all each time; `certbus ca csr` lists them as signing knows them).
    Writes root-<number>.crl (DER) and root-<number>.json (the RootCrlSigned to publish), then the
    new number to the state."""
    state, root_cert = _root(out_dir)
    if next_update_days < 1:
        raise CeremonyError("a CRL's nextUpdate is one day away at least")
    key = _root_key(store, state.root_id, root_cert)
    number = state.crl_number + 1
    serials = [entry.serial for entry in revoked]
    if len(set(serials)) != len(serials):
        raise CeremonyError("a serial is named twice in --revoked")
    entries = sorted(revoked, key=lambda entry: entry.serial)
    next_update = now + timedelta(days=next_update_days)
    crl = domain.crl(domain.CaIdentity(state.root_id, root_cert), key, number, entries, now, next_update)
    der = crl.public_bytes(serialization.Encoding.DER)
    _write(out_dir / f"root-{number}.crl", der)
    signed = RootCrlSigned.first(
        state.root_id,
        producer="operator",
        at=now,
        correlation_id=f"ceremony-{state.root_id}",
        ca_id=state.root_id,
        crl_number=number,
        this_update=now,
        next_update=next_update,
        revoked_count=len(entries),
        crl_pem=crl.public_bytes(serialization.Encoding.PEM).decode(),
        sha256=hashlib.sha256(der).hexdigest(),
        signed_by=operator,
    )
    _write(out_dir / f"root-{number}.json", _command(signed))
    State(state.root_id, number).write(out_dir)
    return crl


__all__ = [
    "ISSUING_KEY_TYPES",
    "CeremonyError",
    "KeyStoreError",
    "RootToken",
    "State",
    "csr_problems",
    "make_root",
    "open_token",
    "read_pin",
    "sign_crl",
    "sign_issuing",
]
