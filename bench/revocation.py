"""`make bench` (revocation part): OCSP throughput, revocation propagation, CRL size, CA compromise.

The five services run as processes on a throwaway NATS and database. Then:
1. SEED (default 1,000,000, the scale the targets name) certificates of the issuing CA are written into revocation's and
   validation's read models (what they would hold after that many issuances; issuing them one by
   one through signing would take the bench a quarter of an hour), and PROBES certificates are
   issued through the real pipeline.
2. Propagation, one revocation at a time (an operator's order): from publishing it to validation's
   OCSP (HTTP) answering `revoked`, and to the CRL its certificate names (its shard's, at the URL of
   its CRL distribution point) served over HTTP listing it. p50 / p99.
3. OCSP responses per second over HTTP, cached (no nonce, the same 20,000 serials round-robin,
   each asked once before of every OCSP process, so that every response is signed and cached first)
   and with a nonce (signed
   afresh each time), CONCURRENCY clients. Reference, same
   run: the responder core answering the same requests in this process, nothing else.
4. CRLs with BENCH_CRL_REVOKED (default 100,000, or SEED if fewer) revoked entries spread over the issuing CA's shards
   (serial mod crl_shards): those revocations are written into signing's table (signing then
   republishes every shard: the time until all are on the log is reported), then PROBES real
   revocations one at a time; time until the CRL at the certificate's URL lists it (p50 / p99),
   and the time each of those shard republishes took inside signing (lock, read its revocations,
   build, sign, store, commit, on the log: signing's "CRL on the log" lines). Reference: building
   and signing one shard's CRL, and the whole issuer's unsharded CRL, in this process.
5. CA compromise with SEED + PROBES certificates: `certbus ca compromise`; time until revocation has
   revoked them all (committed), until validation answers `revoked` for them, until every
   CertificateRevoked is on the log.
Validation runs CERTBUS_OCSP_WORKERS responder processes on its port (BENCH_OCSP_WORKERS, default the
setting's default; 1 for the service's process alone, to compare).
BENCH_PARTS=crl runs steps 1, 2 and 4 only. Read medians and ratios: the machine is a shared 2-core box.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bench import ocsp_load
from bench.environment import bench_harness, save_result
from bench.procs import tree_pss_kib
from harness import Harness, eventually
from services.signing import domain as signing
from services.validation import ocsp as responder_core
from shared.base.settings import SigningSettings, ValidationSettings
from shared.contract.events import CertificateIssued
from shared.pki.crypto import generate_key

SEED = int(os.environ.get("BENCH_SEED", "1000000"))  # the targets' scale: 1M issued
PROBES = int(os.environ.get("BENCH_PROBES", "40"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
OCSP_SECONDS = float(os.environ.get("BENCH_OCSP_SECONDS", "5"))
OCSP_HEADERS = {"Content-Type": "application/ocsp-request"}
PARTS = os.environ.get("BENCH_PARTS", "all")
CRL_REVOKED = int(os.environ.get("BENCH_CRL_REVOKED", str(min(SEED, 100_000))))  # of the SEED, on the CRLs: 100k
CRL_SHARDS = int(os.environ.get("BENCH_CRL_SHARDS", SigningSettings.model_fields["crl_shards"].default))
CRL_BATCH_S = SigningSettings.model_fields["crl_batch_s"].default
OCSP_WORKERS = int(os.environ.get("BENCH_OCSP_WORKERS", ValidationSettings.model_fields["ocsp_workers"].default))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def ocsp_request(issuer: x509.Certificate, serial: int, nonce: bool = False) -> bytes:
    """An OCSP request (SHA-1 CertID, as openssl sends) for `serial` of `issuer`."""
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(issuer.subject.public_bytes())
    key_bytes = issuer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki = serialization.load_der_public_key(key_bytes)
    key_hash = x509.SubjectKeyIdentifier.from_public_key(spki).digest  # type: ignore[arg-type]
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash.finalize(), key_hash, serial, hashes.SHA1())
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(secrets.token_bytes(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


async def seed_certificates(h: Harness, issuer_id: str, n: int) -> list[int]:
    """Write n live certificates of `issuer_id` into revocation's and validation's read models."""
    pool = await h.db()
    serials = [x509.random_serial_number() for _ in range(n)]
    hexes = [format(s, "x") for s in serials]
    ids = [f"seed-{i}" for i in range(n)]
    now = datetime.now(UTC)
    after = now + timedelta(days=30)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO revocation.certificates (serial, cert_id, issuer_id, not_after, spki_sha256) "
            "SELECT s, c, $3, $4, md5(s) FROM unnest($1::text[], $2::text[]) AS t(s, c)",
            hexes,
            ids,
            issuer_id,
            after,
        )
        await conn.execute(
            "INSERT INTO validation.certificates (serial, cert_id, issuer_id, status, not_before, not_after) "
            "SELECT s, c, $3, 'good', $4, $5 FROM unnest($1::text[], $2::text[]) AS t(s, c)",
            hexes,
            ids,
            issuer_id,
            now,
            after,
        )
    return serials


async def ocsp_status(session: aiohttp.ClientSession, url: str, request: bytes) -> ocsp.OCSPCertStatus | None:
    async with session.post(url, data=request, headers=OCSP_HEADERS) as response:
        answer = ocsp.load_der_ocsp_response(await response.read())
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return None
    return answer.certificate_status


def crl_lists(crl_url: str, serial: int) -> bool:
    """Whether the CRL served at `crl_url` lists `serial`."""
    return x509.load_der_x509_crl(_fetch(crl_url)).get_revoked_certificate_by_serial_number(serial) is not None


def crl_url(issued: CertificateIssued) -> str:
    """The URL of the CRL a certificate names (its shard's)."""
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    [point] = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    return str((point.full_name or [])[0].value)


async def propagation(
    h: Harness, session: aiohttp.ClientSession, issuer: x509.Certificate, certs: list[tuple[str, str]]
) -> tuple[list[float], list[float]]:
    """Revoke each (serial, CRL URL) in turn; seconds until OCSP says revoked and until the CRL at
    that URL lists it."""
    base = f"http://127.0.0.1:{h.http_ports['validation']}"
    to_ocsp, to_crl = [], []
    async with h.client("operator") as c:
        for serial, url in certs:
            request = ocsp_request(issuer, int(serial, 16))
            start = time.perf_counter()
            revoking = asyncio.create_task(c.revoke_as_operator(serial, "keyCompromise", operator="operator"))
            ocsp_at = crl_at = None
            while ocsp_at is None or crl_at is None:
                if ocsp_at is None and await ocsp_status(session, f"{base}/ocsp", request) == (
                    ocsp.OCSPCertStatus.REVOKED
                ):
                    ocsp_at = time.perf_counter()
                if crl_at is None and await asyncio.to_thread(crl_lists, url, int(serial, 16)):
                    crl_at = time.perf_counter()
                if time.perf_counter() - start > 60:
                    raise RuntimeError(f"revocation of {serial} did not propagate in 60 s")
                await asyncio.sleep(0.002)
            await revoking
            to_ocsp.append(ocsp_at - start)
            to_crl.append(crl_at - start)
    return to_ocsp, to_crl


async def ocsp_rate(url: str, requests: list[bytes], seconds: float, fresh: bool, issuer: x509.Certificate) -> float:
    """Responses per second from CONCURRENCY clients over HTTP for `seconds`."""
    done = 0
    deadline = time.perf_counter() + seconds
    serials = [ocsp.load_der_ocsp_request(r).serial_number for r in requests]

    async def client(offset: int) -> None:
        nonlocal done
        async with aiohttp.ClientSession() as session:
            i = offset
            while time.perf_counter() < deadline:
                body = (
                    ocsp_request(issuer, serials[i % len(serials)], nonce=True)
                    if fresh
                    else requests[i % len(requests)]
                )
                async with session.post(url, data=body, headers=OCSP_HEADERS) as response:
                    await response.read()
                    assert response.status == 200
                done += 1
                i += CONCURRENCY

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


async def warm(base: str, requests: list[bytes], per_process: int = 4) -> None:
    """Ask each request once of every OCSP process, so that each has signed and cached its response.

    A keep-alive connection stays with the process that accepted it (SO_REUSEPORT spreads
    connections, not requests), and /readyz says which process answered (`answered_by` for a
    worker): connect until every process has `per_process` connections, then send every request
    over the connections of each process."""
    by_process: dict[int, list[aiohttp.ClientSession]] = {}
    spare: list[aiohttp.ClientSession] = []
    try:
        for _ in range(500):
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            async with session.get(f"{base}/readyz") as response:
                report = await response.json()
            pid = report.get("answered_by", {}).get("pid", report["pid"])
            mine = by_process.setdefault(pid, [])
            (mine if len(mine) < per_process else spare).append(session)
            processes = 1 + len(report.get("ocsp_workers", []))
            if len(by_process) == processes and all(len(s) == per_process for s in by_process.values()):
                break
        else:
            raise RuntimeError(f"could not reach every OCSP process: {sorted(by_process)}")

        async def client(session: aiohttp.ClientSession, share: list[bytes]) -> None:
            for body in share:
                async with session.post(f"{base}/ocsp", data=body, headers=OCSP_HEADERS) as response:
                    await response.read()
                    assert response.status == 200

        await asyncio.gather(
            *(client(c, requests[k::per_process]) for sessions in by_process.values() for k, c in enumerate(sessions))
        )
    finally:
        for session in [*spare, *(c for sessions in by_process.values() for c in sessions)]:
            await session.close()


def reference_ocsp(issuer_key_type: str, requests: list[bytes]) -> tuple[float, float]:
    """The responder core alone, in this process: (cached responses/s, nonce responses/s)."""
    now = datetime.now(UTC)
    ca_key = generate_key(issuer_key_type)  # type: ignore[arg-type]
    ca = signing.CaIdentity("ref", signing.root_certificate(ca_key, "ref", "Bench", now, 365))
    key = generate_key("ec-p256")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ocsp")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    responders = responder_core.ResponderSet(
        [responder_core.Responder("ref", ca.cert, cert, key)], lambda ca_id, serial: responder_core.GOOD
    )
    serials = [ocsp.load_der_ocsp_request(r).serial_number for r in requests]
    cached = [ocsp_request(ca.cert, s) for s in serials]
    for r in cached:
        responders.respond(r, now)
    start = time.perf_counter()
    for r in cached:
        responders.respond(r, now)
    cached_rate = len(cached) / (time.perf_counter() - start)
    fresh = [ocsp_request(ca.cert, s, nonce=True) for s in serials[:2000]]
    start = time.perf_counter()
    for r in fresh:
        responders.respond(r, now)
    return cached_rate, len(fresh) / (time.perf_counter() - start)


