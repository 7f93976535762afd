"""Audit's pkilint of every issued certificate, after issuance: a certificate that fails it is an
`AuditFindingRaised` with check `pkilint` (aggregate id `pkilint-<the issued event's position>`),
raised once, listed by `certbus audit findings`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from harness import Harness, eventually
from shared.crypto import generate_key
from shared.events import AuditFindingRaised, CertificateIssued


def _without_aki(request_id: str) -> CertificateIssued:
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
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return CertificateIssued(
        aggregate_id=request_id,
        occurred_at=now,
        correlation_id=request_id,
        producer="signing",
        serial=format(cert.serial_number, "x"),
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


async def test_an_issued_certificate_that_fails_pkilint_raises_one_audit_finding(stack: Harness) -> None:
    good = await stack.enroll("good.corp.internal")
    bad = _without_aki(str(uuid.uuid4()))
    stack.lint_exempt.add(bad.serial)  # deliberately non-conforming
    payload = bad.model_dump_json().encode()
    await stack.publish_raw(bad.subject(stack.root), payload)
    pool = await stack.db()
    seq = await eventually(lambda: pool.fetchval("SELECT stream_seq FROM audit.archive WHERE raw = $1", payload))

    raised = await eventually(lambda: stack.stream_messages(f"{stack.root}.finding.pkilint-{seq}.raised"))
    finding = AuditFindingRaised.model_validate_json(raised[0].data)
    assert (finding.check, finding.stream_seq, finding.serial) == ("pkilint", seq, bad.serial)
    assert finding.serial != good.serial and finding.causation_id == str(bad.event_id)
    assert "pkix.authority_key_identifier_extension_absent" in {f.code for f in finding.findings}
    assert "pkix.authority_key_identifier_extension_absent" in finding.detail
    assert await stack.stream_messages(f"{stack.root}.finding.*.lint_failed") == []  # signing's, not audit's

    result = await stack.cli("audit", "findings", "--json")
    assert result.returncode == 1, result.stderr  # an error finding is an alarm
    listed = [e["event"] for e in json.loads(result.stdout) if e["event_type"] == "AuditFindingRaised"]
    # The scheduled checks add their own findings about this forgery (no approval, unknown issuer).
    assert [(e["serial"], e["stream_seq"]) for e in listed if e["check"] == "pkilint"] == [(bad.serial, seq)]
    table = await stack.cli("audit", "findings")
    assert table.returncode == 1 and "pkilint" in table.stdout, table.stdout + table.stderr
    every = [json.loads(m.data) for m in await stack.stream_messages(f"{stack.root}.finding.*.raised")]
    assert [e["serial"] for e in every if e["check"] == "pkilint"] == [bad.serial]  # the good one: none
