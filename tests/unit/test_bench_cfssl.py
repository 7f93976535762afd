"""bench.cfssl: the sign request's body, wrk's script and its output, the setups, the printed line;
and, where golang-cfssl and wrk are installed, a two-second measurement."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bench import cfssl
from shared.pki.crypto import build_csr, generate_key

WRK_TAIL = """Running 10s test @ http://127.0.0.1:40000/api/v1/cfssl/sign
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   160.12ms   10.00ms 200.00ms   90.00%
  4012 requests in 10.01s, 4.53MB read
Requests/sec:    400.80
Transfer/sec:    463.20KB
certbus-wrk {"requests": 4012, "duration_us": 10010000, "status_errors": 2, "socket_errors": 1, "rejected": 12, \
"p50_us": 161000, "p99_us": 190500}
"""


def figures(certs_per_s: float) -> cfssl.CfsslFigures:
    return cfssl.CfsslFigures(
        version="1.2.0",
        ca_key="ec-p384",
        server_cores="1",
        client_cores="0",
        connections=64,
        seconds=10.0,
        requests=41_000,
        certs_per_s=certs_per_s,
        latency_p50_ms=15.0,
        latency_p99_ms=30.0,
    )


def test_the_sign_body_carries_the_csr_and_its_dns_names_as_hosts_on_one_line() -> None:
    pem = build_csr(generate_key("ec-p256"), ["svc1.bench.internal", "alt.bench.internal"])
    body = cfssl.sign_body(pem)
    assert "\n" not in body  # the script reads one body a line
    assert json.loads(body) == {
        "certificate_request": pem.decode(),
        "hosts": ["svc1.bench.internal", "alt.bench.internal"],
    }


def test_the_wrk_script_posts_json_counts_refusals_and_prints_its_marker() -> None:
    assert 'wrk.method = "POST"' in cfssl.WRK_SCRIPT
    assert '"success":true' in cfssl.WRK_SCRIPT
    assert cfssl.RESULT_MARKER.strip() in cfssl.WRK_SCRIPT


def test_wrk_output_is_read_from_the_scripts_line_and_refusals_do_not_count_as_certificates() -> None:
    run = cfssl.parse_wrk(WRK_TAIL)
    assert run == cfssl.WrkRun(
        requests=4012,
        duration_s=10.01,
        status_errors=2,
        socket_errors=1,
        rejected=12,
        latency_p50_ms=161.0,
        latency_p99_ms=190.5,
    )
    assert run.rate == pytest.approx(4000 / 10.01)


def test_wrk_output_without_the_scripts_line_is_a_value_error_naming_the_marker() -> None:
    with pytest.raises(ValueError, match="certbus-wrk"):
        cfssl.parse_wrk("Requests/sec: 400.80\n")


def test_the_ratio_line_names_cfssls_version_and_setup_and_certbus_share_of_its_rate() -> None:
    line = cfssl.ratio_line("one core", figures(4100.0), 94.3)
    assert line == "cfssl serve (golang-cfssl 1.2.0, one core): 4,100 certs/s — Certbus end to end is 0.023x of it"


def test_figures_for_the_json_are_rounded_to_a_tenth() -> None:
    assert figures(411.4321).as_json()["certs_per_s"] == 411.4


def test_on_two_cores_the_server_has_one_to_itself_then_shares_both() -> None:
    one, both, p256 = cfssl.setups([0, 1])
    assert (one.server_cores, one.client_cores, one.ca_key) == ("1", "0", "ec-p384")
    assert (both.label, both.server_cores, both.client_cores) == ("both cores", "0,1", "0,1")
    assert (p256.server_cores, p256.ca_key) == ("1", "ec-p256")
    assert len({s.name for s in (one, both, p256)}) == 3


def test_on_one_core_server_and_wrk_share_it() -> None:
    assert [(s.server_cores, s.client_cores) for s in cfssl.setups([3])] == [("3", "3")]


def test_the_signing_policy_is_server_auth_for_ninety_days() -> None:
    policy = cfssl.signing_config("http://127.0.0.1:1")["signing"]["default"]
    assert policy["usages"] == ["digital signature", "server auth"]
    assert policy["expiry"] == "2160h"


@pytest.mark.skipif(bool(cfssl.missing_tools()), reason="needs golang-cfssl and wrk (`make cfssl wrk`)")
@pytest.mark.timeout(30)
def test_cfssl_serve_signs_the_bench_csrs_for_two_seconds() -> None:
    csrs = [build_csr(generate_key("ec-p256"), [f"svc{i}.bench.internal"]) for i in range(20)]
    measured = cfssl.measure(csrs, 2, server_cores="0", client_cores="0", connections=4)
    assert measured.certs_per_s > 0
    assert measured.version != "unknown"
    cert = x509.load_pem_x509_certificate(measured.sample_pem.encode())
    assert cert.public_key() == x509.load_pem_x509_csr(csrs[0]).public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc0.bench.internal"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