@dataclass
class SeededCrls:
    """Step 4's figures."""

    shards: int
    to_crl: list[float]  # seconds, revocation to its shard's CRL over HTTP
    republish_ms: list[float]  # signing's time per shard republish, for those revocations
    all_republished_s: float  # after seeding: every shard republished with its share of SEED
    all_served_s: float  # ... and validation serving every one of them
    shard_bytes: int


async def crl_with_seeded_revocations(
    h: Harness,
    session: aiohttp.ClientSession,
    issuer: x509.Certificate,
    issuer_id: str,
    seeded: list[int],
    probes: list[tuple[str, str]],
) -> SeededCrls:
    """Write len(seeded) revocations into signing's table (each in its shard), wait for signing to
    republish every shard, then time real revocations to their shard's CRL over HTTP."""
    pool = await h.db()
    now = datetime.now(UTC)
    shards = await pool.fetchval("SELECT crl_shards FROM signing.cas WHERE ca_id = $1", issuer_id) or 1
    start = time.perf_counter()
    await pool.execute(
        "INSERT INTO signing.revoked (issuer_id, serial, revoked_at, reason, shard) "
        "SELECT $1, s::numeric, $3, 'superseded', (s::numeric % $4)::int FROM unnest($2::text[]) AS t(s) "
        "ON CONFLICT DO NOTHING",
        issuer_id,
        [str(s) for s in seeded],
        now,
        shards,
    )

    async def all_built() -> bool:
        behind = await pool.fetchval(
            "SELECT count(*) FROM signing.crl_state s WHERE s.ca_id = $1 AND EXISTS "
            "(SELECT 1 FROM signing.revoked r WHERE r.issuer_id = s.ca_id AND r.shard = s.shard "
            "AND r.id > s.built_through)",
            issuer_id,
        )
        return bool(behind == 0)

    async def validation_has_all() -> bool:
        behind = await pool.fetchval(
            "SELECT count(*) FROM signing.crl_state s LEFT JOIN validation.crls v "
            "ON v.ca_id = s.ca_id AND v.shard = s.shard WHERE s.ca_id = $1 "
            "AND (v.crl_number IS NULL OR v.crl_number < s.crl_number)",
            issuer_id,
        )
        return bool(behind == 0)

    await eventually(all_built, timeout=600)
    all_republished = time.perf_counter() - start
    # The seeding's burst of republishes is behind us only once validation holds every new CRL too.
    await eventually(validation_has_all, timeout=600)
    all_served = time.perf_counter() - start
    log_file = h.tmp / "signing.log"
    offset = log_file.stat().st_size
    started = datetime.now(UTC)
    to_ocsp, to_crl = await propagation(h, session, issuer, probes)
    each = "".join(
        f"probe {i} serial {serial} shard {int(serial, 16) % shards}: OCSP {o * 1000:.0f} ms, CRL {c * 1000:.0f} ms\n"
        for i, ((serial, _), o, c) in enumerate(zip(probes, to_ocsp, to_crl, strict=True))
    )
    signing_log = log_file.read_text()[offset:]
    republish_ms = signing_publish_ms(signing_log, issuer_id)
    # Kept to explain a slow probe: when the probes started, and what signing logged meanwhile.
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "revocation-crl-probes.log").write_text(f"probes started {started.isoformat()}\n{each}{signing_log}")
    size = len(await asyncio.to_thread(_fetch, probes[0][1]))
    return SeededCrls(shards, to_crl, republish_ms, all_republished, all_served, size)


