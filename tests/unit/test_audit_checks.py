"""Audit's consistency checks, each caught on a deliberately inconsistent log of otherwise valid events."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_audit_samples import JUNK_SUBJECT, ROOT, event, genesis, rows, signed

from pki_builders import NOW, issue_leaf, make_profile
from services.audit.checks import Checker, check_all
from services.signing import domain as signing
from shared.contract.profiles import Profile
from shared.pki.crypto import PrivateKey, spki_der
from shared.pki.holder import key_destroyed_attestation


def _e(kind: str, producer: str, **fields: Any) -> bytes:
    """A valid event of type `kind` whose body names `producer`, with `fields`."""
    return event(kind, producer=producer, **fields)


CA = _e("CaCreated", "signing", ca_id="ca1")
GENESIS = genesis()  # starts every log that carries operator commands (signed by alice, see `signed`)


def _issue(request: str, serial: str, issuer: str = "ca1", producer: str = "signing") -> bytes:
    return _e("CertificateIssued", producer, aggregate_id=request, serial=serial, issuer_id=issuer)


def _approve(request: str) -> bytes:
    return _e("EnrollmentApproved", "enrollment", aggregate_id=request)


def _check_all(*raws: bytes) -> Checker:
    return check_all(rows(*raws), ROOT)


def _checks(*raws: bytes) -> list[tuple[str, int]]:
    return [(f.check, f.stream_seq) for f in _check_all(*raws).findings]


def test_a_consistent_log_has_no_findings() -> None:
    revoked = _e("CertificateRevoked", "revocation", serial="a1", issuer_id="ca1")
    assert _checks(CA, _approve("r1"), _issue("r1", "a1"), revoked) == []


def test_a_message_that_is_no_event_is_a_finding_and_counts_for_nothing() -> None:
    checker = Checker(ROOT)
    checker.add(1, JUNK_SUBJECT, b"{not json")
    checker.add(2, JUNK_SUBJECT, b"x" * 300_000)
    checker.add(3, JUNK_SUBJECT, json.dumps({"event_type": "CertificateHeld", "aggregate_id": "junk"}).encode())
    assert [(f.check, f.stream_seq) for f in checker.findings] == [
        ("malformed", 1),
        ("oversize", 2),
        ("unknown_type", 3),
    ]
    assert checker.events == 3


def test_an_event_on_another_types_subject_is_a_forgery_that_counts_for_nothing() -> None:
    """A CA announced on a request's subject (which its publisher may use) does not make it an issuer."""
    forged = _e("CaCreated", "signing", ca_id="ca2", aggregate_id="ca2")
    checker = Checker(ROOT)
    for seq, (subject, raw) in enumerate(
        [(f"{ROOT}.cert.r9.requested", forged), *[(s, r) for _, s, r in rows(_approve("r1"))]], start=1
    ):
        checker.add(seq, subject, raw)
    checker.add(3, f"{ROOT}.cert.r1.issued", _issue("r1", "a1", issuer="ca2"))
    found = [(f.check, f.stream_seq) for f in checker.findings]
    assert found == [("subject_mismatch", 1), ("issuer", 3)]
    assert "pki.ca.ca2.created" in checker.findings[0].detail


def test_a_body_its_class_refuses_is_malformed_and_counts_for_nothing() -> None:
    huge = _e("CrlPublished", "signing", ca_id="ca1", crl_number=2**200)
    text = _e("CrlPublished", "signing", ca_id="ca1", crl_number="twelve")
    listy = _e("CaCreated", "signing", ca_id=["ca1"])
    assert _checks(huge, text, listy, _approve("r1"), _issue("r1", "a1")) == [
        ("malformed", 1),
        ("malformed", 2),
        ("malformed", 3),
        ("issuer", 5),
    ]


def test_an_event_whose_body_names_another_producer_than_its_publisher_is_found() -> None:
    assert _checks(CA, _approve("r1"), _issue("r1", "a1", producer="enrollment")) == [("producer", 3)]


def test_a_certificate_without_an_approval_is_found() -> None:
    assert _checks(CA, _issue("r1", "a1")) == [("approval", 2)]


