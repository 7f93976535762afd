"""What validation's process and its OCSP workers tell each other over the socket pair between them
(never the command line, never a log line: the responder keys travel here).

A frame is a 4-byte big-endian length and a JSON object with an `op`. From the service's process to
a worker: `config` (first), `responders` (every issuing CA expected and every responder with its
key, whenever they change) and `reply` (to a worker's `ask`). From a worker: `report` (every
REPORT_EVERY_S: whether it can serve, the responder serials it serves, its OCSP responses since the
last report) and `ask` (the service's health or metrics, for a probe that reached the worker).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.validation.ocsp import Responder, ResponderSet
from shared.pki.crypto import key_pem, serial_hex

REPORT_EVERY_S = 1.0
MAX_FRAME = 16 * 1024 * 1024  # a health report or the metrics text, far below
_LENGTH = struct.Struct(">I")


def frame(message: dict[str, Any]) -> bytes:
    """One frame: the length, then the JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(body)) + body


async def receive(reader: asyncio.StreamReader) -> dict[str, Any]:
    """Read one frame; IncompleteReadError once the other side has closed."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes is over {MAX_FRAME}")
    message = json.loads(await reader.readexactly(length))
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError("a frame without an op")
    return message


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def responders_message(responders: ResponderSet) -> dict[str, Any]:
    """Every issuing CA `responders` expects and every responder it serves, keys included."""
    der = serialization.Encoding.DER
    return {
        "op": "responders",
        "expected": {ca_id: _b64(issuer.public_bytes(der)) for ca_id, issuer in responders.expected().items()},
        "responders": [
            {
                "ca_id": r.ca_id,
                "issuer": _b64(r.issuer.public_bytes(der)),
                "cert": _b64(r.cert.public_bytes(der)),
                "key": key_pem(r.key).decode(),
            }
            for r in responders.current()
        ],
    }


def apply_responders(message: dict[str, Any], responders: ResponderSet) -> None:
    """Expect and serve what a `responders` message holds (a responder already served is kept)."""
    for ca_id, issuer in message["expected"].items():
        responders.expect(ca_id, x509.load_der_x509_certificate(base64.b64decode(issuer)))
    for item in message["responders"]:
        cert = x509.load_der_x509_certificate(base64.b64decode(item["cert"]))
        current = responders.responder(item["ca_id"])
        if current is not None and current.cert == cert:
            continue
        key = serialization.load_pem_private_key(item["key"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"the responder key of CA {item['ca_id']} is not an EC key")
        issuer = x509.load_der_x509_certificate(base64.b64decode(item["issuer"]))
        responders.add(Responder(item["ca_id"], issuer, cert, key))


def served(responders: ResponderSet) -> dict[str, str]:
    """The serial of the responder certificate served for each CA."""
    return {r.ca_id: serial_hex(r.cert) for r in responders.current()}


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs of the service's settings (sent, not read from its environment, so that a
    worker serves exactly what the process that started it was configured with)."""

    index: int
    database_url: str
    http_host: str
    http_port: int
    public_base_url: str
    ocsp_validity_s: int
    ocsp_status_entries: int
    ocsp_response_cache_entries: int
    ocsp_status_changes_keep_s: float
    log_level: str
    log_format: str

    def message(self) -> dict[str, Any]:
        return {"op": "config", **self.__dict__}

    @classmethod
    def of(cls, message: dict[str, Any]) -> WorkerConfig:
        return cls(**{k: v for k, v in message.items() if k != "op"})
