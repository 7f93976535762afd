"""Readiness without servers: what each service says it lacks, and how the CLI's verdict combines them."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from pki_builders import NOW
from services.enrollment.domain import readiness_missing
from services.signing.cas import CaRegistry
from services.signing.keystore import KeyStore
from services.validation.domain import responders_missing
from shared.base.settings import ServiceSettings, SigningSettings
from shared.client.sdk import SERVICES, judge_readiness
from shared.runtime.service import Runtime

LATER = NOW + timedelta(days=30)


def _ready(service: str, **facts: Any) -> dict[str, Any]:
    return {"service": service, "status": "ok", "ready": True, "missing": [], **facts}


def _reports(**changed: dict[str, Any]) -> list[dict[str, Any]]:
    """Every service ready (signing issuing from CA `ca1`, validation serving it) but those `changed`."""
    usual = {
        "signing": _ready("signing", issuing_ca="ca1"),
        "validation": _ready("validation", ocsp_responders={"ca1": LATER.isoformat()}),
    }
    return [changed.get(name) or usual.get(name) or _ready(name) for name in SERVICES]


def _missing(reports: list[dict[str, Any]]) -> list[str]:
    return [f"{r['service']}: {m}" for r in judge_readiness(reports) for m in r["missing"]]


# --- enrollment: a usable profile ---------------------------------------------------------------


def test_enrollment_without_a_profile_is_not_ready_and_says_how_to_apply_one() -> None:
    [missing] = readiness_missing(applied=0, usable=0)
    assert "no profile is applied" in missing and "certbus profile apply" in missing


def test_enrollment_whose_every_profile_failed_lint_is_not_ready() -> None:
    [missing] = readiness_missing(applied=2, usable=0)
    assert "failed signing's lint check" in missing


def test_enrollment_with_one_usable_profile_is_ready() -> None:
    assert readiness_missing(applied=3, usable=1) == []


# --- signing: an issuing CA ---------------------------------------------------------------------


def test_signing_without_an_issuing_ca_is_not_ready(tmp_path: Path) -> None:
    registry = CaRegistry(KeyStore(tmp_path, b"unit-test-passphrase-0123456789"), SigningSettings())
    readiness = asyncio.run(registry.readiness(Runtime.__new__(Runtime)))
    assert readiness.missing == ["no active issuing CA: nothing can be issued"]
    assert "issuing_ca" not in readiness.facts


def test_signing_with_an_issuing_ca_is_ready_and_names_it(tmp_path: Path) -> None:
    registry = CaRegistry(KeyStore(tmp_path, b"unit-test-passphrase-0123456789"), SigningSettings())
    registry.issuing_id = "ca1"
    readiness = asyncio.run(registry.readiness(Runtime.__new__(Runtime)))
    assert readiness.missing == [] and readiness.facts == {"issuing_ca": "ca1"}


# --- validation: a current responder per live issuing CA ----------------------------------------


def test_validation_that_knows_no_issuing_ca_is_not_ready() -> None:
    [missing] = responders_missing([], {}, NOW)
    assert "no live issuing CA" in missing


def test_validation_without_a_responder_for_an_issuing_ca_names_the_ca_and_why() -> None:
    why = "provisioner 'ocsp-validation' is not registered"
    [missing] = responders_missing([("ca1", LATER), ("ca2", LATER)], {"ca2": LATER}, NOW, why)
    assert "ca1" in missing and "OCSP responder" in missing and why in missing


def test_an_expired_responder_is_not_current() -> None:
    [missing] = responders_missing([("ca1", LATER)], {"ca1": NOW}, NOW)
    assert "ca1" in missing


def test_validation_with_a_current_responder_for_every_live_issuing_ca_is_ready() -> None:
    expired_ca = ("old", NOW - timedelta(seconds=1))
    assert responders_missing([("ca1", LATER), expired_ca], {"ca1": NOW + timedelta(hours=1)}, NOW) == []


# --- the verdict the CLI gives --------------------------------------------------------------------


def test_the_system_is_ready_when_every_service_is() -> None:
    judged = judge_readiness(_reports())
    assert all(r["ready"] for r in judged) and _missing(_reports()) == []


def test_a_service_that_does_not_answer_is_missing() -> None:
    judged = {r["service"]: r for r in judge_readiness(_reports(audit={"service": "audit", "status": "down"}))}
    assert judged["audit"]["ready"] is False and judged["audit"]["missing"] == ["it does not answer"]
    assert all(r["ready"] for name, r in judged.items() if name != "audit")


def test_each_thing_a_service_lacks_is_one_line() -> None:
    enrollment = {**_ready("enrollment"), "ready": False, "missing": ["no profile is applied"]}
    signing = {**_ready("signing"), "ready": False, "missing": ["no active issuing CA: nothing can be issued"]}
    lines = _missing(_reports(enrollment=enrollment, signing=signing))
    assert lines == ["enrollment: no profile is applied", "signing: no active issuing CA: nothing can be issued"]


def test_validation_is_not_ready_until_it_serves_the_ca_signing_issues_from() -> None:
    # Signing has moved to a new issuing CA that validation has not heard of yet.
    lines = _missing(_reports(signing=_ready("signing", issuing_ca="ca2")))
    assert len(lines) == 1 and lines[0].startswith("validation: ") and "ca2" in lines[0]


def test_a_degraded_service_is_not_ready() -> None:
    degraded = {**_ready("revocation"), "status": "degraded"}
    assert _missing(_reports(revocation=degraded)) == ["revocation: its status is degraded"]


def test_a_service_that_does_not_report_readiness_is_judged_by_its_status() -> None:
    older = {"service": "audit", "status": "ok"}
    assert _missing(_reports(audit=older)) == []


# --- replicas: a service is ready if any live replica is -----------------------------------------


def _replica(service: str, instance: str, **changed: Any) -> dict[str, Any]:
    return {**_ready(service), "instance": instance, "seen_s": 0.5, "silent": False, "warnings": [], **changed}


def _answer(*replicas: dict[str, Any]) -> dict[str, Any]:
    """A health answer as the first replica gives it: its own report, and every replica's."""
    return {**replicas[0], "replicas": list(replicas)}