def test_a_certificate_with_two_approvals_is_found() -> None:
    assert _checks(CA, _approve("r1"), _approve("r1"), _issue("r1", "a1")) == [("approval", 4)]


def test_an_approval_after_the_certificate_does_not_count() -> None:
    assert _checks(CA, _issue("r1", "a1"), _approve("r1")) == [("approval", 2)]


def test_a_certificate_from_an_unannounced_issuer_is_found() -> None:
    assert _checks(CA, _approve("r1"), _issue("r1", "a1", issuer="rogue")) == [("issuer", 3)]


def test_a_ca_announced_by_someone_else_does_not_count() -> None:
    fake = _e("CaCreated", "requester", ca_id="ca2")
    assert _checks(fake, _approve("r1"), _issue("r1", "a1", issuer="ca2")) == [("producer", 1), ("issuer", 3)]


def test_a_serial_issued_twice_by_one_issuer_is_found() -> None:
    log = [CA, _approve("r1"), _issue("r1", "a1"), _approve("r2"), _issue("r2", "a1")]
    assert _checks(*log) == [("serial", 5)]


def test_a_revocation_of_a_certificate_never_issued_is_found() -> None:
    assert _checks(CA, _e("CertificateRevoked", "revocation", serial="ff", issuer_id="ca1")) == [("revoked_unknown", 2)]


# --- a CA after compromise, retirement and key destruction -------------------------------------


def _crl_event(ca: str = "ca1", number: int = 1, **fields: Any) -> bytes:
    return _e("CrlPublished", "signing", aggregate_id=ca, ca_id=ca, crl_number=number, **fields)


def test_a_certificate_issued_after_its_ca_was_declared_compromised_is_found() -> None:
    compromised = signed("CaCompromised", ca_id="ca1", reason="key leaked", declared_by="alice")
    log = [GENESIS, CA, _approve("r1"), _issue("r1", "a1"), compromised, _approve("r2"), _issue("r2", "a2")]
    assert _checks(*log) == [("ca_closed", 7)]
    assert "declared compromised at 5" in _check_all(*log).findings[0].detail


def test_a_retired_ca_may_publish_a_final_crl_but_nothing_once_its_key_is_destroyed() -> None:
    retired = signed("CaRetired", ca_id="ca1", reason="rotated", retired_by="alice")
    destroyed = _e("CaKeyDestroyed", "signing", ca_id="ca1", spki_sha256="00" * 32)
    log = [GENESIS, CA, retired, _crl_event(number=9), destroyed, _crl_event(number=10), _approve("r1")]
    assert _checks(*log, _issue("r1", "a1")) == [("ca_closed", 6), ("ca_closed", 8)]


def test_a_certificate_approved_before_a_retirement_may_be_released_after_it_but_not_one_approved_after() -> None:
    retired = signed("CaRetired", ca_id="ca1", reason="rotated", retired_by="alice")
    log = [GENESIS, CA, _approve("r1"), retired, _issue("r1", "a1"), _approve("r2"), _issue("r2", "a2")]
    assert _checks(*log) == [("ca_closed", 7)]


def test_a_crl_signed_after_compromise_is_found_and_a_forged_compromise_counts_for_nothing() -> None:
    forged = signed("CaCompromised", ca_id="ca1", reason="x", declared_by="mallory", producer="requester")
    real = signed("CaCompromised", ca_id="ca1", reason="x", declared_by="alice")
    log = [GENESIS, CA, forged, _approve("r1"), _issue("r1", "a1"), real, _crl_event()]
    assert _checks(*log) == [("producer", 3), ("ca_closed", 7)]


# --- re-linting each certificate against the profile version its approval names ----------------


def _applied(profile: Profile) -> bytes:
    return signed("ProfileApplied", profile=profile.model_dump(mode="json"), digest=profile.digest())