_PUBLISH_MS = re.compile(r"CRL on the log .*?issuer=(?P<issuer>\S+) .*?publish_ms=(?P<ms>[0-9.]+)")


def signing_publish_ms(log_text: str, issuer_id: str) -> list[float]:
    """The republish times signing logged ("CRL on the log ... publish_ms=") for `issuer_id`'s CRLs."""
    return [float(m["ms"]) for m in _PUBLISH_MS.finditer(log_text) if m["issuer"] == issuer_id]


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def reference_crl(n: int, shard_url: str | None = None) -> float:
    """Seconds to build and sign a CRL of n entries with `cryptography` in this process."""
    now = datetime.now(UTC)
    key = generate_key("ec-p384")
    ca = signing.CaIdentity("ref", signing.root_certificate(key, "ref", "Bench", now, 365))
    entries = [signing.RevokedEntry(x509.random_serial_number(), now, "superseded") for _ in range(n)]
    start = time.perf_counter()
    crl = signing.crl(ca, key, 1, entries, now, now + timedelta(days=1), shard_url=shard_url)
    crl.public_bytes(serialization.Encoding.DER)
    return time.perf_counter() - start


async def compromise(h: Harness, issuer_id: str, sample: list[int], expected: int) -> dict[str, float]:
    # `expected`: how many certificates of the issuer are revoked in all once the compromise is done.
    """Declare the issuing CA compromised; seconds until revocation committed every revocation, until
    validation answers revoked for a sample, until every CertificateRevoked is on the log."""
    pool = await h.db()
    revocation = h.procs["revocation"].proc
    assert revocation is not None
    before_kib = tree_pss_kib(revocation.pid)
    peak_kib = before_kib
    start = time.perf_counter()
    result = await h.cli("ca", "compromise", issuer_id, "--reason", "bench")  # as the harness's operator
    assert result.returncode == 0, result.stderr
    marks: dict[str, float] = {}

    async def committed() -> bool:
        left = await pool.fetchval(
            "SELECT count(*) FROM revocation.certificates WHERE issuer_id = $1 AND status = 'good'", issuer_id
        )
        return left == 0

    async def validation_sees() -> bool:
        async with h.client() as c:
            return all([(await c.status(format(s, "x"))).status == "revoked" for s in sample])

    async def on_log() -> bool:
        # Every revocation the compromise decided is acknowledged by the stream (the outbox row
        # records it): count the issuer's CertificateRevoked rows still unpublished.
        unpublished = await pool.fetchval(
            "SELECT count(*) FROM revocation.outbox WHERE published_at IS NULL AND subject LIKE '%.revoked'"
        )
        revoked = await pool.fetchval(
            "SELECT count(*) FROM revocation.certificates WHERE issuer_id = $1 AND status = 'revoked'", issuer_id
        )
        return unpublished == 0 and revoked >= expected

    pending = {
        "revocation_committed_s": committed,
        "validation_reports_revoked_s": validation_sees,
        "events_on_log_s": on_log,
    }
    while pending and time.perf_counter() - start < 900:
        for name, check in list(pending.items()):
            if await check():
                marks[name] = round(time.perf_counter() - start, 2)
                del pending[name]
        peak_kib = max(peak_kib, tree_pss_kib(revocation.pid))
        await asyncio.sleep(0.05)
    # Revocation's memory (PSS of the process and its children), sampled every 50 ms or so.
    marks["revocation_memory_before_mib"] = round(before_kib / 1024, 1)
    marks["revocation_memory_peak_mib"] = round(peak_kib / 1024, 1)
    return marks


