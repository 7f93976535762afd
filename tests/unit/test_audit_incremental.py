"""The checks fed a log in pieces (as the scheduled check feeds them, run after run) find what one pass over
the whole log finds; what they keep per certificate is compact and means the same as the text."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_audit_samples import PROFILE, ROOT, event, genesis, rows, signed

from services.audit.checks import Checker, Finding, check_all, key_of, text_of

NOW = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
OLD, NEW = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4", "0ff1ce"  # a serial, and a text that is no canonical number
REQUEST = str(uuid.UUID(int=7))


def _e(kind: str, producer: str, **fields: Any) -> bytes:
    return event(kind, producer=producer, **fields)


def _approve(request: str, supersedes: str | None = None) -> bytes:
    return _e("EnrollmentApproved", "enrollment", aggregate_id=request, supersedes=supersedes)


def _issue(request: str, serial: str, supersedes: str | None = None, issuer: str = "ca1") -> bytes:
    return _e(
        "CertificateIssued",
        "signing",
        aggregate_id=request,
        serial=serial,
        issuer_id=issuer,
        supersedes=supersedes,
        spki_sha256="cd" * 32,
    )


def _revoke(serial: str, issuer: str = "ca1") -> bytes:
    return _e("CertificateRevoked", "revocation", serial=serial, issuer_id=issuer, revoked_at=NOW.isoformat())


# A log with a finding of most kinds, spread along it: any split point cuts between some of them.
LOG = [
    genesis(),
    _e("CaCreated", "signing", ca_id="ca1"),
    _approve(REQUEST),
    _issue(REQUEST, OLD),
    _issue("r-unapproved", "b1"),  # approval
    _approve("r2"),
    _issue("r2", OLD),  # serial
    _revoke("dead"),  # revoked_unknown
    _revoke(OLD),
    _approve("r3", OLD),
    _issue("r3", NEW, "c3"),  # renewal: supersedes another serial than approved
    _approve("r4", "beef"),
    _issue("r4", "d4", "beef"),  # renewal: of a serial never issued
    _e("CertificateDestroyed", "revocation", aggregate_id=REQUEST, serial=OLD, issuer_id="ca1"),
    _approve("r5", OLD),
    _issue("r5", "e5", OLD),  # renewal: of a destroyed certificate
    _e("KeyDestroyed", "requester", serial="feed"),  # key_destroyed: never issued
    _e("KeyDestroyed", "requester", serial=NEW),  # key_destroyed: another key than the certificate's
    _issue("r6", "f6", issuer="rogue"),  # approval, issuer
    signed("CaCompromised", ca_id="ca1", reason="key leaked", declared_by="alice"),
    _approve("r7"),
    _issue("r7", "a7"),  # ca_closed
    _e("CertificateIssued", "enrollment", aggregate_id="r8", serial="a8", issuer_id="ca1"),  # producer
    b"{not json",  # malformed
]


def _split(log: list[tuple[int, str, bytes]], at: list[int]) -> tuple[list[Finding], Checker]:
    """Feed `log` in pieces cut at `at`, taking the findings after each piece as the scheduled run does."""
    checker, found = Checker(ROOT), []
    for start, end in zip([0, *at], [*at, len(log)], strict=True):
        for seq, subject, raw in log[start:end]:
            checker.add(seq, subject, raw)
        found += checker.findings
        checker.findings.clear()
    return found, checker


def test_the_sample_log_has_findings_of_most_kinds() -> None:
    kinds = {f.check for f in check_all(rows(*LOG), ROOT).findings}
    assert kinds >= {"approval", "serial", "revoked_unknown", "renewal", "key_destroyed", "issuer", "ca_closed"}
    assert kinds >= {"producer", "malformed"}


@pytest.mark.parametrize("at", range(len(LOG) + 1))
def test_two_runs_find_what_one_pass_finds(at: int) -> None:
    log = rows(*LOG)
    whole = check_all(log, ROOT)
    found, checker = _split(log, [at])
    assert found == whole.findings
    assert checker.events == whole.events == len(log)
    later = NOW + timedelta(hours=1)
    assert checker.crl_findings({}, later, timedelta(minutes=1)) == whole.crl_findings({}, later, timedelta(minutes=1))


@given(st.lists(st.integers(min_value=0, max_value=len(LOG)), max_size=6).map(sorted))
def test_any_number_of_runs_find_what_one_pass_finds(at: list[int]) -> None:
    log = rows(*LOG)
    assert _split(log, at)[0] == check_all(log, ROOT).findings


@pytest.mark.parametrize("at", range(1, len(LOG)))
def test_a_checker_restored_from_the_state_of_another_goes_on_as_that_one_would(at: int) -> None:
    """What a run stores besides the facts (as JSON) is all a Checker in another process needs to go on."""
    log = rows(*LOG)
    whole = check_all(log, ROOT)
    first = check_all(log[:at], ROOT)
    second = Checker.restored(ROOT, json.loads(json.dumps(first.state())))
    assert not second.changed and second.state() == first.state()
    second.facts, second.revocations = first.facts, first.revocations  # what the tables keep
    for seq, subject, raw in log[at:]:
        second.add(seq, subject, raw)
    assert first.findings + second.findings == whole.findings
    assert second.state() == whole.state()


def test_a_state_holds_every_kind_of_knowledge_and_every_field_is_in_it_or_kept_elsewhere() -> None:
    """A field added to the Checker must be stored with its state, or be kept elsewhere (a new test)."""
    kept_elsewhere = {"root", "findings", "events", "facts", "revocations", "changed"}
    in_state = {
        "_profiles",
        "_cas",
        "_crl_shards",
        "_closed",
        "_key_destroyed",
        "latest_crl",
        "_operators",
        "_commands",
    }
    assert {f.name for f in dataclasses.fields(Checker)} == kept_elsewhere | in_state
    log = [
        genesis(),
        _e("CaCreated", "signing", ca_id="ca1", crl_shards=4),
        signed("ProfileApplied", profile=PROFILE.model_dump(mode="json")),
        signed("QuorumSet", aggregate_id="ca_compromise", required=1, set_by="alice"),
        _e("CrlPublished", "signing", ca_id="ca1", aggregate_id="ca1", crl_number=3, shard=1),
        signed("CaCompromised", ca_id="ca1", reason="key leaked", declared_by="alice"),
        _e("CaKeyDestroyed", "signing", ca_id="ca1", aggregate_id="ca1"),
    ]
    checker = check_all(rows(*log), ROOT)
    state = checker.state()
    assert [k for k in state if not state[k]] == []  # each kind of knowledge is there, and so tested above
    restored = Checker.restored(ROOT, json.loads(json.dumps(state)))
    assert {f.name: getattr(restored, f.name) for f in dataclasses.fields(Checker) if f.name in in_state} == {
        f.name: getattr(checker, f.name) for f in dataclasses.fields(Checker) if f.name in in_state
    }


def test_the_renewal_finding_names_the_serial_the_approval_supersedes_as_it_was_written() -> None:
    log = [_e("CaCreated", "signing", ca_id="ca1"), _approve("r1", OLD), _issue("r1", NEW)]
    [finding] = check_all(rows(*log), ROOT).findings
    assert f"but its approval supersedes {OLD}" in finding.detail


TEXTS = st.one_of(
    st.text(max_size=70),
    st.text("0123456789abcdefABCDEF-", max_size=70),
    st.integers(min_value=0, max_value=2**256).map(lambda n: f"{n:x}"),
    st.uuids().map(str),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
)


@given(TEXTS, TEXTS)
def test_compact_keys_are_equal_exactly_when_their_texts_are(a: str, b: str) -> None:
    assert (key_of(a) == key_of(b)) == (a == b)
    assert text_of(key_of(a)) == a


@pytest.mark.parametrize(
    ("text", "kind"),
    [(OLD, int), (REQUEST, bytes), ("cd" * 32, bytes), (NEW, str), (OLD.upper(), str), ("r1", str)],
)
def test_serials_request_ids_and_digests_are_kept_as_numbers_or_bytes(text: str, kind: type) -> None:
    assert type(key_of(text)) is kind
