"""Audit's `operator_signature` check: an operator command counts only with enough valid signatures by
the operators registered on the log before it, judged as every consumer judges it."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_samples import ALICE, AT, ROOT, event, genesis, rows, sample, signed

from services.audit.checks import Checker, check_all
from shared.contract.events import OperatorCommand, operator_message
from shared.pki.crypto import sign_message
from shared.trust.operators import registration, sign

BOB = Ed25519PrivateKey.generate()
MALLORY = Ed25519PrivateKey.generate()

GENESIS = genesis()
CA = event("CaCreated", ca_id="ca1")


def _register(name: str, key: Ed25519PrivateKey, *cosigners: tuple[str, Ed25519PrivateKey]) -> bytes:
    """`name`'s registration of `key`, signed by that key and then by each of `cosigners`."""
    command: OperatorCommand = registration(name, key, "alice", AT)
    for operator, cosigner in cosigners:
        command = sign(command, operator, cosigner)
    return command.model_dump_json().encode()


BOB_REGISTERED = _register("bob", BOB, ("alice", ALICE))


def _compromised(*by: tuple[str, Ed25519PrivateKey]) -> bytes:
    return signed("CaCompromised", *by, ca_id="ca1", reason="key leaked", declared_by="alice")


UNSIGNED_COMPROMISE = event("CaCompromised", ca_id="ca1", reason="key leaked", declared_by="alice", signatures=[])


def _issued_after(request: str = "r9", serial: str = "f9") -> list[bytes]:
    """A certificate approved and issued by ca1: a `ca_closed` finding if ca1 was closed before it."""
    return [
        event("EnrollmentApproved", aggregate_id=request),
        event("CertificateIssued", aggregate_id=request, serial=serial, issuer_id="ca1"),
    ]


def _check_all(*raws: bytes) -> Checker:
    return check_all(rows(*raws), ROOT)


def _checks(*raws: bytes) -> list[tuple[str, int]]:
    return [(f.check, f.stream_seq) for f in _check_all(*raws).findings]


def test_a_genesis_then_a_properly_signed_command_has_no_finding() -> None:
    assert _checks(GENESIS, CA, _compromised()) == []


def test_a_properly_signed_compromise_closes_its_ca() -> None:
    assert _checks(GENESIS, CA, _compromised(), *_issued_after()) == [("ca_closed", 5)]


def test_an_unsigned_command_is_a_finding_and_counts_for_nothing() -> None:
    """An unsigned compromise does not close the CA: the certificate after it is no `ca_closed` finding."""
    found = _check_all(GENESIS, CA, UNSIGNED_COMPROMISE, *_issued_after()).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 3)]
    assert "CaCompromised ca1: CaCompromised needs 1 distinct operators' signatures, it has 0" in found[0].detail


def test_a_command_with_a_signature_by_an_unknown_key_is_a_finding() -> None:
    found = _check_all(GENESIS, CA, _compromised(("mallory", MALLORY)), *_issued_after()).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 3)]
    assert "'mallory' is not a registered operator" in found[0].detail


def test_a_command_signed_in_a_registered_operators_name_by_another_key_is_a_finding() -> None:
    found = _check_all(GENESIS, CA, _compromised(("alice", MALLORY))).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 3)]
    assert "'alice''s signature does not verify" in found[0].detail


def test_a_command_altered_after_it_was_signed_is_a_finding() -> None:
    altered = json.loads(_compromised())
    altered["reason"] = "something else"
    assert _checks(GENESIS, CA, json.dumps(altered).encode(), *_issued_after()) == [("operator_signature", 3)]


def test_an_unsigned_profile_does_not_become_a_profile_version() -> None:
    """A certificate approved under the version an unsigned ProfileApplied carries was approved under
    a version never applied."""
    data = json.loads(signed("ProfileApplied"))
    data["signatures"] = []
    approved = event("EnrollmentApproved", aggregate_id="r9", profile_digest=data["digest"])
    issued = event("CertificateIssued", aggregate_id="r9", serial="f9", issuer_id="ca1")
    found = _check_all(GENESIS, CA, json.dumps(data).encode(), approved, issued).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 3), ("profile", 5)]
    assert "never applied" in found[1].detail


