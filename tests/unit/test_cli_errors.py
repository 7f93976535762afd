"""The CLI fails fast with a clear message and a meaningful exit code when it cannot work."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from deploy.local.devstack import free_port
from harness import run_cli
from shared.pki.crypto import generate_key, key_pem


def certbus(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env.update(CERTBUS_NATS_URL=f"nats://127.0.0.1:{free_port()}", CERTBUS_HOME=str(home))
    return run_cli(env, *args)


def test_health_exits_3_quickly_when_nats_is_unreachable(tmp_path: Path) -> None:
    started = time.monotonic()
    result = certbus("health", home=tmp_path)
    assert result.returncode == 3
    assert "cannot reach NATS" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 20


def test_token_create_without_a_provisioner_key_says_how_to_get_one(tmp_path: Path) -> None:
    result = certbus("token", "create", "--san", "a.corp.internal", home=tmp_path)
    assert result.returncode == 1
    assert "certbus provisioner init" in result.stderr


def test_validate_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = certbus("validate", str(tmp_path / "missing.pem"), home=tmp_path)
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_revoke_with_an_unknown_reason_is_a_usage_error(tmp_path: Path) -> None:
    result = certbus("revoke", "abc", "--reason", "certificateHold", home=tmp_path)
    assert result.returncode == 2


def test_revoke_without_a_key_or_an_operator_is_a_usage_error_naming_both_ways(tmp_path: Path) -> None:
    result = certbus("revoke", "abc", "--reason", "superseded", home=tmp_path)
    assert result.returncode == 2
    assert "--key" in result.stderr and "--operator" in result.stderr


def test_revoke_with_both_a_key_and_an_operator_is_a_usage_error(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(key_pem(generate_key("ec-p256")))
    result = certbus("revoke", "abc", "--key", str(key), "--operator", "carol", home=tmp_path)
    assert result.returncode == 2
    assert "not several" in result.stderr


def test_revoke_with_a_file_that_is_not_a_private_key_says_so(tmp_path: Path) -> None:
    key = tmp_path / "cert.pem"
    key.write_text("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
    result = certbus("revoke", "abc", "--key", str(key), home=tmp_path)
    assert result.returncode == 1
    assert "not an unencrypted PEM private key" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_into_a_pipe_is_never_wrapped_so_names_and_paths_arrive_whole(tmp_path: Path) -> None:
    """Off a terminal the CLI writes each line whole, however long: a script reading `| cat` or a
    file gets every name, serial and path on one line (a terminal's width does not apply)."""
    name = "an-operator-whose-registered-name-is-as-long-as-a-name-may-be-0"
    key_dir = tmp_path / "operators"
    key_dir.mkdir()
    (key_dir / f"{name}.key.pem").write_bytes(key_pem(generate_key("ed25519")))
    command_file = tmp_path / ("a-command-file-in-a-deep-directory-" * 3 + ".json")
    written = certbus(
        "operator", "quorum", "operator", "2", "--operator", name, "--out", str(command_file), home=tmp_path
    )
    assert written.returncode == 0, written.stderr
    line = f"signed by {name}; others add their signatures with `certbus operator cosign {command_file}`"
    assert written.stdout.splitlines() == [line]
    shown = certbus("operator", "show", str(command_file), home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f'"set_by": "{name}"' in [line.strip().rstrip(",") for line in shown.stdout.splitlines()]
    assert shown.stdout.splitlines()[-1] == f"signed by: {name}"