def _judged(service: str, *replicas: dict[str, Any]) -> dict[str, Any]:
    return {r["service"]: r for r in judge_readiness(_reports(**{service: _answer(*replicas)}))}[service]


def test_a_service_with_one_ready_replica_is_ready_and_the_other_replicas_lack_is_a_warning() -> None:
    lacking = _replica("enrollment", "b", ready=False, missing=["no profile is applied"])
    judged = _judged("enrollment", _replica("enrollment", "a"), lacking)
    assert judged["ready"] is True and judged["missing"] == []
    assert judged["warnings"] == ["enrollment: replica b is not ready: no profile is applied"]
    assert [(r["instance"], r["ready"]) for r in judged["replicas"]] == [("a", True), ("b", False)]


def test_a_silent_replica_is_a_warning_not_a_failure() -> None:
    silent = _replica("signing", "b", issuing_ca="ca1", seen_s=9.2, silent=True)
    judged = _judged("signing", _replica("signing", "a", issuing_ca="ca1"), silent)
    assert judged["ready"] is True and judged["missing"] == []
    assert judged["warnings"] == ["signing: replica b is silent: not seen for 9.2 s"]
    assert judged["replicas"][1]["ready"] is False


def test_a_silent_replica_that_last_said_ready_does_not_make_its_service_ready() -> None:
    degraded = _replica("revocation", "a", status="degraded", ready=False, missing=["its database does not answer"])
    judged = _judged("revocation", degraded, _replica("revocation", "b", seen_s=7.0, silent=True))
    assert judged["ready"] is False and judged["missing"] == ["its database does not answer"]
    assert judged["warnings"] == ["revocation: replica b is silent: not seen for 7.0 s"]


def test_what_every_live_replica_lacks_is_said_once_and_what_one_lacks_names_it() -> None:
    a = _replica("enrollment", "a", ready=False, missing=["no profile is applied"])
    b = _replica("enrollment", "b", ready=False, missing=["no profile is applied", "its NATS connection is down"])
    lines = _missing(_reports(enrollment=_answer(a, b)))
    assert lines == ["enrollment: no profile is applied", "enrollment: replica b: its NATS connection is down"]


def test_one_replica_is_judged_as_a_service_that_lists_none() -> None:
    lacking = {**_ready("enrollment"), "ready": False, "missing": ["no profile is applied"], "warnings": ["w"]}
    alone = _judged("enrollment", {**lacking, "instance": "a", "seen_s": 0.0, "silent": False})
    before = {r["service"]: r for r in judge_readiness(_reports(enrollment=lacking))}["enrollment"]
    assert (alone["ready"], alone["missing"], alone["warnings"]) == (False, ["no profile is applied"], ["w"])
    assert (before["ready"], before["missing"], before["warnings"]) == (False, ["no profile is applied"], ["w"])
    assert len(before["replicas"]) == 1 and before["replicas"][0]["missing"] == ["no profile is applied"]


def test_each_validation_replica_must_serve_the_ca_signing_issues_from() -> None:
    serving = _replica("validation", "a", ocsp_responders={"ca1": LATER.isoformat()})
    behind = _replica("validation", "b", ocsp_responders={})
    judged = _judged("validation", behind, serving)
    assert judged["ready"] is True
    [warning] = judged["warnings"]
    assert warning.startswith("validation: replica b is not ready: no current OCSP responder") and "ca1" in warning


def test_a_service_lists_a_bounded_number_of_replicas_and_says_how_many_it_left_off() -> None:
    judged = _judged("audit", {**_replica("audit", "a"), "replicas_left_off": 3})
    assert judged["ready"] is True and judged["warnings"] == [
        "audit: 3 more replica(s) not listed (only the most recently seen are)"
    ]


# --- which replica a process is ---------------------------------------------------------------------


def test_a_replica_is_named_by_its_host_and_pid_unless_told_its_instance() -> None:
    assert ServiceSettings().instance_name == f"{socket.gethostname()}:{os.getpid()}"
    assert ServiceSettings(instance="signing-2.eu-west:a").instance_name == "signing-2.eu-west:a"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "semi;colon", "new\nline", "trailing\n"])
def test_an_instance_name_outside_its_pattern_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="instance"):
        ServiceSettings(instance=bad)
