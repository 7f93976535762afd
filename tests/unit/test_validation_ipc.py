"""What validation's process tells its OCSP workers: frames, and the responders with their keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_ocsp import _make_pki

from services.validation import ipc
from services.validation.ocsp import ResponderSet
from shared.base.settings import ValidationSettings


async def _through_a_stream(*messages: dict[str, object]) -> list[dict[str, object]]:
    reader = asyncio.StreamReader()
    for message in messages:
        reader.feed_data(ipc.frame(message))
    reader.feed_eof()
    received = [await ipc.receive(reader) for _ in messages]
    with pytest.raises(asyncio.IncompleteReadError):
        await ipc.receive(reader)
    return received


async def test_frames_arrive_as_sent_and_the_end_of_the_channel_is_an_incomplete_read() -> None:
    sent = [{"op": "ask", "id": 1, "what": "health"}, {"op": "report", "ready": True, "missing": []}]
    assert await _through_a_stream(*sent) == sent


async def test_a_frame_without_an_op_is_refused() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(ipc.frame({"what": "health"}))
    with pytest.raises(ValueError, match="without an op"):
        await ipc.receive(reader)


def test_a_worker_serves_the_responders_and_expects_the_issuers_of_the_service(tmp_path: Path) -> None:
    pki = _make_pki(tmp_path / "a", "ca-a", ec.generate_private_key(ec.SECP256R1()))
    waiting = _make_pki(tmp_path / "b", "ca-b", ec.generate_private_key(ec.SECP256R1()))
    service = ResponderSet([pki.responder])
    service.expect("ca-b", waiting.issuing.cert)
    worker = ResponderSet([])
    ipc.apply_responders(ipc.responders_message(service), worker)
    served = worker.responder("ca-a")
    assert served is not None and served.cert == pki.responder.cert
    assert ipc.served(worker) == ipc.served(service)
    assert worker.expected().keys() == {"ca-b"}
    # The same message again keeps the responder (and its cache) as it is.
    ipc.apply_responders(ipc.responders_message(service), worker)
    assert worker.responder("ca-a") is served


def test_a_change_of_responders_is_announced(tmp_path: Path) -> None:
    pki = _make_pki(tmp_path, "ca-a", ec.generate_private_key(ec.SECP256R1()))
    changes: list[str] = []
    responders = ResponderSet([])
    responders.on_change = lambda: changes.append("changed")
    responders.expect("ca-a", pki.issuing.cert)
    responders.add(pki.responder)
    assert changes == ["changed", "changed"]


def test_the_worker_config_survives_its_message() -> None:
    config = ipc.WorkerConfig(
        index=2,
        database_url="postgresql://postgres@127.0.0.1:5432/certbus",
        http_host="127.0.0.1",
        http_port=8440,
        public_base_url="http://127.0.0.1:8440/pki",
        ocsp_validity_s=3600,
        ocsp_status_entries=10,
        ocsp_response_cache_entries=20,
        ocsp_status_changes_keep_s=600.0,
        log_level="INFO",
        log_format="json",
    )
    assert ipc.WorkerConfig.of(config.message()) == config


def test_one_responder_process_by_default_and_one_at_least() -> None:
    assert ValidationSettings.model_fields["ocsp_workers"].default == 1
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ValidationSettings(ocsp_workers=0)
