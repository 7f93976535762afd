"""`certbus health` and ACME: asked at its /readyz where it is deployed, judged like the five, and
left out (said so, not failed) where it is not."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.base.settings import ACME_READYZ_URL_FILE
from shared.client.cli import common
from shared.client.cli.common import client_settings, print_table
from shared.client.cli.main import _health_table
from shared.client.errors import SERVICES
from shared.client.readiness import judge_readiness, readyz_report
from shared.client.sdk import ask_readyz

ACME_NOT_SERVING = "ACME is not served over TLS yet: provisioner 'acme' is not registered"


def _five_ready() -> list[dict[str, Any]]:
    return [{"service": s, "status": "ok", "ready": True, "missing": [], "instance": s} for s in SERVICES]


def _judged(acme: dict[str, Any]) -> dict[str, Any]:
    return {r["service"]: r for r in judge_readiness([*_five_ready(), acme])}["acme"]


# --- what ACME's /readyz answer means -------------------------------------------------------------


def test_acme_answering_200_ready_is_ready() -> None:
    acme = _judged(readyz_report("acme", "acme:8445", 200, b'{"service": "acme", "ready": true, "missing": []}'))
    assert acme["ready"] and acme["missing"] == [] and acme["replicas"][0]["instance"] == "acme:8445"


def test_acme_answering_503_is_not_ready_and_says_what_it_lacks() -> None:
    body = json.dumps({"service": "acme", "ready": False, "missing": [ACME_NOT_SERVING]}).encode()
    acme = _judged(readyz_report("acme", "acme:8445", 503, body))
    assert not acme["ready"] and acme["missing"] == [ACME_NOT_SERVING] and acme["status"] == "ok"


def test_acme_not_answering_is_down() -> None:
    acme = _judged(readyz_report("acme", "acme:8445", None, b""))
    assert not acme["ready"] and acme["missing"] == ["it does not answer"]


def test_acme_answering_something_else_than_a_readiness_report_is_a_failure() -> None:
    acme = _judged(readyz_report("acme", "acme:8445", 502, b"<html>Bad Gateway</html>"))
    assert not acme["ready"] and acme["missing"] == ["its /readyz answered HTTP 502, not a readiness report"]


def test_a_503_that_names_nothing_missing_is_still_not_ready() -> None:
    acme = _judged(readyz_report("acme", "acme:8445", 503, b'{"ready": false}'))
    assert not acme["ready"] and acme["missing"] == ["its /readyz answered HTTP 503 and named nothing missing"]


def test_acme_not_ready_makes_the_system_not_ready_but_leaves_the_five_alone() -> None:
    body = json.dumps({"ready": False, "missing": [ACME_NOT_SERVING]}).encode()
    judged = judge_readiness([*_five_ready(), readyz_report("acme", "acme:8445", 503, body)])
    assert [r["service"] for r in judged if not r["ready"]] == ["acme"]


# --- asking it over HTTP --------------------------------------------------------------------------


@pytest.fixture
def readyz() -> Iterator[tuple[str, dict[str, Any]]]:
    """A stand-in for ACME's health port on loopback: answers /readyz with `answer["status"]` and `answer["body"]`."""
    answer: dict[str, Any] = {"status": 200, "body": b'{"service": "acme", "ready": true, "missing": []}'}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer["status"] if self.path == "/readyz" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz", answer
    finally:
        server.shutdown()
        server.server_close()


def test_acme_is_asked_at_its_readyz_url(readyz: tuple[str, dict[str, Any]]) -> None:
    url, _ = readyz
    report = ask_readyz("acme", url, timeout=2)
    assert report["status"] == "ok" and report["ready"] is True
    assert report["instance"] == url.split("/")[2]


def test_acmes_503_is_read_for_what_it_lacks(readyz: tuple[str, dict[str, Any]]) -> None:
    url, answer = readyz
    answer.update(status=503, body=json.dumps({"ready": False, "missing": [ACME_NOT_SERVING]}).encode())
    assert ask_readyz("acme", url, timeout=2)["missing"] == [ACME_NOT_SERVING]


def test_acme_asked_where_nothing_listens_is_down(readyz: tuple[str, dict[str, Any]]) -> None:
    url, _ = readyz
    port = int(url.split(":")[2].split("/")[0])
    assert ask_readyz("acme", f"http://127.0.0.1:{port + 1 if port < 65535 else 1}/readyz", 2)["status"] == "down"


def test_acme_is_asked_directly_even_when_a_proxy_is_configured(
    readyz: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = readyz
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    assert ask_readyz("acme", url, timeout=2)["ready"] is True


def test_a_readiness_url_that_is_not_http_is_refused_without_asking() -> None:
    report = ask_readyz("acme", "file:///etc/passwd", timeout=2)
    assert report["status"] == "failed" and "not an http(s) URL" in report["missing"][0]


# --- where the CLI finds the URL ------------------------------------------------------------------


def test_the_cli_asks_acme_where_make_run_wrote_its_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CERTBUS_HOME", str(tmp_path))
    monkeypatch.delenv("CERTBUS_ACME_READYZ_URL", raising=False)
    assert client_settings().acme_readyz_url is None  # nothing written: ACME is not deployed
    (tmp_path / ACME_READYZ_URL_FILE).parent.mkdir(parents=True)
    (tmp_path / ACME_READYZ_URL_FILE).write_text("http://127.0.0.1:8445/readyz\n")
    assert client_settings().acme_readyz_url == "http://127.0.0.1:8445/readyz"


def test_the_environment_names_acmes_url_or_leaves_it_out_over_what_make_run_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTBUS_HOME", str(tmp_path))
    (tmp_path / ACME_READYZ_URL_FILE).parent.mkdir(parents=True)
    (tmp_path / ACME_READYZ_URL_FILE).write_text("http://127.0.0.1:8445/readyz\n")
    monkeypatch.setenv("CERTBUS_ACME_READYZ_URL", "http://acme:8445/readyz")
    assert client_settings().acme_readyz_url == "http://acme:8445/readyz"
    monkeypatch.setenv("CERTBUS_ACME_READYZ_URL", "")
    assert not client_settings().acme_readyz_url


# --- what health prints, off a terminal -----------------------------------------------------------


def _printed(reports: list[dict[str, Any]], not_deployed: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    written = io.StringIO()  # not a terminal, as a pipe (the console's own file: capsys may not be it)
    monkeypatch.setattr(common.out, "file", written)
    print_table(_health_table(reports, not_deployed=not_deployed))
    return written.getvalue().splitlines()


def test_health_lists_acme_as_one_tab_separated_row(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"ready": False, "missing": [ACME_NOT_SERVING]}).encode()
    reports = judge_readiness([*_five_ready(), readyz_report("acme", "acme:8445", 503, body)])
    lines = _printed(reports, [], monkeypatch)
    assert len(lines) == 1 + len(SERVICES) + 1
    assert lines[-1] == "acme\tacme:8445\tok\tno\t\t\t\t\t\t"


def test_health_says_acme_is_not_deployed_where_it_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    reports = judge_readiness(_five_ready())
    lines = _printed(reports, ["acme"], monkeypatch)
    assert lines[-1] == "acme\t\tnot deployed\t-\t\t\t\t\t\t"
    assert all(r["ready"] for r in reports)  # and the verdict is the five's alone
