"""CA compromise end to end, and subscribers that react to revocations.

`certbus ca compromise` declares an issuing CA compromised: signing stops using it, revokes it in
the root's CRL and creates a replacement; revocation revokes everything it issued; enrollment, reading
those revocations, tells each holder to renew; relying parties (openssl with the CRLs, validation)
see the certificates revoked.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import CRL_SHARDS, Harness, eventually
from shared.contract.events import CertificateRenewalDue, CertificateRevoked, utcnow
from signals import subscribed


def _crl(h: Harness, ca_id: str, serial: str | None = None) -> x509.CertificateRevocationList:
    """A root's CRL, or (given a leaf's serial) the CRL of the issuing CA's shard that lists it."""
    path = f"{ca_id}.crl" if serial is None else f"{ca_id}/{int(serial, 16) % CRL_SHARDS}.crl"
    url = f"http://127.0.0.1:{h.http_ports['validation']}/crl/{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return x509.load_der_x509_crl(response.read())


async def test_a_compromised_issuing_ca_is_replaced_and_everything_it_issued_is_revoked(
    stack: Harness, tmp_path: Path
) -> None:
    issued = [await stack.enroll(f"svc{i}.corp.internal") for i in range(3)]
    old = issued[0].issuer_id
    chain = issued[0].chain_pem
    root_pem = chain[chain.rindex("-----BEGIN CERTIFICATE-----") :]
    issuing_cert = x509.load_pem_x509_certificate(chain.encode())
    root_id = (await stack.stream_messages(f"{stack.root}.ca.*.created"))[0]
    root_id = json.loads(root_id.data)["ca_id"]

    # The CLI acts as the operator "operator" and signs the declaration with its registered key.
    result = await stack.cli("ca", "compromise", old, "--reason", "HSM backup copied")
    assert result.returncode == 0, result.stderr

    # Revocation: every certificate of the CA revoked (cACompromise, recorded as the operator who
    # signed the declaration); enrollment: a renewal-due event per certificate, so that agents
    # re-enroll with a new key.
    async def all_revoked() -> list[CertificateRevoked] | None:
        found = [
            CertificateRevoked.model_validate_json(m.data)
            for m in await stack.stream_messages(f"{stack.root}.cert.*.revoked")
        ]
        return found if len(found) == len(issued) else None

    revoked = await eventually(all_revoked, timeout=20)
    assert {r.serial for r in revoked} == {i.serial for i in issued}
    assert {(r.reason, r.requested_by, r.authorised_by) for r in revoked} == {
        ("cACompromise", "operator", "ca_compromise")
    }

    async def all_due() -> list[CertificateRenewalDue] | None:
        found = [
            CertificateRenewalDue.model_validate_json(m.data)
            for m in await stack.stream_messages(f"{stack.root}.cert.*.renewal_due")
        ]
        return found if len(found) >= len(issued) else None

    due = await eventually(all_due, timeout=20)
    assert sorted(d.serial for d in due) == sorted(i.serial for i in issued)  # one each, none twice
    assert {(d.cause, d.rekey, d.producer) for d in due} == {("ca_compromise", True, "enrollment")}
    async with stack.client() as c:
        for cert in issued:
            status = await c.status(cert.serial)
            assert (status.status, status.reason) == ("revoked", "cACompromise")
            verdict = await c.validate(cert.cert_pem)
            assert verdict.status == "revoked"

    # Signing: a replacement issuing CA under the same root, and the old one in the root's CRL.
    async def replacement() -> dict | None:  # type: ignore[type-arg]
        created = [json.loads(m.data) for m in await stack.stream_messages(f"{stack.root}.ca.*.created")]
        fresh = [c for c in created if c["role"] == "issuing" and c["ca_id"] != old]
        return fresh[0] if fresh else None

    new = await eventually(replacement)
    assert new["parent_id"] == root_id

    def root_crl_lists_old() -> x509.CertificateRevocationList | None:
        crl = _crl(stack, root_id)
        return crl if crl.get_revoked_certificate_by_serial_number(issuing_cert.serial_number) else None

    root_crl = await eventually(lambda: asyncio.to_thread(root_crl_lists_old))
    entry = root_crl.get_revoked_certificate_by_serial_number(issuing_cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.ca_compromise

    # openssl, checking the whole chain's CRLs, refuses a leaf of the compromised CA.
    (tmp_path / "root.pem").write_text(root_pem)
    (tmp_path / "untrusted.pem").write_text(issuing_cert.public_bytes(serialization.Encoding.PEM).decode())
    (tmp_path / "leaf.pem").write_text(issued[0].cert_pem)
    (tmp_path / "root.crl").write_bytes(root_crl.public_bytes(serialization.Encoding.PEM))
    old_crl = await asyncio.to_thread(_crl, stack, old, issued[0].serial)
    (tmp_path / "issuing.crl").write_bytes(old_crl.public_bytes(serialization.Encoding.PEM))
    files = {name: str(tmp_path / name) for name in ("root.pem", "untrusted.pem", "root.crl", "issuing.crl")}
    checked = subprocess.run(
        [
            *("openssl", "verify", "-crl_check_all", "-CAfile", files["root.pem"]),
            *("-untrusted", files["untrusted.pem"], "-CRLfile", files["root.crl"], "-CRLfile", files["issuing.crl"]),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr

    # New certificates come from the replacement; the audit finds nothing issued by the old CA after.
    fresh = await stack.enroll("after.corp.internal")
    assert fresh.issuer_id == new["ca_id"]
    result = await stack.cli("audit", "check", "--json")
    findings = [f for f in json.loads(result.stdout)["findings"] if f["check"] in ("ca_closed", "crl", "issuer")]
    assert findings == []


async def test_a_subscriber_sees_revocations_as_they_happen_and_can_replay_them(
    stack: Harness,
) -> None:
    """A requester hears revocations live (republished from the log) and replays earlier ones from
    audit's archive; the revocations are an operator's orders."""
    first, second = await stack.enroll("a.corp.internal"), await stack.enroll("b.corp.internal")
    started = utcnow() - timedelta(seconds=1)
    async with stack.client("operator") as c:
        await c.revoke_as_operator(first.serial, "superseded", "operator")

    async def next_revocation(since: bool) -> CertificateRevoked:
        async with stack.client() as c:
            async for revoked in c.revocations(since=started if since else None):
                return revoked
        raise AssertionError("the iterator ended")

    live = asyncio.create_task(next_revocation(since=False))
    await subscribed(stack, "tests", CertificateRevoked.filter(stack.root))  # before the next revocation
    async with stack.client("operator") as c:
        await c.revoke_as_operator(second.serial, "keyCompromise", "operator")
    assert (await asyncio.wait_for(live, timeout=10)).serial == second.serial
    replayed = await asyncio.wait_for(next_revocation(since=True), timeout=10)
    assert replayed.serial == first.serial  # from the log: the earlier one comes first


async def test_an_invalidity_date_reaches_the_crl_entry_and_a_future_one_is_refused(stack: Harness) -> None:
    """`certbus revoke --invalid-since`: the date the key may have been compromised is on the
    revocation event and in the certificate's CRL entry (RFC 5280 invalidityDate)."""
    issued = await stack.enroll("leaked.corp.internal")
    future = await stack.cli(
        "revoke", issued.serial, "--reason", "keyCompromise", "--as-operator", "--invalid-since", "2999-01-01"
    )
    assert future.returncode == 1 and "invalidity_date_invalid" in future.stdout + future.stderr
    result = await stack.cli(
        "revoke",
        issued.serial,
        "--reason",
        "keyCompromise",
        "--as-operator",
        "--invalid-since",
        "2026-01-02T03:04:05+00:00",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["invalidity_date"].startswith("2026-01-02T03:04:05")

    def listed() -> x509.RevokedCertificate | None:
        return _crl(stack, issued.issuer_id, issued.serial).get_revoked_certificate_by_serial_number(
            int(issued.serial, 16)
        )

    entry = await eventually(lambda: asyncio.to_thread(listed))
    since = entry.extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc
    assert since.isoformat() == "2026-01-02T03:04:05+00:00"
