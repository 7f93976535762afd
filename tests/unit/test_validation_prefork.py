"""What validation's health says about its OCSP workers (prefork), without starting any."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_ocsp import _make_pki

from services.validation import ipc
from services.validation.ocsp import ResponderSet
from services.validation.prefork import SILENT_AFTER_S, OcspWorkers
from shared.base.settings import ValidationSettings


async def _no_answer(what: str) -> Any:
    raise AssertionError(what)


@pytest.fixture
def workers(tmp_path: Path) -> OcspWorkers:
    pki = _make_pki(tmp_path, "ca-a", ec.generate_private_key(ec.SECP256R1()))
    settings = ValidationSettings(http_port=8440, ocsp_workers=3, ocsp_key_dir=tmp_path)
    return OcspWorkers(settings, ResponderSet([pki.responder]), _no_answer)


def _running(workers: OcspWorkers, index: int, pid: int, **report: Any) -> None:
    worker = workers.workers[index - 1]
    worker.proc = SimpleNamespace(pid=pid)  # type: ignore[assignment]
    served = ipc.served(workers.responders)
    worker.report = {"ready": True, "missing": [], "served": served, **report}
    worker.reported = time.monotonic()


def test_n_minus_one_workers_for_n_processes(workers: OcspWorkers) -> None:
    assert [w.index for w in workers.workers] == [1, 2]


def test_every_worker_ready_with_the_current_responders_is_nothing_missing(workers: OcspWorkers) -> None:
    _running(workers, 1, 101)
    _running(workers, 2, 102)
    assert workers.missing() == []
    assert [(f["worker"], f["pid"], f["ready"]) for f in workers.facts()] == [(1, 101, True), (2, 102, True)]


def test_a_worker_not_running_starting_silent_unready_or_behind_is_missing(workers: OcspWorkers) -> None:
    workers.workers[0].exited = "was killed by SIGKILL"
    _running(workers, 2, 102, ready=False, missing=["its status polls fail (TimeoutError)"])
    assert workers.missing() == [
        "OCSP worker 1 was killed by SIGKILL; starting it again",
        "OCSP worker 2 (pid 102) cannot serve: its status polls fail (TimeoutError)",
    ]
    _running(workers, 1, 101)
    workers.workers[0].report = None
    _running(workers, 2, 102, served={"ca-a": "1"})
    assert workers.missing() == [
        "OCSP worker 1 (pid 101) is starting",
        "OCSP worker 2 (pid 102) does not serve the current responder of CA ca-a yet",
    ]
    _running(workers, 1, 101)
    workers.workers[0].reported -= SILENT_AFTER_S + 1
    _running(workers, 2, 102)
    assert workers.missing() == ["OCSP worker 1 (pid 101) has not reported for 4 s"]


def test_workers_need_a_fixed_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fixed CERTBUS_HTTP_PORT"):
        OcspWorkers(
            ValidationSettings(http_port=0, ocsp_workers=2, ocsp_key_dir=tmp_path), ResponderSet([]), _no_answer
        )
