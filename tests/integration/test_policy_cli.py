"""Operator policy through the `certbus` CLI: approvals, provisioners, profiles, key blocks."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from harness import Harness, eventually
from shared.client.sdk import CertbusClient, Pending, Rejected
from shared.contract.events import ApprovalGranted, utcnow
from shared.contract.profiles import Profile
from shared.contract.queries import RequestDetail
from shared.pki.crypto import build_csr, generate_key, key_pem
from shared.pki.holder import enrollment_request, load_private_key
from shared.trust import operators

CA_CHAIN = "chain.pem"


def _pending_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 4, result.stderr
    match = re.search(r"certbus approve ([0-9a-f-]{36})", result.stderr)
    assert match, result.stderr
    return match[1]


def _openssl_verify(d: Path) -> None:
    chain = (d / CA_CHAIN).read_text()
    parts = chain.split("-----END CERTIFICATE-----")
    (d / "issuing.pem").write_text(parts[0] + "-----END CERTIFICATE-----\n")
    (d / "root.pem").write_text(parts[1].lstrip() + "-----END CERTIFICATE-----\n")
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", d / "root.pem", "-untrusted", d / "issuing.pem", d / "cert.pem"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_an_operator_approves_a_pending_request_through_the_cli(stack: Harness, tmp_path: Path) -> None:
    out = tmp_path / "vault"
    token = stack.token("vault.corp.internal", profile="high-assurance")
    args = ["enroll", "--token", token, "--san", "vault.corp.internal", "--profile", "high-assurance"]
    request_id = _pending_id(await stack.cli(*args, "--key-type", "ec-p384", "--out", str(out)))
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600  # the key waits with the request

    listed = await stack.cli("requests", "list", "--pending", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["request_id"] for r in json.loads(listed.stdout)] == [request_id]

    approved = await stack.cli("approve", request_id, "--comment", "ticket 42")
    assert approved.returncode == 0, approved.stderr
    shown = json.loads((await stack.cli("requests", "show", request_id, "--json")).stdout)
    assert shown["status"] == "issued"
    assert shown["decided_by"] == "operator"  # whoever signed the approval
    assert shown["serial"]

    fetched = await stack.cli("requests", "fetch", request_id, "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    _openssl_verify(out)
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()

    [granted] = await stack.stream_messages(f"{stack.root}.cert.{request_id}.granted")
    assert [s["operator"] for s in json.loads(granted.data)["signatures"]] == ["operator"]
    [approval] = await stack.stream_messages(f"{stack.root}.cert.{request_id}.approved")
    assert json.loads(approval.data)["approved_by"] == "operator"
    assert json.loads(approval.data)["approvers"] == ["operator"]


async def test_an_operator_rejects_a_pending_request_through_the_cli(stack: Harness, tmp_path: Path) -> None:
    token = stack.token("db.corp.internal", profile="high-assurance")
    args = ["enroll", "--token", token, "--san", "db.corp.internal", "--profile", "high-assurance"]
    request_id = _pending_id(await stack.cli(*args, "--key-type", "ec-p384", "--out", str(tmp_path)))
    rejected = await stack.cli("reject", request_id, "--reason", "not a service we run")
    assert rejected.returncode == 0, rejected.stderr
    shown = json.loads((await stack.cli("requests", "show", request_id, "--json")).stdout)
    assert shown["status"] == "rejected"
    assert shown["decided_by"] == "operator"
    assert shown["reasons"][0]["code"] == "operator_rejected"
    assert "not a service we run" in shown["reasons"][0]["message"]
    again = await stack.cli("approve", request_id)
    assert again.returncode == 1
    assert "not pending" in again.stderr
    assert await stack.stream_messages(f"{stack.root}.cert.{request_id}.issued") == []


async def test_a_pending_request_expires(stack: Harness) -> None:
    quick = Profile(
        name="quick-approval",
        usage="server",
        dns_suffixes=["corp.internal"],
        require_approval=True,
        approval_timeout_hours=1 / 3600,  # one second
    )
    await stack.apply_profiles(quick)
    key = generate_key("ec-p256")
    async with stack.client() as c:
        try:
            await c.enroll(
                build_csr(key, ["late.corp.internal"]).decode(),
                stack.token("late.corp.internal", profile="quick-approval"),
                "quick-approval",
            )
        except Pending as exc:
            request_id = exc.request_id
        else:
            raise AssertionError("the request did not wait for approval")

        async def expired() -> bool:
            return (await c.request(request_id)).status == "expired"

        await eventually(expired, timeout=15)
        detail = await c.request(request_id)
    assert [r["code"] for r in detail.reasons] == ["approval_expired"]
    assert (await stack.cli("approve", request_id)).returncode == 1


async def test_provisioners_are_added_used_and_disabled_through_the_cli(stack: Harness, tmp_path: Path) -> None:
    added = await stack.cli("provisioner", "add", "ci", "--algorithm", "ES256")
    assert added.returncode == 0, added.stderr
    token = (await stack.cli("token", "create", "--provisioner", "ci", "--san", "build.corp.internal")).stdout.strip()
    enrolled = await stack.cli("enroll", "--token", token, "--san", "build.corp.internal", "--out", str(tmp_path / "a"))
    assert enrolled.returncode == 0, enrolled.stderr

    disabled = await stack.cli("provisioner", "disable", "ci", "--reason", "key rotated")
    assert disabled.returncode == 0, disabled.stderr
    listed = {p["provisioner_id"]: p for p in json.loads((await stack.cli("provisioner", "list", "--json")).stdout)}
    assert listed["ci"]["status"] == "disabled"
    assert listed["ci"]["status_reason"] == "key rotated"

    token = (await stack.cli("token", "create", "--provisioner", "ci", "--san", "build.corp.internal")).stdout.strip()
    refused = await stack.cli("enroll", "--token", token, "--san", "build.corp.internal", "--out", str(tmp_path / "b"))
    assert refused.returncode == 1
    assert "provisioner_disabled" in refused.stderr


async def test_enroll_submits_an_existing_csr_and_shows_rejections_clearly(stack: Harness, tmp_path: Path) -> None:
    key = generate_key("ec-p256")
    csr = tmp_path / "hsm.csr"
    csr.write_bytes(build_csr(key, ["hsm.corp.internal"]))
    out = tmp_path / "out"
    done = await stack.cli("enroll", "--csr", str(csr), "--token", stack.token("hsm.corp.internal"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert not (out / "key.pem").exists()  # the key never left its owner
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert cert.public_key() == key.public_key()

    csr.write_bytes(build_csr(key, ["www.example.com"]))
    refused = await stack.cli("enroll", "--csr", str(csr), "--token", stack.token("www.example.com"), "--out", str(out))
    assert refused.returncode == 1
    assert "name_not_in_profile" in refused.stderr
    assert "www.example.com" in refused.stderr


async def test_profiles_are_applied_and_listed_through_the_cli(stack: Harness, tmp_path: Path) -> None:
    file = tmp_path / "profiles.toml"
    file.write_text('[profiles.edge]\nusage = "server"\ndns_suffixes = ["edge.internal"]\nallow_wildcards = true\n')
    applied = await stack.cli("profile", "apply", str(file))
    assert applied.returncode == 0, applied.stderr
    assert "usable" in applied.stdout
    profiles = await stack.cli("profile", "list", "--json")
    assert profiles.returncode == 0, profiles.stderr
    listed = {p["name"]: p for p in json.loads(profiles.stdout)}
    assert listed["edge"]["body"]["allow_wildcards"] is True
    assert {"tls-server", "tls-client", "service", "high-assurance"} <= set(listed)
    issued = await stack.enroll("*.edge.internal", profile="edge")
    assert issued.dns_names == ["*.edge.internal"]

    file.write_text('[profiles.bad]\nusage = "server"\ndns_suffixes = ["x.internal"]\nmax_validity_days = 900\n')
    broken = await stack.cli("profile", "apply", str(file))
    assert broken.returncode == 1
    assert "max_validity_days" in broken.stderr


async def test_a_blocked_key_cannot_enroll(stack: Harness, tmp_path: Path) -> None:
    key = generate_key("ec-p256")
    csr = tmp_path / "k.csr"
    csr.write_bytes(build_csr(key, ["leaked.corp.internal"]))
    blocked = await stack.cli("key", "block", "--from", str(csr), "--reason", "found in a public repository")
    assert blocked.returncode == 0, blocked.stderr
    refused = await stack.cli(
        "enroll", "--csr", str(csr), "--token", stack.token("leaked.corp.internal"), "--out", str(tmp_path / "o")
    )
    assert refused.returncode == 1
    assert "key_blocked" in refused.stderr


# --- provisioner scopes ---------------------------------------------------------------------------


async def _add_provisioner(stack: Harness, provisioner_id: str, *scope: str) -> None:
    added = await stack.cli("provisioner", "add", provisioner_id, *scope)
    assert added.returncode == 0, added.stderr


async def _token(stack: Harness, provisioner_id: str, name: str, profile: str = "tls-server") -> str:
    made = await stack.cli("token", "create", "--provisioner", provisioner_id, "--san", name, "--profile", profile)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


async def _enroll(
    stack: Harness, provisioner_id: str, name: str, out: Path, profile: str = "tls-server"
) -> subprocess.CompletedProcess[str]:
    token = await _token(stack, provisioner_id, name, profile)
    return await stack.cli("enroll", "--token", token, "--san", name, "--profile", profile, "--out", str(out))


def _refused_with(result: subprocess.CompletedProcess[str], code: str, *said: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert code in result.stderr, result.stderr
    for text in said:
        assert text in result.stderr, result.stderr


async def test_a_provisioner_scoped_to_a_profile_enrolls_under_that_profile_only(
    stack: Harness, tmp_path: Path
) -> None:
    await _add_provisioner(stack, "clients", "--profile", "tls-client")
    done = await _enroll(stack, "clients", "c.corp.internal", tmp_path / "a", profile="tls-client")
    assert done.returncode == 0, done.stderr
    refused = await _enroll(stack, "clients", "s.corp.internal", tmp_path / "b", profile="tls-server")
    _refused_with(refused, "provisioner_scope", "'tls-server'")


async def test_a_provisioner_scoped_to_a_suffix_enrolls_names_under_it_only(stack: Harness, tmp_path: Path) -> None:
    await _add_provisioner(stack, "builds", "--suffix", "build.corp.internal")
    done = await _enroll(stack, "builds", "ci.build.corp.internal", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    # Inside the profile (corp.internal) but outside the provisioner's suffix.
    refused = await _enroll(stack, "builds", "db.corp.internal", tmp_path / "b")
    _refused_with(refused, "provisioner_scope", "db.corp.internal")


async def test_a_provisioner_scoped_to_a_requester_serves_that_identity_only(stack: Harness, tmp_path: Path) -> None:
    """The requester that counts is the identity NATS authenticated, not what a request says it is."""
    await _add_provisioner(stack, "alices", "--requester", "alice")
    refused = await _enroll(stack, "alices", "a1.corp.internal", tmp_path / "a")  # the CLI runs as `tests`
    _refused_with(refused, "provisioner_scope", "'tests'")

    csr = build_csr(generate_key("ec-p256"), ["a2.corp.internal"]).decode()
    impostor = enrollment_request(csr, await _token(stack, "alices", "a2.corp.internal"), "alice")
    async with stack.client("tests") as c:
        with pytest.raises(Rejected) as info:
            await c.submit(impostor)  # sent by `tests`, claiming to be alice
    assert [r.code for r in info.value.reasons] == ["provisioner_scope"]
    assert (await _request_detail(stack, impostor.aggregate_id)).requester == "tests"

    csr = build_csr(generate_key("ec-p256"), ["a3.corp.internal"]).decode()
    async with stack.client("alice") as c:
        issued = await c.enroll(csr, await _token(stack, "alices", "a3.corp.internal"))
    assert issued.dns_names == ["a3.corp.internal"]
    detail = await _request_detail(stack, issued.aggregate_id)
    assert detail.requester == "alice"


async def test_a_provisioner_with_an_hourly_limit_is_refused_beyond_it(stack: Harness, tmp_path: Path) -> None:
    await _add_provisioner(stack, "burst", "--max-per-hour", "2")
    for i in range(2):
        done = await _enroll(stack, "burst", f"b{i}.corp.internal", tmp_path / str(i))
        assert done.returncode == 0, done.stderr
    refused = await _enroll(stack, "burst", "b2.corp.internal", tmp_path / "2")
    _refused_with(refused, "rate_limited", "'burst'")
    # Other provisioners are not limited by it.
    assert (await stack.enroll("other.corp.internal")).dns_names == ["other.corp.internal"]


async def _request_detail(stack: Harness, request_id: str) -> RequestDetail:
    async with stack.client() as c:
        return await c.request(request_id)


# --- two operators ----------------------------------------------------------------------------------


async def _second_operator(stack: Harness, name: str) -> CertbusClient:
    """Register operator `name` (its own NATS identity and key, co-signed by the harness's operator);
    returns a client that connects as `name` and signs with `name`'s key."""
    await stack.identity(name, "operator")
    key = ed25519.Ed25519PrivateKey.generate()
    key_file = stack.tmp / "operators" / f"{name}.key.pem"
    key_file.write_bytes(key_pem(key))
    harness_key = load_private_key(stack.operator_key_file.read_bytes())
    registration = operators.sign(operators.registration(name, key, name, utcnow()), "operator", harness_key)
    async with stack.client("operator") as c:
        await c.publish(registration)
    settings = stack.client_settings(name).model_copy(update={"operator_key_file": key_file})
    return CertbusClient(settings, requester=name)


async def test_a_profile_that_needs_two_approvals_is_issued_only_after_two_distinct_operators(
    stack: Harness,
) -> None:
    two_person = Profile(
        name="two-person",
        usage="server",
        dns_suffixes=["corp.internal"],
        require_approval=True,
        approvals_required=2,
    )
    await stack.apply_profiles(two_person)
    carol = await _second_operator(stack, "carol")
    csr = build_csr(generate_key("ec-p256"), ["dual.corp.internal"]).decode()
    async with stack.client() as c:
        with pytest.raises(Pending) as waiting:
            await c.enroll(csr, stack.token("dual.corp.internal", profile="two-person"), "two-person")
    request_id = waiting.value.request_id
    pending = json.loads((await stack.stream_messages(f"{stack.root}.cert.{request_id}.pending"))[0].data)
    assert pending["approvals_required"] == 2

    async with stack.client("operator") as c:
        # The same operator twice is still one approval, even when the second says it is carol's:
        # an approval counts for whoever signed it.
        for claimed in ("operator", "carol"):
            seq = await c.publish(
                ApprovalGranted.first(request_id, producer="operator", at=utcnow(), operator=claimed, comment="")
            )
    await eventually(lambda: _enrollment_consumed(stack, seq))
    assert (await _request_detail(stack, request_id)).status == "pending"
    assert await stack.stream_messages(f"{stack.root}.cert.{request_id}.approved") == []

    async with carol:
        issued = await carol.approve(request_id, "carol")

    async def recorded_as_issued() -> RequestDetail | None:
        # approve returns on CertificateIssued; enrollment records it when its consumer reads it
        detail = await _request_detail(stack, request_id)
        return detail if detail.status != "approved" else None

    detail = await eventually(recorded_as_issued)
    assert (detail.status, detail.serial) == ("issued", issued.serial)
    [approval] = await stack.stream_messages(f"{stack.root}.cert.{request_id}.approved")
    assert json.loads(approval.data)["approvers"] == ["operator", "carol"]
    assert json.loads(approval.data)["approved_by"] == "operator+carol"


async def _enrollment_consumed(stack: Harness, seq: int) -> bool:
    """Whether enrollment has acknowledged everything on the log up to `seq`."""
    nc = await stack.connect("admin")
    try:
        info = await stack.js(nc).consumer_info(stack.common["stream"], "enrollment-requests")
    finally:
        await nc.close()
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq
