"""An offline root end to end, on SoftHSM2: the ceremony (`certbus-ceremony`, its own process, with
its own token in its own SoftHSM2 store) makes the root and certifies issuing CA keys that signing
generates in signing's token; operators publish what it writes; signing issues under it, rotates
its issuing CA after a compromise (a new key, certified by the ceremony again), and serves the root
CRL the ceremony signed. Signing's process never sees the root's token: the root key is in neither
its token nor its files."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import Attribute, ObjectClass

from deploy.local import softhsm
from harness import CRL_SHARDS, Harness, eventually
from pkcs11_tokens import MODULE, PRIVATE_KEY_MARKERS, ceremony_args, finalize_module
from services.signing import domain
from shared.base.settings import SigningSettings
from shared.contract.events import CaCreated, CaKeyDestroyed, CertificateIssued, IssuingCaKeyGenerated
from shared.pki.crypto import generate_key, spki_der
from shared.runtime.service import published_subjects

PIN = "offline-root-pin-5b2e-not-a-secret"
SO_PIN = "offline-root-so-pin-c09d-not-a-secret"
ORGANIZATION = "Certbus Offline Tests"


@dataclass(frozen=True)
class Token:
    conf: Path  # its own SoftHSM2 configuration: a process given another sees none of its tokens
    directory: Path
    label: str
    pin_file: Path


def _token(home: Path, label: str) -> Token:
    conf, directory = home / "softhsm2.conf", home / "tokens"
    home.mkdir(parents=True)
    softhsm.write_config(conf, directory)
    softhsm.init_token(conf, label, PIN, SO_PIN)
    pin_file = home / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    return Token(conf, directory, label, pin_file)


@dataclass(frozen=True)
class Tokens:
    root: Token  # the ceremony's, in a SoftHSM2 store of its own
    signing: Token  # the online signing service's


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tokens]:
    if shutil.which("softhsm2-util") is None or not MODULE.exists():
        pytest.skip("SoftHSM2 is not installed: `make softhsm` installs Debian's softhsm2")
    tag = uuid.uuid4().hex[:8]
    pair = Tokens(_token(tmp_path / "ceremony", f"root-{tag}"), _token(tmp_path / "online", f"signing-{tag}"))
    monkeypatch.setenv("SOFTHSM2_CONF", str(pair.signing.conf))  # this process (signing) sees its token only
    finalize_module()
    yield pair
    finalize_module()


async def _ceremony(token: Token, out_dir: Path, *args: str) -> str:
    """Run `certbus-ceremony` as its own process, with the root's SoftHSM2 store; its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env["SOFTHSM2_CONF"] = str(token.conf)
    command = [
        sys.executable,
        "-m",
        "services.signing.ceremony_cli",
        *ceremony_args(args, token.label, token.pin_file, out_dir),
    ]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _publish(stack: Harness, artifact: Path) -> None:
    """What an operator does with what the ceremony wrote: co-sign it, submit it."""
    for step in ("cosign", "submit"):
        done = await stack.cli("operator", step, str(artifact))
        assert done.returncode == 0, done.stderr


async def _waiting_csr(stack: Harness, csr_file: Path, not_ca: str | None = None) -> tuple[str, str]:
    """`certbus ca csr --out FILE` once signing has a key waiting (another than `not_ca`): its id,
    and what the command printed."""

    async def asked() -> tuple[str, str] | None:
        done = await stack.cli("ca", "csr", "--out", str(csr_file))
        if done.returncode != 0:
            return None
        found = re.search(r"^issuing CA: ([0-9a-f]+) ", done.stdout, re.M)
        assert found is not None, done.stdout
        return (found[1], done.stdout) if found[1] != not_ca else None

    waiting: tuple[str, str] = await eventually(asked, timeout=60, interval=0.5)
    return waiting


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data: bytes = response.read()
            return data
    except OSError:
        return None


def _labels(token: Token) -> set[str]:
    """The labels of every private key object in `token` (this process's SoftHSM2 store)."""
    found = pkcs11.lib(str(MODULE)).get_token(token_label=token.label)
    try:
        session = found.open(user_pin=PIN)
    except pkcs11.exceptions.UserAlreadyLoggedIn:  # signing, in this process, logged it in
        session = found.open()
    with session:
        return {str(key[Attribute.LABEL]) for key in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})}


