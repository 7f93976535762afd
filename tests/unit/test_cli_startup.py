"""`certbus --help` starts fast: it never imports what only a running command needs."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Runs the CLI as `certbus ARGS` would, then names every module it imported (on stderr).
PROBE = """
import runpy, sys
sys.argv = ["certbus", *sys.argv[1:]]
try:
    runpy.run_module("shared.client.cli.main", run_name="__main__")
except SystemExit:
    pass
print(*sorted(sys.modules), sep="\\n", file=sys.stderr)
"""
# NATS (and aiohttp under it), the SDK and the agent, the contract's models, settings, cryptography,
# PostgreSQL, pkilint. Not pydantic itself: typer coerces a command's parameters with it.
HEAVY = (
    "nats",
    "aiohttp",
    "asyncpg",
    "faststream",
    "pydantic_settings",
    "cryptography",
    "jwt",
    "nkeys",
    "pkilint",
    "rich.progress",
    "shared.base.settings",
    "shared.client.sdk",
    "shared.client.agent",
    "shared.contract.events",
    "shared.contract.queries",
    "shared.pki.crypto",
    "shared.pki.lint",
    "shared.pki.tokens",
    "shared.trust",
)


def imported_by(*args: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Usage:" in result.stdout, result.stdout + result.stderr
    return set(result.stderr.splitlines())


@pytest.mark.parametrize("args", [["--help"], ["audit", "--help"], ["enroll", "--help"], ["revoke", "--help"]])
def test_help_imports_none_of_the_heavy_modules(args: list[str]) -> None:
    modules = imported_by(*args)
    assert "shared.client.cli.main" in modules or "typer" in modules
    loaded = sorted(m for m in modules if any(m == heavy or m.startswith(heavy + ".") for heavy in HEAVY))
    assert loaded == []