async def main() -> None:
    # A CA compromise puts a CertificateRevoked (about 1 KB) on the log for every seeded certificate:
    # the harness's log (256 MiB) holds about 200,000 of them, so a larger seed gets room for its own.
    async with bench_harness(stream_max_bytes=max(256, SEED // 500) * 1024**2) as h:
        await run(h)


async def run(h: Harness) -> None:
    print(
        f"certbus revocation bench: {SEED} certificates seeded, {PROBES} probes, five services as processes, "
        f"validation with {OCSP_WORKERS} OCSP process(es)",
        flush=True,
    )
    h.overrides["validation"] = {**h.overrides.get("validation", {}), "ocsp_workers": OCSP_WORKERS}
    # Signing as deployed (the test harness has few shards, a shorter CRL batch interval and logs
    # warnings only; its INFO lines say how long each CRL republish took).
    h.overrides["signing"] = {
        **h.overrides.get("signing", {}),
        "crl_shards": CRL_SHARDS,
        "crl_batch_s": CRL_BATCH_S,
        "log_level": "INFO",
    }
    await asyncio.to_thread(h.spawn_all)
    await h.register_provisioner()
    await h.register_ocsp_provisioner()
    await h.apply_profiles()
    probes = [await h.enroll(f"probe{i}.bench.internal") for i in range(PROBES * 2)]
    issuer_id = probes[0].issuer_id
    issuer = x509.load_pem_x509_certificate(probes[0].chain_pem.encode())
    base = f"http://127.0.0.1:{h.http_ports['validation']}"
    seeded = await seed_certificates(h, issuer_id, SEED)
    print(f"  seeded {SEED} certificates of issuer {issuer_id}", flush=True)
    result: dict[str, Any] = {"seeded_certificates": SEED, "parts": PARTS, "ocsp_workers": OCSP_WORKERS}
    async with aiohttp.ClientSession() as session:
        first = ocsp_request(issuer, int(probes[0].serial, 16))
        await eventually(lambda: ocsp_status(session, f"{base}/ocsp", first), timeout=60)  # responder ready
        to_ocsp, to_crl = await propagation(h, session, issuer, [(p.serial, crl_url(p)) for p in probes[:PROBES]])
        print(
            f"  propagation to OCSP: p50 {pct(to_ocsp, 50) * 1000:.0f} ms p99 {pct(to_ocsp, 99) * 1000:.0f} ms; "
            f"to the CRL: p50 {pct(to_crl, 50) * 1000:.0f} ms p99 {pct(to_crl, 99) * 1000:.0f} ms",
            flush=True,
        )
        result |= {
            "propagation_ocsp_p50_ms": round(pct(to_ocsp, 50) * 1000, 1),
            "propagation_ocsp_p99_ms": round(pct(to_ocsp, 99) * 1000, 1),
            "propagation_crl_p50_ms": round(pct(to_crl, 50) * 1000, 1),
            "propagation_crl_p99_ms": round(pct(to_crl, 99) * 1000, 1),
            "propagation_crl_each_ms": [round(t * 1000) for t in to_crl],
        }
        if PARTS == "all":
            result |= await ocsp_figures(h, session, issuer, seeded)
        crls = await crl_with_seeded_revocations(
            h, session, issuer, issuer_id, seeded[:CRL_REVOKED], [(p.serial, crl_url(p)) for p in probes[PROBES:]]
        )
        ref_shard = await asyncio.to_thread(reference_crl, CRL_REVOKED // crls.shards, crl_url(probes[0]))
        ref_whole = await asyncio.to_thread(reference_crl, CRL_REVOKED)
        print(
            f"  with {CRL_REVOKED} revoked entries over {crls.shards} shards: every shard republished in "
            f"{crls.all_republished_s:.1f} s (served by validation {crls.all_served_s:.1f} s); "
            f"revocation to its shard's CRL over HTTP p50 "
            f"{pct(crls.to_crl, 50) * 1000:.0f} ms p99 {pct(crls.to_crl, 99) * 1000:.0f} ms "
            f"(shard CRL {crls.shard_bytes / 1e3:.0f} kB); a shard's republish in signing p50 "
            f"{pct(crls.republish_ms, 50):.0f} ms p99 {pct(crls.republish_ms, 99):.0f} ms "
            f"({len(crls.republish_ms)} republishes); building and signing one shard's CRL alone "
            f"{ref_shard * 1000:.0f} ms, the whole issuer's unsharded CRL {ref_whole:.2f} s",
            flush=True,
        )
    result |= {
        "crl_shards": crls.shards,
        "crl_seeded_revoked": CRL_REVOKED,
        "crl_at_seed_revoked_p50_ms": round(pct(crls.to_crl, 50) * 1000, 1),
        "crl_at_seed_revoked_p99_ms": round(pct(crls.to_crl, 99) * 1000, 1),
        "crl_at_seed_revoked_probes": len(crls.to_crl),
        "crl_at_seed_revoked_shard_bytes": crls.shard_bytes,
        "crl_shard_republish_p50_ms": round(pct(crls.republish_ms, 50), 1),
        "crl_shard_republish_p99_ms": round(pct(crls.republish_ms, 99), 1),
        "crl_shard_republishes": len(crls.republish_ms),
        "crl_all_shards_republished_s": round(crls.all_republished_s, 2),
        "crl_all_shards_served_s": round(crls.all_served_s, 2),
        "crl_at_seed_revoked_each_ms": [round(t * 1000) for t in crls.to_crl],
        "reference_crl_shard_build_ms": round(ref_shard * 1000, 1),
        "reference_crl_build_s": round(ref_whole, 2),
    }
    if PARTS == "all":
        live = SEED  # every probe was revoked above; the seeded certificates are live in revocation's model
        marks = await compromise(h, issuer_id, seeded[-20:], SEED + 2 * PROBES)  # every certificate revoked
        print(f"  CA compromise with {live} live certificates: {marks}", flush=True)
        result["ca_compromise"] = marks
    # Each service's memory at the end (PSS, with what it started), with SEED certificates in the
    # read models and every step above done: what the memory target asks, at this bench's scale.
    memory = {name: round(tree_pss_kib(p.proc.pid) / 1024, 1) for name, p in h.procs.items() if p.proc is not None}
    print(f"  memory at the end (PSS, MiB): {memory}", flush=True)
    result["service_memory_mib"] = memory
    save_result("revocation", result)
    print(json.dumps(result, indent=2))


async def ocsp_figures(
    h: Harness, session: aiohttp.ClientSession, issuer: x509.Certificate, seeded: list[int]
) -> dict[str, Any]:
    """Step 3: OCSP responses per second over HTTP (Python clients and wrk) and the in-process reference."""
    base = f"http://127.0.0.1:{h.http_ports['validation']}"
    requests = [ocsp_request(issuer, s) for s in seeded[:20000]]
    await warm(base, requests)  # every response signed once by every process: what follows is served cached
    cached = await ocsp_rate(f"{base}/ocsp", requests, OCSP_SECONDS, False, issuer)
    fresh = await ocsp_rate(f"{base}/ocsp", requests, OCSP_SECONDS, True, issuer)
    ref_cached, ref_fresh = await asyncio.to_thread(reference_ocsp, "ec-p256", requests)
    # The same cached requests by GET from wrk (a client in C: the Python client above is
    # itself the limit long before the responder is).
    by_wrk: dict[str, float] | None = None
    if ocsp_load.available():
        run_wrk = await asyncio.to_thread(ocsp_load.measure, base, requests, OCSP_SECONDS)
        by_wrk = {"per_s": round(run_wrk.rate, 1), "p50_ms": run_wrk.latency_p50_ms, "p99_ms": run_wrk.latency_p99_ms}
        print(
            f"  OCSP over HTTP, GET from wrk (64 connections): {run_wrk.rate:.0f}/s, "
            f"p50 {run_wrk.latency_p50_ms:.1f} ms, p99 {run_wrk.latency_p99_ms:.1f} ms",
            flush=True,
        )
    else:
        print("  OCSP over HTTP from wrk: skipped, wrk not installed (`make wrk` installs it)", flush=True)
    print(
        f"  OCSP over HTTP: cached {cached:.0f}/s, with nonce {fresh:.0f}/s "
        f"(responder core alone: {ref_cached:.0f}/s and {ref_fresh:.0f}/s)",
        flush=True,
    )
    return {
        "ocsp_cached_per_s": round(cached, 1),
        "ocsp_nonce_per_s": round(fresh, 1),
        "ocsp_cached_get_wrk": by_wrk,
        "reference_ocsp_cached_per_s": round(ref_cached, 1),
        "reference_ocsp_nonce_per_s": round(ref_fresh, 1),
        "ratio_ocsp_cached_over_reference": round(cached / ref_cached, 4),
        "ratio_ocsp_nonce_over_reference": round(fresh / ref_fresh, 4),
    }


if __name__ == "__main__":
    asyncio.run(main())
