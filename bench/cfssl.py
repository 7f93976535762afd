"""The issuance bench's outside reference: `cfssl serve` (Debian's golang-cfssl) signing the same
kind of CSR over HTTP on loopback, driven by wrk, so Certbus's end-to-end rate is read against a
CA server that does the least a CA server does (parse, sign, answer), measured in the same run.

The server and wrk are pinned to cores given by the caller (taskset); Go sizes its scheduler from
that affinity, so "one core" really is one. Every response is checked by wrk's script (HTTP 200
and `"success":true`), and one certificate is fetched and checked here with `cryptography`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.signing import domain
from shared.pki.crypto import KeyType, generate_key

SIGN_PATH = "/api/v1/cfssl/sign"
VALIDITY_DAYS = 90  # tls-server's max_validity_days
CONNECTIONS = 64  # as many in flight as the issuance bench's BENCH_CONCURRENCY default
TOOLS = ("cfssl", "wrk", "taskset")
RESULT_MARKER = "certbus-wrk "

# What every wrk script of the bench shares: `init` reads the lines of the file given after `--`
# (one request each, taken in turn by `next_line()`); `response` counts what it rejects in
# `rejected`; `done` prints one line (RESULT_MARKER + JSON) that parse_wrk reads.
WRK_LINES = r"""
local lines = {}
local next_index = 0

