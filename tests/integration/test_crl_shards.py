"""Sharded CRLs through the real services: a leaf names its own shard's CRL, that shard's CRL (and
only it) is signed again when the leaf is revoked, carries a critical issuingDistributionPoint with
its URL, is served over HTTP at that URL, and `openssl verify -crl_check` takes it from there. A CA
created unsharded keeps its one CRL at the URL it always had."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

from harness import CRL_SHARDS, Harness, eventually
from services.signing import domain
from shared.client.sdk import CertbusError, Rejected, crl_of_certificate
from shared.contract.events import CertificateIssued, CrlPublished
from shared.pki.crypto import build_csr, generate_key
from signals import audit_caught_up


def _cdp(issued: CertificateIssued) -> str:
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    [point] = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    [name] = point.full_name or []
    return str(name.value)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        data: bytes = response.read()
        return data


async def _fetch_crl(url: str) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(await asyncio.to_thread(_get, url))


async def _published(h: Harness, ca_id: str) -> list[CrlPublished]:
    return [
        CrlPublished.model_validate_json(m.data) for m in await h.stream_messages(f"{h.root}.ca.{ca_id}.crl_published")
    ]


async def _lists(url: str, serial: str) -> bool:
    try:
        crl = await _fetch_crl(url)
    except urllib.error.HTTPError:
        return False
    return crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


async def test_a_leaf_names_its_shard_and_a_revocation_re_signs_that_shard_only(stack: Harness) -> None:
    issued = await stack.enroll("shard.corp.internal")
    ca, shard = issued.issuer_id, int(issued.serial, 16) % CRL_SHARDS
    base = f"http://127.0.0.1:{stack.http_ports['validation']}"
    assert _cdp(issued) == f"{base}/crl/{ca}/{shard}.crl"
    assert crl_of_certificate(issued.cert_pem) == (ca, shard)

    # Every shard has its first CRL before anything is revoked; the unsharded URL serves nothing.
    before = await eventually(lambda: _first_of_each_shard(stack, ca))
    assert sorted(before) == list(range(CRL_SHARDS))
    with pytest.raises(urllib.error.HTTPError) as missing:
        await asyncio.to_thread(_get, f"{base}/crl/{ca}.crl")
    assert missing.value.code == 404

    async with stack.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "keyCompromise", "tests")
    await eventually(lambda: _lists(_cdp(issued), issued.serial), timeout=10)

    after = await _published(stack, ca)
    again = [e for e in after if e.shard is not None and e.crl_number > before[e.shard]]
    assert {e.shard for e in again} == {shard}, "a revocation re-signed another shard's CRL"
    numbers = [e.crl_number for e in after if e.shard == shard]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # increasing per shard

    crl = await _fetch_crl(_cdp(issued))
    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.full_name == [x509.UniformResourceIdentifier(_cdp(issued))]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == max(numbers)
    for other in set(range(CRL_SHARDS)) - {shard}:
        assert not await _lists(f"{base}/crl/{ca}/{other}.crl", issued.serial)

    # Audit reads the revocation's own shard's CRL (digest, signature, issuingDistributionPoint) and
    # finds nothing wrong. (Within the grace the listing itself is not judged: test_audit_verify
    # judges it with a shifted clock, and the unit tests of the checks a wrong shard.)
    await audit_caught_up(stack)
    checked = await stack.cli("audit", "check", "--json")
    assert [f for f in json.loads(checked.stdout)["findings"] if f["check"] == "crl"] == []

    # The SDK fetches the same shard by number or from the certificate; without a shard it says why.
    async with stack.client() as c:
        assert (await c.crl(ca, shard=shard)).crl_number == max(numbers)
        assert (await c.crl_for(issued.cert_pem)).shard == shard
        with pytest.raises(CertbusError, match=f"publishes {CRL_SHARDS} CRL shards"):
            await c.crl(ca)


async def _first_of_each_shard(h: Harness, ca_id: str) -> dict[int, int] | None:
    newest: dict[int, int] = {}
    for e in await _published(h, ca_id):
        assert e.shard is not None
        newest[e.shard] = max(newest.get(e.shard, 0), e.crl_number)
    return newest if len(newest) == CRL_SHARDS else None


def _openssl_verify(tmp_path: Path, issued: CertificateIssued, crl_der: bytes) -> subprocess.CompletedProcess[str]:
    """`openssl verify -crl_check` of the leaf with the chain it came with and the CRL given."""
    chain = issued.chain_pem
    (tmp_path / "root.pem").write_text(chain[chain.rindex("-----BEGIN CERTIFICATE-----") :])
    (tmp_path / "issuing.pem").write_text(chain[: chain.index("-----END CERTIFICATE-----") + 25] + "\n")
    (tmp_path / "leaf.pem").write_text(issued.cert_pem)
    (tmp_path / "shard.crl").write_bytes(x509.load_der_x509_crl(crl_der).public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        [
            *("openssl", "verify", "-crl_check", "-CAfile", str(tmp_path / "root.pem")),
            *("-untrusted", str(tmp_path / "issuing.pem"), "-CRLfile", str(tmp_path / "shard.crl")),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_openssl_checks_a_leaf_against_the_crl_at_the_url_it_names(stack: Harness, tmp_path: Path) -> None:
    good, gone = await _two_in_different_shards(stack)
    ca = good.issuer_id
    await eventually(lambda: _first_of_each_shard(stack, ca))
    await eventually(lambda: _lists_nothing_yet(_cdp(good)))

    fine = _openssl_verify(tmp_path, good, await asyncio.to_thread(_get, _cdp(good)))
    assert fine.returncode == 0 and "OK" in fine.stdout, fine.stdout + fine.stderr

    async with stack.client("operator") as c:
        await c.revoke_as_operator(gone.serial, "keyCompromise", "tests")
    await eventually(lambda: _lists(_cdp(gone), gone.serial), timeout=10)
    refused = _openssl_verify(tmp_path, gone, await asyncio.to_thread(_get, _cdp(gone)))
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr

    # Another shard's CRL cannot stand in for the leaf's own: its issuingDistributionPoint names
    # another URL than the leaf's distribution point, so openssl finds it out of scope.
    wrong = _openssl_verify(tmp_path, gone, await asyncio.to_thread(_get, _cdp(good)))
    assert wrong.returncode != 0 and "different CRL scope" in wrong.stdout + wrong.stderr


async def _lists_nothing_yet(url: str) -> bool:
    try:
        await _fetch_crl(url)
    except urllib.error.HTTPError:
        return False
    return True


async def _two_in_different_shards(h: Harness) -> tuple[CertificateIssued, CertificateIssued]:
    first = await h.enroll("one.corp.internal")
    for i in range(20):
        other = await h.enroll(f"two{i}.corp.internal")
        if int(other.serial, 16) % CRL_SHARDS != int(first.serial, 16) % CRL_SHARDS:
            return first, other
    raise AssertionError("twenty certificates all in one shard")


def _naming_another_shard(original: Any) -> Any:
    """A leaf builder that puts the next shard's URL in the CRL distribution point."""

    def build(profile: Any, names: Any, public_key: Any, issuer: domain.CaIdentity, plan: Any, urls: Any) -> Any:
        builder = original(profile, names, public_key, issuer, plan, urls)
        shard = issuer.shard_of(plan.serial)
        assert shard is not None
        wrong = urls.crl(issuer.ca_id, (shard + 1) % CRL_SHARDS)
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(wrong)], None, None, None)
        builder._extensions = [
            x509.Extension(e.oid, e.critical, x509.CRLDistributionPoints([point]))
            if e.oid == ExtensionOID.CRL_DISTRIBUTION_POINTS
            else e
            for e in builder._extensions
        ]
        return builder

    return build