def _verify(tmp: Path, root_pem: Path, issued: CertificateIssued, *crls: Path) -> subprocess.CompletedProcess[str]:
    leaf, chain = tmp / f"{issued.serial}.pem", tmp / f"{issued.serial}-chain.pem"
    leaf.write_text(issued.cert_pem)
    chain.write_text(issued.chain_pem)
    checks = ["-crl_check_all", *(a for crl in crls for a in ("-CRLfile", str(crl)))] if crls else []
    return _openssl("verify", *checks, "-CAfile", str(root_pem), "-untrusted", str(chain), str(leaf))


async def test_an_offline_root_certifies_rotates_and_revokes_and_signing_never_holds_its_key(
    tokens: Tokens, harness: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:  # tokens before harness: the services stop before the module is finalised
    harness.overrides["signing"] = {
        "ca_keystore": "pkcs11",
        "ca_pkcs11_token_label": tokens.signing.label,
        "ca_pkcs11_pin_file": tokens.signing.pin_file,
        "ca_passphrase": None,
        "ca_root": "offline",
        "root_crl_warn_days": 60,  # the ceremony's CRL below is good for 30 days: warned about
    }
    stack = harness
    await stack.start()
    settings = stack.settings("signing")
    assert isinstance(settings, SigningSettings)
    ceremony_dir = tmp_path / "ceremony" / "out"
    base_url = settings.public_base_url

    # Before the ceremony: no root, no issuing CA; signing says so, and is not ready.
    health = await stack.cli("health")
    assert health.returncode == 1 and "offline root: no root yet" in health.stderr, health.stderr

    # The ceremony makes the root in its token; operators publish it.
    await _ceremony(tokens.root, ceremony_dir, "root", "--organization", ORGANIZATION, "--days", "3650")
    root_pem = ceremony_dir / "root.pem"
    root_id = json.loads((ceremony_dir / "root.json").read_text())["ca_id"]
    await _publish(stack, ceremony_dir / "root.json")

    # Signing adopts it and generates its first issuing CA key, whose CSR waits for the ceremony.
    first_csr = tmp_path / "first.csr"
    first, said = await _waiting_csr(stack, first_csr)
    assert (
        f"root: {root_id}\n" in said and "root CRL: none served yet" in said and "revoked under the root: none" in said
    )
    health = await stack.cli("health")
    assert health.returncode == 1 and f"issuing CA {first} waits for the offline root's ceremony" in health.stderr

    await _ceremony(
        tokens.root, ceremony_dir, "sign-issuing", "--csr", str(first_csr), "--ca-id", first,
        "--organization", ORGANIZATION, "--base-url", base_url, "--days", "365",
    )  # fmt: skip
    await _publish(stack, ceremony_dir / f"issuing-{first}.json")
    await stack.register_provisioner()
    await stack.apply_profiles()  # linted under the issuing CA once signing adopted it
    issued = await stack.enroll("a.offline.corp.internal")
    assert issued.issuer_id == first
    verified = _verify(tmp_path, root_pem, issued)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    assert any("has no CRL served yet" in w for w in await _signing_warnings(stack))

    # Signing's token holds the issuing CA's key and no root's; the root's token is not in its store.
    assert _labels(tokens.signing) == {first}
    library = pkcs11.lib(str(MODULE))
    assert tokens.root.label not in {t.label for t in library.get_tokens()}
    created = {e.ca_id: e for e in await _events(stack, CaCreated)}
    assert created[root_id].key_offline and created[first].parent_id == root_id and not created[first].key_offline

    # A certificate for a key signing never generated is refused, and nothing changes.
    stray_csr = tmp_path / "stray.csr"
    stray_csr.write_bytes(
        domain.issuing_csr(generate_key("ec-p256"), "0badc0de0badc0de", ORGANIZATION).public_bytes(
            serialization.Encoding.PEM
        )
    )
    await _ceremony(
        tokens.root, ceremony_dir, "sign-issuing", "--csr", str(stray_csr), "--ca-id", "0badc0de0badc0de",
        "--organization", ORGANIZATION, "--base-url", base_url, "--days", "365",
    )  # fmt: skip
    await _publish(stack, ceremony_dir / "issuing-0badc0de0badc0de.json")
    pool = await stack.db()

    async def parked() -> list[str]:
        rows = await pool.fetch("SELECT reason FROM signing.parked WHERE consumer LIKE '%ceremony'")
        return [r["reason"] for r in rows]

    reasons = await eventually(parked)
    assert len(reasons) == 1 and "ceremony_refused: no key of issuing CA 0badc0de0badc0de waits" in reasons[0]
    assert (await stack.enroll("b.offline.corp.internal")).issuer_id == first

    # The issuing CA is compromised: signing generates the replacement's key and waits for the
    # ceremony; the root's next CRL is to name the compromised CA's certificate.
    done = await stack.cli("ca", "compromise", first, "--reason", "offline root rotation test")
    assert done.returncode == 0, done.stderr
    second_csr = tmp_path / "second.csr"
    second, said = await _waiting_csr(stack, second_csr, not_ca=first)
    first_cert = x509.load_pem_x509_certificate((ceremony_dir / f"issuing-{first}.pem").read_bytes())
    found = re.search(r"^revoked under the root: (\S+)$", said, re.M)
    assert found is not None and found[1].startswith(f"{first_cert.serial_number:x}:cACompromise@"), said

    # Signing loses its database while the key waits: it rebuilds from the log, reads the ceremony's
    # commands again (the stray one parked again, nothing else), creates no key and publishes nothing
    # twice, and the same key still waits.
    async def generated() -> bool:
        return len(await stack.stream_messages(IssuingCaKeyGenerated.filter(stack.root))) == 2

    await eventually(generated)  # on the log, not only in signing's outbox, before the database goes
    published = await _published(stack)
    await stack.lose_database("signing")
    await stack.start("signing")
    await stack.rebuilt("signing")
    assert await _waiting_csr(stack, second_csr, not_ca=first) == (second, said)
    assert await _published(stack) == published
    assert _labels(tokens.signing) == {first, second}
    assert len(await eventually(parked)) == 1

    await _ceremony(
        tokens.root, ceremony_dir, "sign-issuing", "--csr", str(second_csr), "--ca-id", second,
        "--organization", ORGANIZATION, "--base-url", base_url, "--days", "365",
    )  # fmt: skip
    await _publish(stack, ceremony_dir / f"issuing-{second}.json")
    rotated = await stack.enroll("c.offline.corp.internal")
    assert rotated.issuer_id == second
    assert root_id not in _labels(tokens.signing)

    # A root CRL that leaves the compromised CA out is not served: it would make that CA good again.
    await _ceremony(tokens.root, ceremony_dir, "crl", "--next-update-days", "30")
    await _publish(stack, ceremony_dir / "root-1.json")
    reasons = await eventually(lambda: _parked_beyond(parked, 1))
    assert f"leaves out issuing CA certificates the root revoked ({first_cert.serial_number:x})" in reasons[-1]

    # The ceremony signs the next with the compromised CA in it; validation serves it.
    await _ceremony(tokens.root, ceremony_dir, "crl", "--next-update-days", "30", "--revoked", found[1])
    await _publish(stack, ceremony_dir / "root-2.json")
    root_crl_url = f"{base_url}/crl/{root_id}.crl"
    served = await eventually(lambda: asyncio.to_thread(_get, root_crl_url), timeout=30, interval=0.3)
    assert served == (ceremony_dir / "root-2.crl").read_bytes()
    root_crl = tmp_path / "root.crl"
    root_crl.write_bytes(served)
    checked = _openssl("crl", "-inform", "DER", "-in", str(root_crl), "-CAfile", str(root_pem), "-noout")
    assert "verify OK" in checked.stdout + checked.stderr, checked.stderr
    entry = x509.load_der_x509_crl(served).get_revoked_certificate_by_serial_number(first_cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.ca_compromise
    assert found[1].endswith(f"@{entry.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ}")  # when signing revoked it
    warnings = await _signing_warnings(stack)
    assert any(f"{root_id}'s CRL #2 goes out of date at" in w for w in warnings), warnings
    shown = await stack.cli("ca", "root")
    assert shown.returncode == 0 and "root CRL: #2, next update" in shown.stdout, shown.stdout + shown.stderr

    # A relying party checking every CRL of the chain: the new CA's leaf passes, the old one's fails.
    async def shard_crl(ca: str, serial: str) -> Path:
        url = f"{base_url}/crl/{ca}/{int(serial, 16) % CRL_SHARDS}.crl"
        path = tmp_path / f"{ca}.crl"
        path.write_bytes(await eventually(lambda: asyncio.to_thread(_get, url), timeout=30, interval=0.3))
        path.write_text(_openssl("crl", "-inform", "DER", "-in", str(path), "-outform", "PEM").stdout)
        return path

    root_crl_pem = tmp_path / "root-crl.pem"
    root_crl_pem.write_text(_openssl("crl", "-inform", "DER", "-in", str(root_crl), "-outform", "PEM").stdout)
    good = _verify(tmp_path, root_pem, rotated, root_crl_pem, await shard_crl(second, rotated.serial))
    assert good.returncode == 0, good.stdout + good.stderr
    bad = _verify(tmp_path, root_pem, issued, root_crl_pem, await shard_crl(first, issued.serial))
    assert bad.returncode != 0 and "certificate revoked" in bad.stdout + bad.stderr, bad.stdout + bad.stderr

    # The same CRL submitted again changes nothing (a rebuild reads it again): not parked.
    again = await stack.cli("operator", "submit", str(ceremony_dir / "root-2.json"))
    assert again.returncode == 0, again.stderr
    await asyncio.sleep(1)
    assert len(await parked()) == 2  # the stray certificate and the CRL that left a CA out

    # Retiring the issuing CA destroys its key in signing's token (the token's answer on the log);
    # its replacement's key waits for the ceremony.
    done = await stack.cli("ca", "retire", second, "--reason", "offline root retirement test", "--json")
    assert done.returncode == 0, done.stderr
    destroyed = CaKeyDestroyed.model_validate(json.loads(done.stdout))
    assert (destroyed.key_store_answer or "").startswith("CKR_OK: C_DestroyObject on 2 objects in token")
    third, _ = await _waiting_csr(stack, tmp_path / "third.csr", not_ca=second)
    assert _labels(tokens.signing) == {first, third}  # the compromised CA's key stays until it is retired

    # No private key in the log, in any service's tables, or in what the services logged.
    for message in await stack.stream_messages(f"{stack.root}.>"):
        assert not any(marker in message.data for marker in PRIVATE_KEY_MARKERS), message.subject
    for schema in ("signing", "enrollment", "validation", "revocation", "audit"):
        for table in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema):
            rows = await pool.fetch(f'SELECT t::text AS row FROM {schema}."{table["tablename"]}" t')
            for row in rows:
                text = row["row"]
                assert "PRIVATE KEY" not in text, (schema, table["tablename"])
                assert not any(marker.hex() in text for marker in PRIVATE_KEY_MARKERS[1:]), (schema, table)
    assert "PRIVATE KEY" not in caplog.text and PIN not in caplog.text

    # No CA's private key on disk outside the tokens' stores (the other private keys there, the
    # operator's and the provisioners', are not CAs').
    certs = [x509.load_pem_x509_certificate(e.cert_pem.encode()) for e in await _events(stack, CaCreated)]
    ca_keys = {spki_der(cert.public_key()) for cert in certs}  # type: ignore[arg-type]
    stores = (tokens.root.directory, tokens.signing.directory)
    for path in tmp_path.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(s) for s in stores):
            if any(marker in path.read_bytes() for marker in PRIVATE_KEY_MARKERS):
                other = serialization.load_pem_private_key(path.read_bytes(), password=None)
                assert spki_der(other.public_key()) not in ca_keys, path  # type: ignore[arg-type]


