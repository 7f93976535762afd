"""Audit and renewal: a renewal's events are indexed under the serial it renews (without taking that
certificate's id), their actors and history details, and the `renewal` consistency check."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from test_audit_samples import ROOT, event, genesis, rows, signed

from services.audit.checks import check_all
from services.audit.domain import actor, describe
from shared.client.cli.main import history_detail
from shared.pki.crypto import spki_sha256
from shared.pki.holder import key_destroyed_attestation

OLD, NEW = "a1", "b2"


def _raw(kind: str, producer: str, **fields: Any) -> bytes:
    """A valid event of type `kind` whose body names `producer`, with `fields`."""
    return event(kind, producer=producer, **fields)


# --- what describe indexes ----------------------------------------------------------------------


def test_a_renewal_request_is_indexed_under_the_serial_it_renews_without_a_cert_id() -> None:
    raw = _raw("RenewalRequested", "requester", aggregate_id="req-2", renews_serial="00a1")
    described = describe("pki.cert.req-2.renewal_requested", raw, root=ROOT)
    assert described.serial is None
    assert described.related_serials == (OLD,)
    assert described.cert_id == "req-2"  # the NEW certificate's id: only ever stored with its own serial


def test_a_renewals_certificate_is_indexed_under_its_own_serial_and_the_one_it_supersedes() -> None:
    raw = _raw("CertificateIssued", "signing", aggregate_id="req-2", serial=NEW, supersedes=OLD)
    described = describe("pki.cert.req-2.issued", raw, root=ROOT)
    assert (described.serial, described.cert_id, described.related_serials) == (NEW, "req-2", (OLD,))


def test_a_renewals_approval_is_indexed_under_the_serial_it_supersedes() -> None:
    raw = _raw("EnrollmentApproved", "enrollment", aggregate_id="req-2", supersedes=OLD)
    assert describe("pki.cert.req-2.approved", raw, root=ROOT).related_serials == (OLD,)


def test_a_key_destruction_is_indexed_under_its_serial_without_a_cert_id() -> None:
    raw = _raw("KeyDestroyed", "requester", aggregate_id="f" * 64, serial=OLD, destroyed_by="agent-1")
    described = describe(f"pki.key.{'f' * 64}.destroyed", raw, root=ROOT)
    assert (described.serial, described.cert_id, described.related_serials) == (OLD, None, ())


def test_an_ordinary_certificate_names_no_other_serial() -> None:
    raw = _raw("CertificateIssued", "signing", aggregate_id="req-1", serial=OLD, supersedes=None)
    assert describe("pki.cert.req-1.issued", raw, root=ROOT).related_serials == ()


def test_a_non_string_renewal_link_is_ignored() -> None:
    raw = _raw("RenewalRequested", "requester", aggregate_id="req-2", renews_serial=161, supersedes=["a1"])
    described = describe("pki.cert.req-2.renewal_requested", raw, root=ROOT)
    assert described.related_serials == ()
    assert described.problem is not None and described.problem.check == "malformed"


def test_a_renewal_link_that_is_no_serial_is_not_indexed() -> None:
    for hostile in ("a1\x00", "zz", "f" * 65, "a" * 100_000):
        raw = _raw("RenewalRequested", "requester", aggregate_id="req-2", renews_serial=hostile)
        assert describe("pki.cert.req-2.renewal_requested", raw, root=ROOT).related_serials == ()


# --- who acted ------------------------------------------------------------------------------------


def test_the_actor_of_a_key_destruction_is_the_holder_that_destroyed_it() -> None:
    assert actor({"producer": "requester", "destroyed_by": "agent-web-1", "serial": OLD}) == "agent-web-1"


def test_the_actor_of_a_destruction_order_is_its_operator() -> None:
    assert actor({"producer": "operator", "operator": "carol", "serial": OLD}) == "carol"


def test_the_actor_of_a_destroyed_certificate_is_the_operator_who_ordered_it() -> None:
    assert actor({"producer": "revocation", "ordered_by": "carol", "serial": OLD}) == "carol"


def test_the_actor_of_a_renewal_request_is_its_requester() -> None:
    assert actor({"producer": "requester", "requester": "agent-web-1", "renews_serial": OLD}) == "agent-web-1"


# --- history details ------------------------------------------------------------------------------


def test_history_detail_names_the_renewal_links() -> None:
    assert "renews a1" in history_detail({"event_type": "RenewalRequested", "renews_serial": OLD})
    assert "renewal of a1" in history_detail({"event_type": "CertificateIssued", "serial": NEW, "supersedes": OLD})
    superseded = history_detail({"event_type": "CertificateSuperseded", "serial": OLD, "superseded_by": NEW})
    assert "superseded by b2" in superseded
    assert "cause schedule" in history_detail({"event_type": "CertificateRenewalDue", "cause": "schedule"})


def test_history_detail_of_a_destroyed_key_and_certificate() -> None:
    key = history_detail({"event_type": "KeyDestroyed", "serial": OLD, "spki_sha256": "ab" * 32})
    assert "key abababababababab" in key and "serial a1" in key
    cert = history_detail(
        {"event_type": "CertificateDestroyed", "serial": OLD, "fingerprint_sha256": "cd" * 32, "reason": "retired"}
    )
    assert "fingerprint cdcdcdcdcdcdcdcd" in cert and "purged" in cert and "reason retired" in cert


# --- the renewal check ----------------------------------------------------------------------------

CA = _raw("CaCreated", "signing", ca_id="ca1")


def _approve(request: str, supersedes: str | None = None) -> bytes:
    return _raw("EnrollmentApproved", "enrollment", aggregate_id=request, supersedes=supersedes)


def _issue(request: str, serial: str, supersedes: str | None = None) -> bytes:
    return _raw(
        "CertificateIssued", "signing", aggregate_id=request, serial=serial, issuer_id="ca1", supersedes=supersedes
    )


def _findings(*raws: bytes) -> list[tuple[str, int]]:
    return [(f.check, f.stream_seq) for f in check_all(rows(*raws), ROOT).findings]


ORIGINAL = [CA, _approve("r1"), _issue("r1", OLD)]


def test_a_consistent_renewal_chain_has_no_findings() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    attestation = key_destroyed_attestation(OLD, key, "agent-1").model_dump_json().encode()
    chain = [
        genesis(),
        CA,
        _approve("r1"),
        _raw(
            "CertificateIssued",
            "signing",
            aggregate_id="r1",
            serial=OLD,
            issuer_id="ca1",
            spki_sha256=spki_sha256(key.public_key()),
        ),
        _raw("CertificateRenewalDue", "enrollment", aggregate_id="r1", serial=OLD, issuer_id="ca1", cause="schedule"),
        _raw("RenewalRequested", "requester", aggregate_id="r2", renews_serial=OLD),
        _approve("r2", OLD),
        _issue("r2", NEW, OLD),
        _raw("CertificateSuperseded", "enrollment", aggregate_id="r1", serial=OLD, superseded_by=NEW),
        attestation,
        signed("DestructionOrdered", aggregate_id="d1", serial=NEW, operator="carol"),
        _raw("CertificateRevoked", "revocation", aggregate_id="r2", serial=NEW, issuer_id="ca1"),
        _raw("CertificateDestroyed", "revocation", aggregate_id="r2", serial=NEW, issuer_id="ca1"),
    ]
    assert _findings(*chain) == []


def test_a_renewal_whose_approval_names_no_superseded_certificate_is_found() -> None:
    assert _findings(*ORIGINAL, _approve("r2"), _issue("r2", NEW, OLD)) == [("renewal", 5)]


def test_a_certificate_that_drops_the_superseded_serial_its_approval_named_is_found() -> None:
    assert _findings(*ORIGINAL, _approve("r2", OLD), _issue("r2", NEW)) == [("renewal", 5)]


def test_a_renewal_that_supersedes_another_serial_than_approved_is_found() -> None:
    log = [*ORIGINAL, _approve("r3"), _issue("r3", "c3"), _approve("r2", OLD), _issue("r2", NEW, "c3")]
    found = check_all(rows(*log), ROOT).findings
    assert [(f.check, f.stream_seq) for f in found] == [("renewal", 7)]
    assert "supersedes c3" in found[0].detail and "approval supersedes a1" in found[0].detail


def test_a_renewal_of_a_serial_never_issued_is_found() -> None:
    assert _findings(CA, _approve("r2", "dead"), _issue("r2", NEW, "dead")) == [("renewal", 3)]


def test_a_renewal_of_a_destroyed_certificate_is_found() -> None:
    destroyed = _raw("CertificateDestroyed", "revocation", aggregate_id="r1", serial=OLD, issuer_id="ca1")
    found = check_all(rows(*ORIGINAL, destroyed, _approve("r2", OLD), _issue("r2", NEW, OLD)), ROOT)
    assert [(f.check, f.stream_seq) for f in found.findings] == [("renewal", 6)]
    assert "destroyed at 4" in found.findings[0].detail


def test_a_forged_destruction_does_not_make_a_renewal_suspect() -> None:
    forged = _raw("CertificateDestroyed", "requester", aggregate_id="r1", serial=OLD, issuer_id="ca1")
    assert _findings(*ORIGINAL, forged, _approve("r2", OLD), _issue("r2", NEW, OLD)) == [("producer", 4)]


def test_the_new_lifecycle_events_from_the_wrong_producer_are_found() -> None:
    log = [
        _raw("KeyDestroyed", "signing", serial=OLD),
        _raw("CertificateDestroyed", "operator", serial=OLD),
        _raw("DestructionOrdered", "requester", serial=OLD),
        _raw("CertificateSuperseded", "signing", serial=OLD),
        _raw("RenewalRequested", "signing", renews_serial=OLD),
    ]
    assert _findings(*log) == [("producer", n) for n in range(1, 6)]
