"""CA retirement's pure parts: who may be retired, the final CRL's nextUpdate, and key destruction on disk."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from pki_builders import NOW
from services.signing import domain as signing
from services.signing.domain import CaRecord
from services.signing.keystore import KeyStore, KeyStoreError
from shared.base.files import destroy_file

PASSPHRASE = b"unit-test-passphrase-0123456789"
ROOT = CaRecord("root1", "root", "active", None)
OLD = CaRecord("old", "issuing", "retired", "root1")
CURRENT = CaRecord("cur", "issuing", "active", "root1")
SPARE = CaRecord("spare", "issuing", "active", "root1")


def _codes(ca_id: str, cas: list[CaRecord]) -> list[str]:
    return [r.code for r in signing.retirement_problems(ca_id, cas)]


def test_the_current_issuing_ca_may_be_retired_when_its_root_can_replace_it() -> None:
    assert _codes("cur", [CURRENT, OLD, ROOT]) == []


def test_an_older_active_issuing_ca_may_be_retired() -> None:
    assert signing.current_issuing([CURRENT, SPARE, ROOT]) == "cur"
    assert _codes("spare", [CURRENT, SPARE, ROOT]) == []


def test_an_unknown_ca_is_refused_naming_the_known_ones() -> None:
    [reason] = signing.retirement_problems("nope", [CURRENT, ROOT])
    assert reason.code == "ca_unknown"
    assert "cur (issuing, active)" in reason.message and "root1 (root, active)" in reason.message


def test_an_already_retired_ca_is_refused() -> None:
    assert _codes("old", [CURRENT, OLD, ROOT]) == ["ca_already_retired"]


def test_a_compromised_ca_is_refused() -> None:
    assert _codes("bad", [CURRENT, CaRecord("bad", "issuing", "compromised", "root1"), ROOT]) == ["ca_not_active"]


def test_a_root_with_an_active_issuing_ca_is_refused_naming_it() -> None:
    [reason] = signing.retirement_problems("root1", [CURRENT, OLD, ROOT])
    assert reason.code == "ca_has_live_issuing_cas"
    assert "cur" in reason.message and "old" not in reason.message


def test_a_root_whose_issuing_cas_are_all_closed_may_be_retired() -> None:
    compromised = CaRecord("bad", "issuing", "compromised", "root1")
    other_root_child = CaRecord("x", "issuing", "active", "root2")
    assert _codes("root1", [other_root_child, compromised, OLD, ROOT]) == []


def test_the_current_issuing_ca_under_a_closed_root_is_refused() -> None:
    closed_root = CaRecord("root1", "root", "compromised", None)
    assert _codes("cur", [CURRENT, closed_root]) == ["ca_no_replacement"]


def test_the_final_crl_lasts_until_the_ca_expires(issuing: signing.CaIdentity) -> None:
    assert signing.final_crl_next_update(issuing.cert, NOW, timedelta(days=7)) == issuing.cert.not_valid_after_utc


def test_the_final_crl_of_an_expired_ca_lasts_the_usual_crl_validity(issuing: signing.CaIdentity) -> None:
    late = issuing.cert.not_valid_after_utc + timedelta(days=1)
    assert signing.final_crl_next_update(issuing.cert, late, timedelta(days=7)) == late + timedelta(days=7)


def test_destroying_a_key_file_overwrites_and_syncs_before_it_unlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(b"S" * 100_000)
    calls: list[str] = []
    real_unlink, real_fsync = os.unlink, os.fsync

    def unlink(target: str | os.PathLike[str]) -> None:
        content = Path(target).read_bytes()
        calls.append("unlink")
        assert len(content) == 100_000 and b"SSSSSSSS" not in content
        real_unlink(target)

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "fsync", fsync)
    assert destroy_file(path) is True
    assert not path.exists()
    assert calls == ["fsync", "unlink", "fsync"]  # the overwrite, then the directory entry


def test_a_destroyed_key_cannot_be_loaded_again(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys", PASSPHRASE)
    keys.save("ca1", ec.generate_private_key(ec.SECP256R1()))
    keys.load("ca1")
    assert keys.destroy("ca1").existed is True
    assert not keys.has("ca1") and list((tmp_path / "keys").iterdir()) == []
    with pytest.raises(KeyStoreError, match="no key file for CA ca1"):
        keys.load("ca1")  # not served from memory either
    assert keys.destroy("ca1").existed is False  # a second destruction is a no-op


def test_retain_forgets_keys_of_closed_cas(tmp_path: Path) -> None:
    keys = KeyStore(tmp_path, PASSPHRASE)
    kept, dropped = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys.save("kept", kept)
    keys.save("dropped", dropped)
    keys.retain(["kept"])
    assert keys.load("kept") is kept
    assert keys.load("dropped") is not dropped  # decrypted again from its file, not the old object