function init(args)
  rejected = 0
  for line in io.lines(args[1]) do
    lines[#lines + 1] = line
  end
end

function next_line()
  next_index = next_index % #lines + 1
  return lines[next_index]
end
"""
WRK_REPORT = r"""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local rejected_total = 0
  for _, thread in ipairs(threads) do
    rejected_total = rejected_total + thread:get("rejected")
  end
  local e = summary.errors
  io.write(string.format(
    'certbus-wrk {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, '
      .. '"rejected": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    rejected_total, latency:percentile(50), latency:percentile(99)))
end
"""
# cfssl's: POST each line (one JSON sign request), reject what is not a 200 with `"success":true`.
WRK_SCRIPT = (
    WRK_LINES
    + r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  return wrk.format(nil, nil, nil, next_line())
end

function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"success":true', 1, true) then
    rejected = rejected + 1
  end
end
"""
    + WRK_REPORT
)


@dataclass(frozen=True)
class WrkRun:
    """What wrk's script reported: requests completed, over how long, and what went wrong."""

    requests: int
    duration_s: float
    status_errors: int
    socket_errors: int
    rejected: int
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def rate(self) -> float:
        """Successful responses per second."""
        return (self.requests - self.rejected) / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class Setup:
    """Where one measurement runs: the server's cores, wrk's cores, and the CA's key type."""

    name: str  # its key in bench/results/issuance.json
    label: str  # how the bench's output names it
    server_cores: str
    client_cores: str
    ca_key: KeyType = "ec-p384"


@dataclass(frozen=True)
class CfsslFigures:
    """One measurement of `cfssl serve`, as it goes into bench/results/issuance.json."""

    version: str
    ca_key: str
    server_cores: str
    client_cores: str
    connections: int
    seconds: float
    requests: int
    certs_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    sample_pem: str = ""  # the certificate fetched and checked after the run (not saved)

    def as_json(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items() if k != "sample_pem"}


def missing_tools() -> list[str]:
    """The programs this measurement needs that are not on PATH (`make cfssl wrk` installs them)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def setups(cores: list[int]) -> list[Setup]:
    """The measurements to make on these cores: the server alone on the last core with wrk on the
    others, then server and wrk sharing every core (as Certbus's services and the bench do), then
    the first again with a P-256 CA, to show how much of cfssl's time is its P-384 signature."""
    every = ",".join(map(str, cores))
    shared = Setup("all_cores", "both cores" if len(cores) == 2 else f"{len(cores)} cores", every, every)
    if len(cores) < 2:
        return [shared]
    rest = ",".join(map(str, cores[:-1]))
    return [
        Setup("one_core", "one core", str(cores[-1]), rest),
        shared,
        Setup("one_core_p256_ca", "one core, P-256 CA", str(cores[-1]), rest, "ec-p256"),
    ]


def sign_body(csr_pem: bytes) -> str:
    """The JSON body of a sign request for `csr_pem`, on one line, naming the CSR's DNS names as hosts."""
    csr = x509.load_pem_x509_csr(csr_pem)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return json.dumps({"certificate_request": csr_pem.decode(), "hosts": san.get_values_for_type(x509.DNSName)})


def parse_wrk(output: str) -> WrkRun:
    """The figures in the line WRK_SCRIPT prints at the end of wrk's output."""
    for line in output.splitlines():
        if line.startswith(RESULT_MARKER):
            raw = json.loads(line.removeprefix(RESULT_MARKER))
            return WrkRun(
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                status_errors=raw["status_errors"],
                socket_errors=raw["socket_errors"],
                rejected=raw["rejected"],
                latency_p50_ms=raw["p50_us"] / 1000,
                latency_p99_ms=raw["p99_us"] / 1000,
            )
    raise ValueError(f"wrk printed no {RESULT_MARKER.strip()!r} line (is the script loaded?): {output[-500:]!r}")


def ratio_line(label: str, figures: CfsslFigures, certbus_per_s: float) -> str:
    """One line of the bench's output: cfssl's rate and Certbus's end-to-end rate as a fraction of it."""
    return (
        f"cfssl serve (golang-cfssl {figures.version}, {label}): {figures.certs_per_s:,.0f} certs/s "
        f"— Certbus end to end is {certbus_per_s / figures.certs_per_s:.3f}x of it"
    )


def signing_config(base_url: str) -> dict[str, Any]:
    """cfssl's signing policy, like Certbus's tls-server profile: server auth, 90 days, CRL and OCSP URLs."""
    return {
        "signing": {
            "default": {
                "usages": ["digital signature", "server auth"],
                "expiry": f"{VALIDITY_DAYS * 24}h",
                "crl_url": f"{base_url}/crl/bench.crl",
                "ocsp_url": f"{base_url}/ocsp",
                "issuer_urls": [f"{base_url}/ca/bench.crt"],
            }
        }
    }


def cfssl_version() -> str:
    """`cfssl version`'s Version line ("1.2.0"), or "unknown"."""
    out = subprocess.run(["cfssl", "version"], capture_output=True, text=True, timeout=10).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")), "unknown")


def measure(
    csrs_pem: list[bytes],
    seconds: float,
    *,
    server_cores: str,
    client_cores: str,
    ca_key: KeyType = "ec-p384",
    connections: int = CONNECTIONS,
) -> CfsslFigures:
    """`cfssl serve` on `server_cores` with a `ca_key` CA signing `csrs_pem` (in turn) for about
    `seconds`, wrk on `client_cores`: certificates per second. Raises RuntimeError if a response
    was not a success or the sample certificate is not what was asked for."""
    with tempfile.TemporaryDirectory(prefix="certbus-cfssl-") as tmp:
        work = Path(tmp)
        ca_cert = _write_ca(work, ca_key)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        (work / "config.json").write_text(json.dumps(signing_config(base)))
        (work / "bodies.jsonl").write_text("".join(sign_body(pem) + "\n" for pem in csrs_pem))
        (work / "sign.lua").write_text(WRK_SCRIPT)
        with (work / "serve.log").open("wb") as log:
            server = subprocess.Popen(
                [
                    *("taskset", "-c", server_cores, "cfssl", "serve", "-address", "127.0.0.1", "-port", str(port)),
                    *("-ca", str(work / "ca.pem"), "-ca-key", str(work / "ca-key.pem")),
                    *("-config", str(work / "config.json")),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_listening(server, port, work / "serve.log")
            run = _drive(work, base, seconds, client_cores, connections)
            sample = _check_sample(base, csrs_pem[0], ca_cert)
        finally:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
    if run.rejected or run.status_errors or run.socket_errors or run.requests == 0:
        raise RuntimeError(f"cfssl serve did not answer every request with a certificate: {run}")
    return CfsslFigures(
        version=cfssl_version(),
        ca_key=ca_key,
        server_cores=server_cores,
        client_cores=client_cores,
        connections=connections,
        seconds=run.duration_s,
        requests=run.requests,
        certs_per_s=run.rate,
        latency_p50_ms=run.latency_p50_ms,
        latency_p99_ms=run.latency_p99_ms,
        sample_pem=sample.public_bytes(serialization.Encoding.PEM).decode(),
    )


def _write_ca(work: Path, key_type: KeyType) -> x509.Certificate:
    """A CA (Certbus's root template) as ca.pem and ca-key.pem in `work`."""
    key = generate_key(key_type)
    cert = domain.root_certificate(key, "bench", "Bench", datetime.now(UTC), 3650)
    (work / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    (work / "ca-key.pem").chmod(0o600)
    return cert


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(server: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 10.0) -> None:
    """Return once the server accepts connections on `port`; raise with its log if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"cfssl serve exited with {server.returncode}: {log.read_text()[-1000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"cfssl serve did not listen on 127.0.0.1:{port} in {timeout:.0f} s: {log.read_text()[-1000:]}")


def _drive(work: Path, base: str, seconds: float, client_cores: str, connections: int) -> WrkRun:
    """wrk, one thread on `client_cores`, POSTing the bodies to the sign endpoint for `seconds` (whole, at least 1)."""
    duration = max(1, round(seconds))
    done = subprocess.run(
        [
            *("taskset", "-c", client_cores, "wrk", "-t", "1", "-c", str(connections), "-d", f"{duration}s"),
            *("-s", str(work / "sign.lua"), base + SIGN_PATH, "--", str(work / "bodies.jsonl")),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr[-1000:]}")
    return parse_wrk(done.stdout)


def _check_sample(base: str, csr_pem: bytes, ca_cert: x509.Certificate) -> x509.Certificate:
    """One certificate asked for and checked: issued by the CA, the CSR's key and names, server auth, 90 days."""
    request = urllib.request.Request(
        base + SIGN_PATH, data=sign_body(csr_pem).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    if not answer.get("success"):
        raise RuntimeError(f"cfssl serve refused a sign request: {answer.get('errors')}")
    cert = x509.load_pem_x509_certificate(answer["result"]["certificate"].encode())
    csr = x509.load_pem_x509_csr(csr_pem)
    cert.verify_directly_issued_by(ca_cert)
    wanted = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    got = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if cert.public_key() != csr.public_key() or got != wanted or list(eku) != [ExtendedKeyUsageOID.SERVER_AUTH]:
        raise RuntimeError(f"cfssl serve's certificate is not the one asked for: names {got}, EKU {list(eku)}")
    if abs(lifetime - timedelta(days=VALIDITY_DAYS)) > timedelta(hours=1):
        raise RuntimeError(f"cfssl serve's certificate lives {lifetime}, not {VALIDITY_DAYS} days")
    return cert
