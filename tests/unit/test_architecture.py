"""The architecture's rules, checked on the source: who may touch CA keys, who imports whom."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("shared", "services") for p in (ROOT / d).rglob("*.py")]
PRIVATE_KEY_LOADERS = {"load_pem_private_key", "load_der_private_key", "load_key_and_certificates"}
# Private keys that are not CA keys, loaded where they belong (never a CA key):
NON_CA_KEY_LOADERS = {
    "shared/client/cli/provisioner.py": "the operator's provisioner key, on the operator's side",
    "services/audit/checkpoints.py": "audit's own checkpoint-signing key",
    "services/validation/responder.py": "validation's delegated OCSP responder key",
    "services/validation/ipc.py": "the same OCSP responder key, received by validation's OCSP workers from its process",
    "shared/pki/holder.py": "a certificate holder's own key (revocations, renewals, key-destroyed attestations)",
    "shared/pki/provisioner_keys.py": "a service's own provisioner key (validation's, ACME's), which signs its tokens",
}


# The offline root ceremony (`certbus-ceremony`): signing's code, run where the root's token is.
CEREMONY = "services.signing.ceremony"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _calls_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    imports: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.add(node.module)
            imports.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imports.update(a.name for a in node.names)
    return names, imports


def test_only_the_signing_key_store_loads_private_keys() -> None:
    loaders = {str(p.relative_to(ROOT)) for p in SOURCES if PRIVATE_KEY_LOADERS & _calls_and_imports(p)[0]}
    assert loaders == {"services/signing/keystore.py", *NON_CA_KEY_LOADERS}


def test_only_signing_imports_the_key_store() -> None:
    importers = {
        _module(p) for p in SOURCES if any(i.startswith("services.signing.keystore") for i in _calls_and_imports(p)[1])
    }
    assert importers and all(m.startswith("services.signing.") for m in importers)


def test_only_the_pkcs11_key_store_talks_to_a_token() -> None:
    users = {str(p.relative_to(ROOT)) for p in SOURCES if any(i.startswith("pkcs11") for i in _calls_and_imports(p)[1])}
    assert users == {"services/signing/hsm.py"}


def test_only_signing_s_composition_root_opens_the_token_key_store() -> None:
    importers = {
        _module(p) for p in SOURCES if any(i.startswith("services.signing.hsm") for i in _calls_and_imports(p)[1])
    }
    assert importers == {"services.signing.app", CEREMONY}  # the online service, and the offline ceremony


def test_no_service_imports_another_service() -> None:
    for path in SOURCES:
        parts = _module(path).split(".")
        if parts[0] != "services" or len(parts) < 3:
            continue
        own = f"services.{parts[1]}"
        foreign = {i for i in _calls_and_imports(path)[1] if i.startswith("services.") and not i.startswith(own)}
        assert not foreign, f"{_module(path)} imports {foreign}"


def test_shared_code_never_imports_a_service() -> None:
    for path in (ROOT / "shared").rglob("*.py"):
        assert not {i for i in _calls_and_imports(path)[1] if i.startswith("services")}, path


def test_the_import_linter_contracts_hold() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = {
        line.removesuffix(" KEPT") for line in result.stdout.replace(" \n", " ").splitlines() if line.endswith(" KEPT")
    }
    assert {
        "Services never import one another",
        "Shared code never imports a service",
        "Shared code in layers: admin over runtime | client over trust over pki over contract | base",
        "The contract imports nothing of ours",
        "Services use the client side only through shared.client.api",
    } <= kept, result.stdout
    assert "5 kept, 0 broken" in result.stdout
