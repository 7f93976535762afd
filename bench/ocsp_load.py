"""OCSP over HTTP driven by wrk (a load generator in C, so that the client is not what is measured):
RFC 6960 A.1 GET requests, one per line of a file, round robin; a response that is not HTTP 200
with an OCSP response body counts as rejected, and any rejection fails the measurement.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from bench.cfssl import WRK_LINES, WRK_REPORT, WrkRun, parse_wrk

WRK_GET_SCRIPT = (
    WRK_LINES
    + r"""
function request()
  return wrk.format("GET", next_line())
end

function response(status, headers, body)
  if status ~= 200 or headers["Content-Type"] ~= "application/ocsp-response" then
    rejected = rejected + 1
  end
end
"""
    + WRK_REPORT
)


def get_path(prefix: str, request_der: bytes) -> str:
    """The GET path of an OCSP request: `<prefix>/<url-encoded base64 of the DER>` (RFC 6960 A.1)."""
    return f"{prefix}/{urllib.parse.quote(base64.b64encode(request_der).decode(), safe='')}"


def available() -> bool:
    """Whether wrk is installed (`make wrk`)."""
    return shutil.which("wrk") is not None


def measure(base: str, requests: list[bytes], seconds: float, connections: int = 64) -> WrkRun:
    """GET `requests` from `base`/ocsp round robin with wrk (one thread) for `seconds` (whole, at
    least 1). Raises RuntimeError if wrk fails or any response was not an OCSP response."""
    with tempfile.TemporaryDirectory(prefix="certbus-ocsp-") as tmp:
        work = Path(tmp)
        (work / "paths.txt").write_text("".join(get_path("/ocsp", r) + "\n" for r in requests))
        (work / "get.lua").write_text(WRK_GET_SCRIPT)
        duration = max(1, round(seconds))
        done = subprocess.run(
            [
                "wrk",
                "-t",
                "1",
                "-c",
                str(connections),
                "-d",
                f"{duration}s",
                "-s",
                str(work / "get.lua"),
                base,
                "--",
                str(work / "paths.txt"),
            ],
            capture_output=True,
            text=True,
            timeout=duration + 30,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr[-1000:]}")
    run = parse_wrk(done.stdout)
    if run.rejected or run.status_errors or run.socket_errors:
        raise RuntimeError(
            f"OCSP over wrk: {run.rejected} rejected, {run.status_errors} HTTP errors, "
            f"{run.socket_errors} socket errors"
        )
    return run