async def _parked_beyond(parked: Callable[[], Awaitable[list[str]]], count: int) -> list[str] | None:
    reasons = await parked()
    return reasons if len(reasons) > count else None


async def _signing_warnings(stack: Harness) -> list[str]:
    """What `certbus health --json` says signing warns about (ready or not)."""
    done = await stack.cli("health", "--json")
    reports = json.loads(done.stdout)
    return [w for r in reports if r["service"] == "signing" for w in r.get("warnings", [])]


async def _published(stack: Harness) -> list[tuple[str, bytes]]:
    """What signing published on the log but its CRLs (signed when due, rebuilt or not)."""
    found = []
    for subject in published_subjects("signing", stack.root):
        if not subject.endswith(".crl_published"):
            found += [(m.subject, m.data) for m in await stack.stream_messages(subject)]
    return sorted(found)


async def _events(stack: Harness, cls: type[CaCreated]) -> list[CaCreated]:
    return [cls.model_validate_json(m.data) for m in await stack.stream_messages(cls.filter(stack.root))]


async def test_signing_with_an_online_root_adopts_no_root_from_a_ceremony(
    tokens: Tokens, stack: Harness, tmp_path: Path
) -> None:
    ceremony_dir = tmp_path / "ceremony" / "out"
    await _ceremony(tokens.root, ceremony_dir, "root", "--organization", ORGANIZATION, "--days", "3650")
    before = {e.ca_id for e in await _events(stack, CaCreated)}
    await _publish(stack, ceremony_dir / "root.json")
    pool = await stack.db()

    async def parked() -> list[str]:
        return [r["reason"] for r in await pool.fetch("SELECT reason FROM signing.parked")]

    reasons = await eventually(parked)
    assert "ceremony_refused: signing runs with an online root (CERTBUS_CA_ROOT=online)" in reasons[0]
    assert {e.ca_id for e in await _events(stack, CaCreated)} == before
    assert (await stack.enroll("still.corp.internal")).issuer_id in before
