"""`certbus audit report` over a running stack: the numbers in --json and --csv, and the --html page
rendered by headless Chromium (the charts are in its DOM and on its screenshot)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from harness import Harness, eventually
from shared.contract.events import CertificateIssued
from shared.contract.queries import ReportAnswer

CHROMIUM_TIMEOUT_S = 60
ISSUANCE_BLUE, REVOKED_RED = (0x15, 0x65, 0xC0), (0xC6, 0x28, 0x28)  # shared/client/cli/report_html.py's bar colours


async def _issue_and_revoke(stack: Harness) -> tuple[list[CertificateIssued], CertificateIssued]:
    """Three tls-server certificates (30 days, one then revoked) and a tls-client one (7 days)."""
    servers = [await stack.enroll(f"report{i}.corp.internal") for i in range(3)]
    client = await stack.enroll("client.corp.internal", profile="tls-client")
    async with stack.client("operator") as c:
        await c.revoke_as_operator(servers[0].serial, "keyCompromise", "tests")

        async def archived() -> ReportAnswer | None:
            report = await c.report()
            return report if report.certificates == 4 and report.revoked_by_reason.top else None

        await eventually(archived, timeout=15)
    return [*servers, client], client


async def test_the_report_counts_the_certificates_on_the_log(stack: Harness) -> None:
    issued, client = await _issue_and_revoke(stack)
    result = await stack.cli("audit", "report", "--days", "10", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    def counts(section: str) -> dict[str, int]:
        return {t["key"]: t["count"] for t in report[section]["top"]}

    assert report["certificates"] == 4
    assert counts("by_state") == {"valid": 3, "expired": 0, "revoked": 1, "superseded": 0, "destroyed": 0}
    assert counts("revoked_by_reason") == {"keyCompromise": 1}
    assert counts("by_profile") == {"tls-server": 3, "tls-client": 1}
    assert counts("by_issuer") == {issued[0].issuer_id: 4}
    assert counts("by_requester") == {"tests": 4}
    assert sum(d["count"] for d in report["issued_per_day"]) == 4
    assert sum(d["count"] for d in report["expiry_timeline"]) == 3  # the valid ones, all within 90 days
    assert report["expiring_total"] == 1
    assert [c["serial"] for c in report["expiring"]] == [client.serial]
    assert report["expiring"][0]["dns_names"] == ["client.corp.internal"]
    assert report["malformed"] == 0 and report["through_seq"] >= report["events"] > 0

    result = await stack.cli("audit", "report", "--csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {r["key"]: r["value"] for r in rows if r["section"] == "state"}["revoked"] == "1"
    assert sorted(r["serial"] for r in rows if r["section"] == "expiring") == sorted(c.serial for c in issued[1:])

    result = await stack.cli("audit", "report")
    assert result.returncode == 0, result.stderr
    assert "keyCompromise" in result.stdout and "4 certificates on the log" in result.stdout


async def test_the_html_report_renders_its_charts_in_headless_chromium(stack: Harness, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    await _issue_and_revoke(stack)
    page = tmp_path / "report.html"
    result = await stack.cli("audit", "report", "--html", str(page))
    assert result.returncode == 0, result.stderr
    assert f"wrote {page}" in result.stderr

    dom = (await _chromium(chromium, tmp_path, "--dump-dom", page.as_uri())).decode()
    bars = {chart: _bars(dom, chart) for chart in ("chart-expiry", "chart-issuance", "chart-state", "chart-revoked")}
    assert bars["chart-expiry"] >= 1 and bars["chart-issuance"] >= 1, bars
    assert (bars["chart-state"], bars["chart-revoked"]) == (2, 1), bars  # valid and revoked; keyCompromise
    assert 'id="table-expiring"' in dom and "Certbus certificate report" in dom

    shot = tmp_path / "report.png"
    await _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    with Image.open(shot) as image:
        pixels = list(image.convert("RGB").get_flattened_data())
    assert len(pixels) == 1200 * 1600
    not_white = sum(1 for p in pixels if p != (255, 255, 255))
    assert not_white > len(pixels) // 100, f"the screenshot is almost blank ({not_white} pixels not white)"
    assert len(set(pixels)) > 32, "the screenshot has too few colours to show charts"
    assert pixels.count(ISSUANCE_BLUE) > 200, "no issuance bars on the screenshot"
    assert pixels.count(REVOKED_RED) > 200, "no revocation bars on the screenshot"


async def _chromium(chromium: str, tmp: Path, *args: str) -> bytes:
    """Run headless Chromium (bounded in time, its profile in `tmp`) and return its stdout."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {args}") from None
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout


def _bars(dom: str, chart: str) -> int:
    match = re.search(rf'<svg id="{chart}".*?</svg>', dom, re.S)
    assert match, f"{chart} is not in the rendered DOM"
    return match.group(0).count('class="bar"')
