"""Audit's consistency checks, each caught on a deliberately inconsistent log."""

from __future__ import annotations

import json
from typing import Any

from services.audit.checks import check_all


def _e(kind: str, producer: str, **fields: Any) -> bytes:
    return json.dumps({"event_type": kind, "producer": producer, **fields}).encode()


CA = _e("CaCreated", "signing", ca_id="ca1")


def _issue(request: str, serial: str, issuer: str = "ca1", producer: str = "signing") -> bytes:
    return _e("CertificateIssued", producer, aggregate_id=request, serial=serial, issuer_id=issuer)


def _approve(request: str) -> bytes:
    return _e("EnrollmentApproved", "enrollment", aggregate_id=request)


def _checks(*raws: bytes) -> list[tuple[str, int]]:
    return [(f.check, f.stream_seq) for f in check_all(enumerate(raws, start=1)).findings]


def test_a_consistent_log_has_no_findings() -> None:
    revoked = _e("CertificateRevoked", "revocation", serial="a1", issuer_id="ca1")
    assert _checks(CA, _approve("r1"), _issue("r1", "a1"), revoked, b"{not json") == []


def test_an_event_from_the_wrong_producer_is_found() -> None:
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
    assert _checks(CA, _e("CertificateRevoked", "revocation", serial="zz", issuer_id="ca1")) == [("revoked_unknown", 2)]