def _issued_cert(request: str, cert: x509.Certificate, dns_names: list[str] | None = None) -> bytes:
    return _e(
        "CertificateIssued",
        "signing",
        aggregate_id=request,
        serial=f"{cert.serial_number:x}",
        issuer_id="ca1",
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        dns_names=dns_names if dns_names is not None else ["web.corp.internal"],
    )


def _approved_under(request: str, profile: Profile) -> bytes:
    return _e("EnrollmentApproved", "enrollment", aggregate_id=request, profile_digest=profile.digest())


def test_a_certificate_its_profile_allows_has_no_finding(issuing: signing.CaIdentity, issuing_key: PrivateKey) -> None:
    profile = make_profile()
    cert = issue_leaf(issuing, issuing_key, ["web.corp.internal"], validity_days=30, profile=profile)
    assert _checks(GENESIS, CA, _applied(profile), _approved_under("r1", profile), _issued_cert("r1", cert)) == []


def test_a_certificate_its_profile_does_not_allow_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    """Issued under a broad profile version, but its approval names a narrow one: the names, the
    lifetime and the usages are each reported, read from the certificate itself."""
    broad = make_profile(usage="both", dns_suffixes=["corp.internal", "evil.example"], max_validity_days=200)
    narrow = make_profile(dns_suffixes=["example.internal"], max_validity_days=30)
    cert = issue_leaf(issuing, issuing_key, ["web.evil.example"], validity_days=200, profile=broad)
    log = [GENESIS, CA, _applied(narrow), _approved_under("r1", narrow), _issued_cert("r1", cert, ["web.evil.example"])]
    findings = _check_all(*log).findings
    details = " | ".join(f.detail for f in findings)
    assert {(f.check, f.stream_seq) for f in findings} == {("profile", 5)}
    assert "web.evil.example" in details and "200 days" in details and "extended key usages" in details


def test_a_certificate_whose_event_lies_about_its_names_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    profile = make_profile()
    cert = issue_leaf(issuing, issuing_key, ["web.corp.internal"], validity_days=30, profile=profile)
    log = [GENESIS, CA, _applied(profile), _approved_under("r1", profile)]
    assert _checks(*log, _issued_cert("r1", cert, ["other.corp.internal"])) == [("profile", 5)]


def test_an_approval_under_a_profile_version_never_applied_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    profile = make_profile()
    cert = issue_leaf(issuing, issuing_key, ["web.corp.internal"], validity_days=30, profile=profile)
    findings = _check_all(CA, _approved_under("r1", profile), _issued_cert("r1", cert)).findings
    assert [(f.check, f.stream_seq) for f in findings] == [("profile", 3)]
    assert "never applied" in findings[0].detail


# --- every revoked certificate in its issuer's latest CRL --------------------------------------

GRACE = timedelta(seconds=60)


