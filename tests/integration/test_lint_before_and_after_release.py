"""Lint before release and after issuance, through the real services.

The faults are injected by replacing signing's certificate builder in this process (the services
run in the test's event loop): a builder that drops the authority key identifier makes templates
fail pkilint, and one that adds an extension makes certificates deviate from their template.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID

from harness import Harness, eventually
from services.signing import domain
from shared.client.sdk import Rejected
from shared.contract.events import CertificateIssued
from shared.contract.profiles import Profile
from shared.pki.crypto import build_csr, generate_key


def _without_aki(original: Any) -> Any:
    def build(*args: Any, **kwargs: Any) -> x509.CertificateBuilder:
        builder = original(*args, **kwargs)
        builder._extensions = [e for e in builder._extensions if e.oid != ExtensionOID.AUTHORITY_KEY_IDENTIFIER]
        return builder

    return build


def _with_extra_extension(original: Any) -> Any:
    def build(*args: Any, **kwargs: Any) -> x509.CertificateBuilder:
        return original(*args, **kwargs).add_extension(x509.OCSPNoCheck(), critical=False)

    return build


async def _rejection(h: Harness, name: str, profile: str) -> list[str]:
    key = generate_key("ec-p256")
    async with h.client() as c:
        with pytest.raises(Rejected) as caught:
            await c.enroll(build_csr(key, [name]).decode(), h.token(name, profile=profile), profile)
    return [r.code for r in caught.value.reasons]


async def test_a_profile_whose_template_fails_lint_cannot_be_used(
    stack: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain, "leaf_builder", _without_aki(domain.leaf_builder))
    broken = Profile(name="broken", usage="server", dns_suffixes=["corp.internal"], key_types=["ec-p256"])
    verdict = (await stack.apply_profiles(broken))["broken"]
    assert not verdict.usable
    assert {f.code for f in verdict.findings} == {"pkix.authority_key_identifier_extension_absent"}
    codes = await _rejection(stack, "x.corp.internal", "broken")
    assert codes == ["profile_unusable"]
    async with stack.client("operator") as c:
        listed = {p.name: p for p in (await c.profiles()).profiles}
    assert listed["broken"].lint_failed
    assert not listed["tls-server"].lint_failed  # linted before the fault, still usable


async def test_signing_refuses_to_release_a_certificate_that_deviates_from_its_template(
    stack: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain, "leaf_builder", _with_extra_extension(domain.leaf_builder))
    codes = await _rejection(stack, "odd.corp.internal", "tls-server")
    assert codes == ["template_deviation"]
    assert await stack.stream_messages(f"{stack.root}.cert.*.issued") == []
    refused = await stack.stream_messages(f"{stack.root}.cert.*.refused")  # signing's refusal, not enrollment's
    assert [json.loads(m.data)["event_type"] for m in refused] == ["IssuanceRefused"]
    alerts = await eventually(lambda: stack.stream_messages(f"{stack.root}.finding.*.lint_failed"))
    alert = json.loads(alerts[0].data)
    assert alert["stage"] == "pre-release"
    assert alert["profile"] == "tls-server"
    assert "extensions differ" in alert["findings"][0]["message"]
    monkeypatch.undo()
    # The fault gone, the same profile issues again.
    assert (await stack.enroll("ok.corp.internal")).dns_names == ["ok.corp.internal"]


async def test_a_full_lint_profile_lints_every_certificate_before_release(stack: Harness) -> None:
    strict = Profile(name="strict", usage="both", dns_suffixes=["corp.internal"], lint="full", key_types=["ec-p384"])
    assert (await stack.apply_profiles(strict))["strict"].usable
    issued = await stack.enroll("strict.corp.internal", key_type="ec-p384", profile="strict")
    assert issued.profile == "strict"


def _nonconforming_issued(h: Harness, request_id: str) -> tuple[CertificateIssued, str]:
    """A certificate without an authority key identifier, as if signing had issued it."""
    key = generate_key("ec-p256")
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bad.corp.internal")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bad.corp.internal")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    serial = format(cert.serial_number, "x")
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    event = CertificateIssued(
        aggregate_id=request_id,
        occurred_at=now,
        correlation_id=request_id,
        producer="signing",
        serial=serial,
        issuer_id="forged",
        profile="tls-server",
        cert_pem=pem,
        chain_pem=pem,
        not_before=now,
        not_after=now + timedelta(days=1),
        dns_names=["bad.corp.internal"],
        spki_sha256="0" * 64,
        fingerprint_sha256="0" * 64,
    )
    return event, serial


async def test_after_issuance_lint_raises_a_finding_for_a_nonconforming_certificate(stack: Harness) -> None:
    """Audit lints every issued certificate after issuance; one that fails is audit's own finding
    (`AuditFindingRaised`, check `pkilint`), raised for the issued event's position on the log."""
    good = await stack.enroll("good.corp.internal")
    event, serial = _nonconforming_issued(stack, str(uuid.uuid4()))
    stack.lint_exempt.add(serial)  # deliberately non-conforming
    payload = event.model_dump_json().encode()
    await stack.publish_raw(event.subject(stack.root), payload)  # as signing, the only publisher of issued
    pool = await stack.db()
    seq = await eventually(lambda: pool.fetchval("SELECT stream_seq FROM audit.archive WHERE raw = $1", payload))
    raised = await eventually(lambda: stack.stream_messages(f"{stack.root}.finding.pkilint-{seq}.raised"))
    alert = json.loads(raised[0].data)
    assert (alert["event_type"], alert["check"], alert["stream_seq"]) == ("AuditFindingRaised", "pkilint", seq)
    assert alert["serial"] == serial != good.serial
    assert alert["producer"] == "audit"
    assert "pkix.authority_key_identifier_extension_absent" in {f["code"] for f in alert["findings"]}
    # The good certificate, linted before the bad one (audit lints in log order), raised nothing.
    every = [json.loads(m.data) for m in await stack.stream_messages(f"{stack.root}.finding.*.raised")]
    assert [e["serial"] for e in every if e["check"] == "pkilint"] == [serial]
    assert await stack.stream_messages(f"{stack.root}.finding.*.lint_failed") == []  # signing's alerts, not audit's

    async def listed() -> Any:
        result = await stack.cli("audit", "findings", "--json")
        found = [e["event"] for e in json.loads(result.stdout) if e["event_type"] == "AuditFindingRaised"]
        return result if any(f["check"] == "pkilint" and f["serial"] == serial for f in found) else None

    result = await eventually(listed)
    assert result.returncode == 1  # an error finding is an alarm

    # Its coverage counts it: the failing one among what was linted, exit 1 (an alarm).
    async def covered() -> Any:
        result = await stack.cli("audit", "lint", "--json")
        return result if json.loads(result.stdout)["failed"] == 1 else None

    result = await eventually(covered)
    assert result.returncode == 1
    coverage = json.loads(result.stdout)
    assert coverage["issued"] == coverage["clean"] + coverage["failed"] + coverage["passed_over"] + coverage["waiting"]
    assert coverage["passed_over"] == 0 and coverage["by_profile"]["tls-server"]["failed"] == 1
