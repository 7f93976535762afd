"""bench.ocsp_load: OCSP GET paths as RFC 6960 A.1 spells them, and wrk's script reports like the
bench's other wrk scripts."""

from __future__ import annotations

import base64
import urllib.parse

from bench.cfssl import WRK_REPORT
from bench.ocsp_load import WRK_GET_SCRIPT, get_path


def test_a_get_path_is_the_url_encoded_base64_of_the_request() -> None:
    der = bytes(range(250, 256)) * 20  # base64 of these holds '+' and '/'
    path = get_path("/ocsp", der)
    assert path.startswith("/ocsp/") and "/" not in path.removeprefix("/ocsp/") and "+" not in path
    assert base64.b64decode(urllib.parse.unquote(path.removeprefix("/ocsp/"))) == der


def test_the_script_counts_what_is_not_an_ocsp_response_and_reports_it() -> None:
    assert WRK_GET_SCRIPT.endswith(WRK_REPORT)
    assert 'headers["Content-Type"] ~= "application/ocsp-response"' in WRK_GET_SCRIPT