def _crl_log(
    issuing: signing.CaIdentity, der: bytes, revoked_at: datetime, this_update: datetime
) -> tuple[Checker, list[bytes]]:
    ca = _e(
        "CaCreated", "signing", ca_id="ca1", cert_pem=issuing.cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    revoke = _e("CertificateRevoked", "revocation", serial="a1", issuer_id="ca1", revoked_at=revoked_at.isoformat())
    crl = _crl_event(
        this_update=this_update.isoformat(),
        object_bucket="crls",
        object_name="ca1.crl",
        sha256=hashlib.sha256(der).hexdigest(),
    )
    log = [ca, _approve("r1"), _issue("r1", "a1"), _approve("r2"), _issue("r2", "b2"), revoke, crl]
    return _check_all(*log), log


def _signed_crl(issuing: signing.CaIdentity, key: PrivateKey, serials: list[int], at: datetime) -> bytes:
    entries = [signing.RevokedEntry(s, at, "keyCompromise") for s in serials]
    crl = signing.crl(issuing, key, 1, entries, at, at + timedelta(days=1))
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_crl_listing_every_revocation_has_no_finding(issuing: signing.CaIdentity, issuing_key: PrivateKey) -> None:
    der = _signed_crl(issuing, issuing_key, [0xA1], NOW)
    checker, _ = _crl_log(issuing, der, NOW - timedelta(minutes=5), NOW)
    assert checker.crl_findings({"ca1": der}, NOW + timedelta(hours=1), GRACE) == []


def test_a_revocation_missing_from_the_latest_crl_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    der = _signed_crl(issuing, issuing_key, [0xB2], NOW)  # lists the other certificate, not a1
    checker, _ = _crl_log(issuing, der, NOW - timedelta(minutes=5), NOW)
    found = checker.crl_findings({"ca1": der}, NOW + timedelta(hours=1), GRACE)
    assert [(f.check, f.stream_seq) for f in found] == [("crl", 6)]
    assert "not in the latest CRL #1 of ca1" in found[0].detail


def test_a_revocation_just_before_the_crl_is_not_judged_yet(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    der = _signed_crl(issuing, issuing_key, [], NOW)
    checker, _ = _crl_log(issuing, der, NOW - timedelta(seconds=1), NOW)
    assert checker.crl_findings({"ca1": der}, NOW + timedelta(hours=1), GRACE) == []


def test_a_crl_that_is_missing_altered_or_signed_by_another_key_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    good = _signed_crl(issuing, issuing_key, [0xA1], NOW)
    checker, _ = _crl_log(issuing, good, NOW - timedelta(minutes=5), NOW)
    later = NOW + timedelta(hours=1)
    assert "not in the object store" in checker.crl_findings({}, later, GRACE)[0].detail
    altered = good[:-1] + bytes([good[-1] ^ 1])
    assert "do not match the digest" in checker.crl_findings({"ca1": altered}, later, GRACE)[0].detail
    forged = _signed_crl(issuing, ec.generate_private_key(ec.SECP256R1()), [0xA1], NOW)
    checker, _ = _crl_log(issuing, forged, NOW - timedelta(minutes=5), NOW)
    assert "not signed by its issuer" in checker.crl_findings({"ca1": forged}, later, GRACE)[0].detail


def test_a_revocation_with_no_crl_after_it_is_found_once_the_grace_has_passed() -> None:
    revoke = _e("CertificateRevoked", "revocation", serial="a1", issuer_id="ca1", revoked_at=NOW.isoformat())
    checker = _check_all(CA, _approve("r1"), _issue("r1", "a1"), revoke)
    assert checker.crl_findings({}, NOW + timedelta(seconds=10), GRACE) == []
    found = checker.crl_findings({}, NOW + timedelta(minutes=5), GRACE)
    assert [(f.check, f.stream_seq) for f in found] == [("crl", 4)]
    assert "no CRL of ca1 was published since" in found[0].detail


def test_revocations_after_a_ca_compromise_need_not_be_in_its_crl() -> None:
    revoke = _e("CertificateRevoked", "revocation", serial="a1", issuer_id="ca1", revoked_at=NOW.isoformat())
    compromised = signed("CaCompromised", ca_id="ca1", reason="leak", declared_by="alice")
    checker = _check_all(GENESIS, CA, _approve("r1"), _issue("r1", "a1"), compromised, revoke)
    assert checker.crl_findings({}, NOW + timedelta(hours=1), GRACE) == []


def _sharded_log(
    issuing: signing.CaIdentity, crls: dict[int, bytes], revoked_at: datetime
) -> tuple[Checker, dict[str, bytes | None]]:
    """A CA with 4 CRL shards, a1 (shard 1) revoked, then the CRLs of the shards given."""
    pem = issuing.cert.public_bytes(serialization.Encoding.PEM).decode()
    ca = _e("CaCreated", "signing", ca_id="ca1", cert_pem=pem, crl_shards=4)
    revoke = _e("CertificateRevoked", "revocation", serial="a1", issuer_id="ca1", revoked_at=revoked_at.isoformat())
    events = [
        _crl_event(
            this_update=NOW.isoformat(),
            object_bucket="crls",
            object_name=f"ca1/{shard}/1.crl",
            sha256=hashlib.sha256(der).hexdigest(),
            shard=shard,
        )
        for shard, der in crls.items()
    ]
    checker = _check_all(ca, _approve("r1"), _issue("r1", "a1"), _approve("r2"), _issue("r2", "b2"), revoke, *events)
    return checker, {f"ca1/{shard}": der for shard, der in crls.items()}


def _shard_crl(issuing: signing.CaIdentity, key: PrivateKey, shard: int, serials: list[int]) -> bytes:
    entries = [signing.RevokedEntry(s, NOW, "keyCompromise") for s in serials]
    url = signing.Urls("http://pki.example.test").crl("ca1", shard)
    crl = signing.crl(issuing, key, 1, entries, NOW, NOW + timedelta(days=1), shard_url=url)
    return crl.public_bytes(serialization.Encoding.DER)


def test_a_revocation_is_checked_against_its_own_shards_crl(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    shards = {1: _shard_crl(issuing, issuing_key, 1, [0xA1]), 2: _shard_crl(issuing, issuing_key, 2, [])}
    checker, crls = _sharded_log(issuing, shards, NOW - timedelta(minutes=5))
    assert checker.crl_of("ca1", "a1") == ("ca1/1", 1)
    assert checker.crl_findings(crls, NOW + timedelta(hours=1), GRACE) == []


def test_a_revocation_missing_from_its_shards_crl_is_found_even_if_another_shard_lists_it(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    shards = {1: _shard_crl(issuing, issuing_key, 1, []), 2: _shard_crl(issuing, issuing_key, 2, [0xA1])}
    checker, crls = _sharded_log(issuing, shards, NOW - timedelta(minutes=5))
    found = checker.crl_findings(crls, NOW + timedelta(hours=1), GRACE)
    assert [(f.check, f.stream_seq) for f in found] == [("crl", 6)]
    assert "not in the latest CRL #1 of ca1 shard 1" in found[0].detail


def test_a_revocation_with_no_crl_of_its_shard_after_it_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    checker, crls = _sharded_log(issuing, {2: _shard_crl(issuing, issuing_key, 2, [0xA1])}, NOW)
    found = checker.crl_findings(crls, NOW + timedelta(hours=1), GRACE)
    assert "no CRL of ca1 shard 1 was published since" in found[0].detail


def test_another_shards_crl_published_as_this_shards_is_found(
    issuing: signing.CaIdentity, issuing_key: PrivateKey
) -> None:
    checker, crls = _sharded_log(issuing, {1: _shard_crl(issuing, issuing_key, 2, [0xA1])}, NOW - timedelta(minutes=5))
    found = checker.crl_findings(crls, NOW + timedelta(hours=1), GRACE)
    assert "issuingDistributionPoint does not name shard 1" in found[0].detail


# --- holders' key-destroyed attestations --------------------------------------------------------


def _attested(serial: str, key: PrivateKey, **changes: Any) -> bytes:
    data = json.loads(key_destroyed_attestation(serial, key, "agent-1", NOW).model_dump_json())
    return json.dumps({**data, **changes}).encode()


def _issued_for(request: str, serial: str, key: PrivateKey) -> bytes:
    spki = hashlib.sha256(spki_der(key.public_key())).hexdigest()
    return _e("CertificateIssued", "signing", aggregate_id=request, serial=serial, issuer_id="ca1", spki_sha256=spki)


def test_a_key_destroyed_attestation_signed_by_the_certificates_key_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert _checks(CA, _approve("r1"), _issued_for("r1", "a1", key), _attested("a1", key)) == []


def test_a_key_destroyed_attestation_for_another_key_or_serial_or_with_a_forged_proof_is_found() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    forged = json.loads(_attested("a1", other))["proof"]
    log = [
        CA,
        _approve("r1"),
        _issued_for("r1", "a1", key),
        _attested("a1", other),  # another key than the certificate's
        _attested("b2", key),  # a serial never issued
        _attested("a1", key, proof=forged),  # the right key named, another key's signature
        _attested("a1", key, destroyed_by="agent-1", destroyed_at="2020-01-01T00:00:00Z"),  # signed another time
    ]
    assert _checks(*log) == [("key_destroyed", 4), ("key_destroyed", 5), ("key_destroyed", 6), ("key_destroyed", 7)]
