"""Signed checkpoints of the audit hash chain, with audit's own Ed25519 key (never a CA key).

Every `checkpoint_every_events` archived events, or every `checkpoint_interval_s`, audit signs
(stream, sequence, chain hash, time) and publishes `AuditCheckpointSigned`. A checkpoint that
only would cover other checkpoints is skipped, so an idle log does not grow.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from services.audit import store
from shared.base.files import write_new
from shared.base.settings import AuditSettings
from shared.contract.events import AuditCheckpointSigned, checkpoint_message
from shared.pki.crypto import key_pem
from shared.runtime.loops import WakeableLoop
from shared.runtime.outbox import enqueue
from shared.runtime.service import Runtime

log = logging.getLogger("certbus.audit.checkpoints")
NAME = "audit"


def load_or_create_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Audit's checkpoint key (PKCS#8 PEM, mode 0600), created on first start."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ed25519.Ed25519PrivateKey.generate()
    try:
        write_new(path, key_pem(key))
    except FileExistsError:  # another replica created it just now
        return load_or_create_key(path)
    log.info("created the audit checkpoint key", extra={"path": str(path)})
    return key


def public_key_b64(key: ed25519.Ed25519PrivateKey) -> str:
    """The raw public key, base64 (what checkpoints carry and verifiers pin)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class Checkpointer:
    """Signs the chain head when enough has been archived since the last checkpoint, or on a timer."""

    def __init__(self, rt: Runtime, settings: AuditSettings) -> None:
        self._rt = rt
        self._settings = settings
        self._key = load_or_create_key(settings.checkpoint_key_file)
        self.public_key = public_key_b64(self._key)
        self.loop = WakeableLoop("audit-checkpoints", self.sign_due, idle_s=settings.checkpoint_interval_s)
        self._since = 0

    def archived(self, count: int) -> None:
        """Say `count` more events were archived (wakes the loop every `checkpoint_every_events`)."""
        self._since += count
        if self._since >= self._settings.checkpoint_every_events:
            self._since = 0
            self.loop.wake()

    async def sign_due(self) -> AuditCheckpointSigned | None:
        """Sign the chain head if events other than checkpoints were archived since the last one."""
        rt = self._rt
        async with rt.pool.acquire() as conn, conn.transaction():
            head = await store.checkpoint_due(conn, AuditCheckpointSigned.__name__)
            if head is None:
                return None
            seq, chain_hash, events = head
            signed_at = rt.clock.now()
            hex_hash = chain_hash.hex()
            signature = self._key.sign(checkpoint_message(rt.settings.stream, seq, hex_hash, signed_at))
            saved = await store.save_checkpoint(
                conn,
                seq,
                chain_hash=chain_hash,
                signed_at=signed_at,
                signature=signature,
                public_key=self._key.public_key(),
            )
            if not saved:
                return None  # another replica signed this position
            event = AuditCheckpointSigned.first(
                str(seq),
                producer=NAME,
                at=signed_at,
                correlation_id=f"checkpoint-{seq}",
                stream_seq=seq,
                chain_hash=hex_hash,
                events=events,
                signed_at=signed_at,
                public_key=self.public_key,
                signature=base64.b64encode(signature).decode(),
            )
            entry = await enqueue(conn, event, rt.root)
        await rt.publish_pending([entry])
        log.info("signed an audit checkpoint", extra={"seq": seq, "hash": hex_hash[:16]})
        return event
