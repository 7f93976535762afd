"""Operator policy through the `certbus` CLI: approvals, provisioners, profiles, key blocks."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import Harness, eventually
from shared.client import Pending
from shared.crypto import build_csr, generate_key
from shared.profiles import Profile

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

    approved = await stack.cli("approve", request_id, "--operator", "alice", "--comment", "ticket 42")
    assert approved.returncode == 0, approved.stderr
    shown = json.loads((await stack.cli("requests", "show", request_id, "--json")).stdout)
    assert shown["status"] == "issued"
    assert shown["decided_by"] == "alice"
    assert shown["serial"]

    fetched = await stack.cli("requests", "fetch", request_id, "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    _openssl_verify(out)
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()

    granted = await stack.stream_messages(f"{stack.root}.cert.{request_id}.granted")
    assert json.loads(granted[0].data)["operator"] == "alice"
    approval = await stack.stream_messages(f"{stack.root}.cert.{request_id}.approved")
    assert json.loads(approval[0].data)["approved_by"] == "alice"


async def test_an_operator_rejects_a_pending_request_through_the_cli(stack: Harness, tmp_path: Path) -> None:
    token = stack.token("db.corp.internal", profile="high-assurance")
    args = ["enroll", "--token", token, "--san", "db.corp.internal", "--profile", "high-assurance"]
    request_id = _pending_id(await stack.cli(*args, "--key-type", "ec-p384", "--out", str(tmp_path)))
    rejected = await stack.cli("reject", request_id, "--reason", "not a service we run", "--operator", "bob")
    assert rejected.returncode == 0, rejected.stderr
    shown = json.loads((await stack.cli("requests", "show", request_id, "--json")).stdout)
    assert shown["status"] == "rejected"
    assert shown["decided_by"] == "bob"
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
    listed = {p["name"]: p for p in json.loads((await stack.cli("profile", "list", "--json")).stdout)}
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
