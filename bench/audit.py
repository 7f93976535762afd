"""`make bench` (audit part): archive, verify and replay rates over a log of AUDIT_N events.

AUDIT_N (default 100,000) realistic lifecycle events (request, approval, issuance with a real
certificate, some revocations) are published straight to a fresh stream; then the audit service
archives them live, `audit verify` checks them and `audit replay` rebuilds the archive from
sequence 1. Reference, measured in the same run: hashing the same bytes into the chain in one
process with nothing else (SHA-256 over sequence, subject and payload). Read ratios, not absolutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nats
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from bench.environment import bench_harness, save_result
from harness import Harness
from services.audit import domain
from services.signing import domain as signing
from shared.crypto import generate_key, signing_hash
from shared.events import (
    CaCreated,
    CertificateIssued,
    CertificateRevoked,
    CrlPublished,
    EnrollmentApproved,
    EnrollmentRequested,
    Event,
    ProfileApplied,
)
from shared.profiles import Profile
from shared.settings import CommonSettings
from shared.stream import ensure_object_store, stream_config

N = int(os.environ.get("AUDIT_N", "100000"))


@dataclass
class BenchLog:
    """A realistic log: events in order, and the objects (CRLs) its events point at."""

    events: list[tuple[str, bytes]]
    objects: dict[str, bytes] = field(default_factory=dict)


def realistic_log(n: int, root: str, bucket: str) -> BenchLog:
    """About n events: the CA, the profile, per certificate a request, an approval under that
    profile version and an issuance of its own real certificate (1 in 10 revoked), and at the end a
    CRL listing every revocation (its DER for the object store): what `audit check` expects."""
    now = datetime.now(UTC).replace(microsecond=0)
    ca_key = generate_key("ec-p256")
    ca = signing.CaIdentity("bench", signing.root_certificate(ca_key, "bench", "Bench", now, 365))
    leaf_key = generate_key("ec-p256")
    plan = signing.plan_leaf(ca, 30, now)
    profile = Profile(name="tls-server", usage="server", dns_suffixes=["internal"])
    urls = signing.Urls("http://127.0.0.1:8440")
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(leaf_key, signing_hash(leaf_key))
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    ca_pem = ca.cert.public_bytes(serialization.Encoding.PEM).decode()
    setup: list[Event] = [
        CaCreated(
            aggregate_id="bench",
            occurred_at=now,
            correlation_id="bench",
            producer="signing",
            ca_id="bench",
            role="root",
            parent_id=None,
            subject_dn=ca.cert.subject.rfc4514_string(),
            cert_pem=ca_pem,
            not_before=ca.cert.not_valid_before_utc,
            not_after=ca.cert.not_valid_after_utc,
            spki_sha256="0" * 64,
        ),
        ProfileApplied(
            aggregate_id=profile.name,
            occurred_at=now,
            correlation_id="bench",
            producer="operator",
            profile=profile,
            digest=profile.digest(),
            applied_by="bench",
        ),
    ]
    out: list[tuple[str, bytes]] = [(e.subject(root), e.model_dump_json().encode()) for e in setup]
    revoked: dict[str, signing.RevokedEntry] = {}
    i = 0
    while len(out) < n - 1:
        rid = str(uuid.uuid4())
        names = [f"svc{i}.bench.internal"]
        leaf = signing.leaf_builder(
            profile, signing.Sans(tuple(names)), leaf_key.public_key(), ca, signing.plan_leaf(ca, 30, now), urls
        ).sign(ca_key, signing_hash(ca_key))
        pem = leaf.public_bytes(serialization.Encoding.PEM).decode()
        serial = format(leaf.serial_number, "x")
        common = {"aggregate_id": rid, "occurred_at": now, "correlation_id": rid}
        batch: list[Event] = [
            EnrollmentRequested(
                **common, producer="requester", csr_pem=csr_pem, token="t", token_proof="p", requester="bench"
            ),
            EnrollmentApproved(
                **common,
                producer="enrollment",
                csr_pem=csr_pem,
                profile="tls-server",
                dns_names=names,
                validity_days=30,
                provisioner_id="p",
                token_id=rid,
                requester="bench",
                profile_digest=profile.digest(),
            ),
            CertificateIssued(
                **common,
                producer="signing",
                serial=serial,
                issuer_id="bench",
                profile="tls-server",
                cert_pem=pem,
                chain_pem=pem,
                not_before=plan.not_before,
                not_after=plan.not_after,
                dns_names=names,
                spki_sha256="0" * 64,
                fingerprint_sha256="0" * 64,
            ),
        ]
        if i % 10 == 0:
            revoked[serial] = signing.RevokedEntry(leaf.serial_number, now, "superseded")
            batch.append(
                CertificateRevoked(
                    **common,
                    producer="revocation",
                    serial=serial,
                    issuer_id="bench",
                    reason="superseded",
                    revoked_at=now,
                    revocation_request_id=rid,
                    requested_by="b",
                )
            )
        out += [(e.subject(root), e.model_dump_json().encode()) for e in batch]
        i += 1
    out = out[: n - 1]
    listed = [revoked[json.loads(raw)["serial"]] for subject, raw in out if subject.endswith(".revoked")]
    der = signing.crl(ca, ca_key, 1, listed, now, now + timedelta(days=7)).public_bytes(serialization.Encoding.DER)
    crl = CrlPublished(
        aggregate_id="bench",
        occurred_at=now,
        correlation_id="bench",
        producer="signing",
        ca_id="bench",
        crl_number=1,
        this_update=now,
        next_update=now + timedelta(days=7),
        revoked_count=len(listed),
        object_bucket=bucket,
        object_name="bench-1.crl",
        sha256=hashlib.sha256(der).hexdigest(),
        size=len(der),
    )
    out.append((crl.subject(root), crl.model_dump_json().encode()))
    return BenchLog(out, {crl.object_name: der})


async def publish(h: Harness, log: BenchLog) -> float:
    """Put the log's objects in the object store, then publish its events in order on one
    connection (core publishes, then wait until the stream holds them all: concurrent JetStream
    publishes could reorder them); returns events per second."""
    settings = CommonSettings(**h.common)
    nc = await nats.connect(h.nats_url)
    js = nc.jetstream()
    await js.add_stream(stream_config(settings))
    await ensure_object_store(js, settings)
    bucket = await js.object_store(settings.crl_bucket)
    for name, data in log.objects.items():
        await bucket.put(name, data)
    start = time.perf_counter()
    for at, (subject, data) in enumerate(log.events):
        await nc.publish(subject, data, headers={"Nats-Msg-Id": str(uuid.uuid4())})
        if at % 1000 == 999:
            await nc.flush()
    await nc.flush()
    while (await js.stream_info(h.common["stream"])).state.messages < len(log.events):
        await asyncio.sleep(0.05)
    rate = len(log.events) / (time.perf_counter() - start)
    await nc.close()
    return rate


def reference_rate(events: list[tuple[str, bytes]]) -> float:
    """Chain hashes per second for the same bytes, in this process, nothing else."""
    start, current = time.perf_counter(), domain.GENESIS
    for seq, (subject, raw) in enumerate(events, start=1):
        current = domain.link(current, seq, subject, raw)
    return len(events) / (time.perf_counter() - start)


async def main() -> None:
    async with bench_harness() as h:
        print(f"certbus audit bench: {N} events published straight to the stream, audit in-process", flush=True)
        log = await asyncio.to_thread(realistic_log, N, h.root, h.common["crl_bucket"])
        events = log.events
        published = await publish(h, log)
        print(f"  published {len(events)} events at {published:.0f}/s", flush=True)
        start = time.perf_counter()
        # pkilint of 25,000 certificates (~7.5 ms each) or checks every second would measure something else
        h.overrides["audit"] = {"lint_after_issuance": False, "check_interval_s": 3600.0}
        await h.start("audit")
        pool = await h.db()
        while (await pool.fetchval("SELECT seq FROM audit.chain_head")) < len(events):
            await asyncio.sleep(0.2)
        archive_rate = len(events) / (time.perf_counter() - start)
        async with h.client() as c:
            verified = await c.verify()
            replayed = await c.replay()
            checked = await c.check()
        ref = reference_rate(events)
        assert verified.clean, verified.problems[:3]
        assert replayed.equal
        assert checked.findings == [], checked.findings[:3]
        check_rate = checked.events / checked.seconds
        result = {
            "events": len(events),
            "archive_live_events_per_s": round(archive_rate, 1),
            "verify_events_per_s": verified.rate_per_s,
            "replay_events_per_s": replayed.rate_per_s,
            "check_events_per_s": round(check_rate, 1),
            "reference_chain_hashes_per_s": round(ref, 1),
            "ratio_replay_over_reference": round(replayed.rate_per_s / ref, 4),
            "ratio_verify_over_reference": round(verified.rate_per_s / ref, 4),
        }
        print(f"audit archive, live: {archive_rate:.0f} events/s")
        print(f"audit verify (chain + checkpoints + stream comparison): {verified.rate_per_s:.0f} events/s, clean")
        print(f"audit replay from sequence 1: {replayed.rate_per_s:.0f} events/s, equal to the live archive")
        print(f"audit check (all consistency checks, certificates re-read, CRL fetched): {check_rate:.0f} events/s")
        print(f"reference (chain hashing alone, one process): {ref:.0f} events/s")
        print(
            f"ratios to the reference: replay {result['ratio_replay_over_reference']}, "
            f"verify {result['ratio_verify_over_reference']}"
        )
        save_result("audit", result)


if __name__ == "__main__":
    asyncio.run(main())