async def test_signing_refuses_to_release_a_leaf_naming_another_shards_crl(
    stack: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await stack.enroll("first.corp.internal")  # the templates are built and linted before the fault
    monkeypatch.setattr(domain, "leaf_builder", _naming_another_shard(domain.leaf_builder))
    key = generate_key("ec-p256")
    async with stack.client() as c:
        with pytest.raises(Rejected) as caught:
            csr = build_csr(key, ["wrong.corp.internal"]).decode()
            await c.enroll(csr, stack.token("wrong.corp.internal"), "tls-server")
    assert [r.code for r in caught.value.reasons] == ["template_deviation"]
    assert "cRLDistributionPoints does not name this certificate's CRL" in caught.value.reasons[0].message
    assert len(await stack.stream_messages(f"{stack.root}.cert.*.issued")) == 1


async def test_the_cli_writes_the_crl_of_a_certificates_shard(stack: Harness, tmp_path: Path) -> None:
    issued = await stack.enroll("cli.corp.internal")
    shard = int(issued.serial, 16) % CRL_SHARDS
    await eventually(lambda: _first_of_each_shard(stack, issued.issuer_id))
    await eventually(lambda: _lists_nothing_yet(_cdp(issued)))
    (tmp_path / "leaf.pem").write_text(issued.cert_pem)
    by_cert = await stack.cli("crl", "--cert", str(tmp_path / "leaf.pem"), "--out", str(tmp_path / "a.crl"), "--json")
    assert by_cert.returncode == 0, by_cert.stderr
    assert json.loads(by_cert.stdout)["shard"] == shard
    by_number = await stack.cli(
        "crl", "--issuer", issued.issuer_id, "--shard", str(shard), "--out", str(tmp_path / "b.crl")
    )
    assert by_number.returncode == 0, by_number.stderr
    assert (
        (tmp_path / "a.crl").read_bytes()
        == (tmp_path / "b.crl").read_bytes()
        == await asyncio.to_thread(_get, _cdp(issued))
    )


@pytest.fixture
async def unsharded(harness: Harness) -> Harness:
    """The services with an issuing CA created as before shards (no `crl_shards` on its CaCreated)."""
    harness.overrides["signing"] = {"crl_shards": 0}
    return await harness.serve()


async def test_a_ca_created_without_shards_keeps_its_one_crl_at_its_url(unsharded: Harness) -> None:
    issued = await unsharded.enroll("old.corp.internal")
    base = f"http://127.0.0.1:{unsharded.http_ports['validation']}"
    assert _cdp(issued) == f"{base}/crl/{issued.issuer_id}.crl"
    [created] = [
        json.loads(m.data) for m in await unsharded.stream_messages(f"{unsharded.root}.ca.{issued.issuer_id}.created")
    ]
    assert created["crl_shards"] is None
    async with unsharded.client("operator") as c:
        await c.revoke_as_operator(issued.serial, "superseded", "tests")
    await eventually(lambda: _lists(_cdp(issued), issued.serial), timeout=10)
    crl = await _fetch_crl(_cdp(issued))
    with pytest.raises(x509.ExtensionNotFound):
        crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert {e.shard for e in await _published(unsharded, issued.issuer_id)} == {None}
    async with unsharded.client() as c:
        assert (await c.crl(issued.issuer_id)).shard is None
