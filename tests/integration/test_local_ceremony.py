"""`CERTBUS_CA_ROOT=offline make run` plays the offline root's ceremony locally (deploy/local/ceremony.py):
against a signing with an offline root, it makes the root in a SoftHSM2 store of its own, publishes
it, certifies the key signing waits with and signs a root CRL, through the same programs an operator
runs; run again, it publishes nothing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from deploy.local.ceremony import LocalCeremony
from harness import Harness
from pkcs11_tokens import MODULE
from shared.base.settings import SigningSettings


async def test_the_local_ceremony_brings_an_offline_root_signing_to_issue(harness: Harness, tmp_path: Path) -> None:
    if shutil.which("softhsm2-util") is None or not MODULE.exists():
        pytest.skip("SoftHSM2 is not installed: `make softhsm` installs Debian's softhsm2")
    harness.overrides["signing"] = {"ca_root": "offline"}
    stack = harness
    await stack.start()
    settings = stack.settings("signing")
    assert isinstance(settings, SigningSettings)
    pin_file = tmp_path / "secrets" / "ceremony-pin"
    pin_file.parent.mkdir(mode=0o700)
    pin_file.write_text("local-ceremony-pin-not-a-secret")
    said: list[str] = []
    ceremony = LocalCeremony(
        tmp_path / "ceremony", stack.cli_env(), pin_file, settings.organization, settings.public_base_url, said.append
    )
    await asyncio.to_thread(ceremony.prepare, "local-ceremony-pin-not-a-secret", "local-ceremony-so-pin")
    await asyncio.to_thread(ceremony.run, 90)
    assert [s.split(" (")[0] for s in said] == [
        "created the ceremony's SoftHSM2 token 'certbus-root' in " + str(tmp_path / "ceremony" / "softhsm"),
        "the ceremony made the root",
        said[2],
        "the ceremony signed root CRL #1",
    ]
    assert said[2].startswith("the ceremony certified issuing CA ")

    await stack.register_provisioner()
    await stack.apply_profiles()
    issued = await stack.enroll("local.offline.corp.internal")
    assert said[2].endswith(issued.issuer_id)
    shown = await stack.cli("ca", "root")
    assert "root CRL: #1, next update" in shown.stdout, shown.stdout + shown.stderr

    # A second start finds everything done: nothing is signed or published again.
    async def ceremony_commands() -> int:
        verbs = ("root_created", "certified", "root_crl_signed")
        return sum([len(await stack.stream_messages(f"{stack.root}.ca.*.{verb}")) for verb in verbs])

    published = await ceremony_commands()
    assert published == 3
    again = LocalCeremony(
        tmp_path / "ceremony", stack.cli_env(), pin_file, settings.organization, settings.public_base_url, said.append
    )
    await asyncio.to_thread(again.run, 60)
    assert len(said) == 4
    assert await ceremony_commands() == published