def test_a_command_before_any_operator_is_registered_is_a_finding() -> None:
    assert _checks(CA, _compromised(), *_issued_after()) == [("operator_signature", 2)]


def test_a_second_registration_signed_only_by_its_own_key_is_a_finding_and_registers_nobody() -> None:
    self_signed = _register("bob", BOB)
    found = _check_all(GENESIS, self_signed, CA, _compromised(("bob", BOB))).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 2), ("operator_signature", 4)]
    assert "OperatorRegistered needs 1 distinct operators' signatures, it has 0" in found[0].detail


def test_a_second_registration_cosigned_by_the_quorum_registers_its_key() -> None:
    assert _checks(GENESIS, BOB_REGISTERED, CA, _compromised(("bob", BOB)), *_issued_after()) == [("ca_closed", 6)]


def test_a_registration_not_signed_by_the_key_it_registers_is_a_finding() -> None:
    command = registration("bob", BOB, "alice", AT).model_copy(update={"signatures": []})
    unproven = sign(command, "alice", ALICE).model_dump_json().encode()
    found = _check_all(GENESIS, unproven).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 2)]
    assert "did not sign its own registration" in found[0].detail


def test_a_quorum_of_two_needs_two_operators_signatures() -> None:
    quorum = signed("QuorumSet", aggregate_id="ca_compromise", required=2, set_by="alice")
    one = _compromised(("alice", ALICE))
    two = _compromised(("alice", ALICE), ("bob", BOB))
    log = [GENESIS, BOB_REGISTERED, quorum, CA, one, *_issued_after("r8", "f8"), two, *_issued_after()]
    found = _check_all(*log).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 5), ("ca_closed", 10)]
    assert "needs 2 distinct operators' signatures, it has 1 (alice)" in found[0].detail


def test_one_operator_signing_twice_is_a_finding() -> None:
    quorum = signed("QuorumSet", aggregate_id="ca_compromise", required=2, set_by="alice")
    twice = _compromised(("alice", ALICE), ("alice", ALICE))
    assert _checks(GENESIS, BOB_REGISTERED, quorum, CA, twice) == [("operator_signature", 5)]


def test_a_quorum_more_operators_than_are_registered_could_meet_is_a_finding_and_not_applied() -> None:
    """Every consumer refuses it (`authorise`), so audit's registry must not take it either."""
    quorum = signed("QuorumSet", aggregate_id="ca_compromise", required=2, set_by="alice")
    found = _check_all(GENESIS, quorum, CA, _compromised(("alice", ALICE))).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 2)]
    assert "would leave 1 operator(s) for a quorum of 2" in found[0].detail


def test_a_command_signed_by_a_removed_operator_is_a_finding() -> None:
    removed = signed("OperatorRemoved", aggregate_id="bob", reason="left", removed_by="alice")
    log = [GENESIS, BOB_REGISTERED, removed, CA, _compromised(("bob", BOB)), *_issued_after()]
    found = _check_all(*log).findings
    assert [(f.check, f.stream_seq) for f in found] == [("operator_signature", 5)]
    assert "'bob' is not a registered operator" in found[0].detail


def test_a_redelivered_registration_does_not_undo_a_later_key_change() -> None:
    """Consumers skip a command whose event id they applied already; so does audit's registry."""
    new_key = Ed25519PrivateKey.generate()
    rotated = _register("alice", new_key, ("alice", ALICE))
    log = [GENESIS, rotated, GENESIS, CA, _compromised(("alice", new_key)), *_issued_after()]
    assert _checks(*log) == [("ca_closed", 7)]


def test_the_signatures_cover_the_command_as_it_travelled() -> None:
    """A command sent without its defaulted fields (no `causation_id`) is signed as it was sent."""
    data = sample("CaCompromised", occurred_at="2026-01-01T00:00:00Z")  # as pydantic writes a UTC time
    assert "causation_id" not in data
    signature = sign_message(ALICE, operator_message(data))
    data["signatures"] = [{"operator": "alice", "signature": base64.b64encode(signature).decode()}]
    assert _checks(GENESIS, CA, json.dumps(data).encode()) == []
