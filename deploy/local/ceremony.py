"""`CERTBUS_CA_ROOT=offline make run`: the offline root's ceremony played on this machine, for
development only. The root's key is in a SoftHSM2 store of its own (`.certbus/ceremony/softhsm`,
its PIN in `.certbus/secrets/ceremony-pin`), which no service process is given; everything else is
what an operator does by hand (docs/hsm.md): `certbus-ceremony root`, `certbus operator cosign` and
`submit` of what it writes, `certbus ca csr` then `certbus-ceremony sign-issuing`, and a root CRL
with `certbus-ceremony crl`, each a process of its own. In production the ceremony runs offline,
where the root's token is, and nothing here is used."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from deploy.local import softhsm

LABEL = "certbus-root"
ROOT_DAYS, ISSUING_DAYS, CRL_DAYS = 3650, 365, 90
RESIGN_WITHIN = timedelta(days=30)  # a root CRL this close to its nextUpdate is signed again at start


@dataclass
class LocalCeremony:
    """The ceremony for `make run`: `home` is its directory (token store, out dir), `env` the
    environment of the operator's `certbus` CLI."""

    home: Path
    env: dict[str, str]
    pin_file: Path
    organization: str
    base_url: str
    say: Callable[[str], None] = print
    _published: set[str] = field(default_factory=set)

    @property
    def out_dir(self) -> Path:
        return self.home / "out"

    @property
    def _config(self) -> Path:
        return self.home / "softhsm" / "softhsm2.conf"

    def prepare(self, pin: str, so_pin: str) -> None:
        """The root's token, initialised once."""
        if not self._config.exists():
            softhsm.write_config(self._config, self.home / "softhsm" / "tokens")
            softhsm.init_token(self._config, LABEL, pin, so_pin)
            self.say(f"created the ceremony's SoftHSM2 token {LABEL!r} in {self.home / 'softhsm'} (the root's key)")

    def run(self, timeout: float = 120.0) -> None:
        """Bring signing to an issuing CA certified by the root, and the root's CRL up to date:
        make the root once, publish it, certify the key signing waits with, sign a root CRL when
        none is served or the one served is near its nextUpdate. RuntimeError if signing is not
        there within `timeout` seconds."""
        if not (self.out_dir / "root.json").exists():
            self._ceremony("root", "--organization", self.organization, "--days", str(ROOT_DAYS))
            self.say(f"the ceremony made the root ({self.out_dir / 'root.pem'})")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self._state()
            if state is None:
                pass  # signing does not answer yet
            elif state["root_id"] is None:
                self._publish(self.out_dir / "root.json")
            elif state["ca_id"] is not None:
                self._certify(state["ca_id"], state["csr_pem"])
            else:
                self._root_crl(state)
                return
            time.sleep(0.5)
        raise RuntimeError(f"signing did not take the ceremony's root and issuing CA within {timeout:.0f} s")

    def _certify(self, ca_id: str, csr_pem: str) -> None:
        artifact = self.out_dir / f"issuing-{ca_id}.json"
        if not artifact.exists():
            csr = self.home / f"issuing-{ca_id}.csr"
            csr.write_text(csr_pem)
            self._ceremony(
                "sign-issuing", "--csr", str(csr), "--ca-id", ca_id, "--organization", self.organization,
                "--base-url", self.base_url, "--days", str(ISSUING_DAYS),
            )  # fmt: skip
            self.say(f"the ceremony certified issuing CA {ca_id}")
        self._publish(artifact)

    def _root_crl(self, state: dict[str, Any]) -> None:
        next_update = state["root_crl_next_update"]
        if next_update is not None and datetime.fromisoformat(next_update) - datetime.now(UTC) > RESIGN_WITHIN:
            return
        revoked = [a for entry in state["root_revoked"] for a in ("--revoked", entry)]
        self._ceremony("crl", "--next-update-days", str(CRL_DAYS), *revoked)
        number = json.loads((self.out_dir / "ceremony.json").read_text())["crl_number"]
        self._publish(self.out_dir / f"root-{number}.json")
        self.say(f"the ceremony signed root CRL #{number} ({len(state['root_revoked'])} revoked)")

    def _ceremony(self, *args: str) -> None:
        command = [
            sys.executable, "-m", "services.signing.ceremony_cli", args[0], "--token-label", LABEL,
            "--pin-file", str(self.pin_file), "--out", str(self.out_dir), "--module", str(softhsm.MODULE), *args[1:],
        ]  # fmt: skip
        env = {**self.env, "SOFTHSM2_CONF": str(self._config)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"certbus-ceremony {args[0]} failed: {done.stderr.strip()}")

    def _publish(self, artifact: Path) -> None:
        """Co-sign and submit a ceremony command, once per start (signing takes a copy it already
        adopted as a no-op)."""
        if artifact.name in self._published:
            return
        signed = {s["operator"] for s in json.loads(artifact.read_text()).get("signatures", [])}
        if self.env.get("CERTBUS_OPERATOR", "operator") not in signed:
            self._cli("operator", "cosign", str(artifact))
        self._cli("operator", "submit", str(artifact))
        self._published.add(artifact.name)

    def _state(self) -> dict[str, Any] | None:
        """`certbus ca root --json`: the root signing adopted, the key it waits with, the root CRL
        (None while signing does not answer)."""
        done = self._cli("ca", "root", "--json", check=False)
        if done.returncode not in (0, 1) or not done.stdout.strip():
            return None
        state: dict[str, Any] = json.loads(done.stdout)
        return state

    def _cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "shared.client.cli.main", *args]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"certbus {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done
