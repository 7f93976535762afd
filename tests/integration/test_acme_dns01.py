"""ACME dns-01 (RFC 8555 §8.4) and wildcard orders (§7.1.3, §7.1.4), over HTTP on loopback with a real
PostgreSQL: the TXT records are served by the test's own authoritative DNS server on a loopback port
(tests/dns_server.py), the one ACME is told to ask (CERTBUS_ACME_DNS_SERVER)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from acme_client import (
    WILDCARD_PROFILE,
    Account,
    Stack,
    challenge_of,
    csr_der,
    jws,
    register_acme_provisioner,
    serve_answers,
)
from deploy.local.devstack import free_port
from dns_server import DnsServer, black_hole, dns_server
from harness import Harness, eventually
from services.acme.challenges import DNS_01, HTTP_01, TLS_ALPN_01, Resolver, Validator, key_authorization
from services.acme.dns01 import TxtLookup, txt_value
from services.acme.finalize import BusFinalizer
from services.acme.server import Acme, AcmeConfig
from shared.client.cli import provisioner

pytestmark = pytest.mark.timeout(60)
PROBLEM = "urn:ietf:params:acme:error:"
DNS_TIMEOUT_S = 1.0


async def _serve(acme_pool: asyncpg.Pool, lookup: TxtLookup, **config: Any) -> AsyncIterator[Stack]:
    http_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    validator = Validator(Resolver.parse("*.acme.test=127.0.0.1"), http_port=http_port, timeout_s=5, dns=lookup)
    acme = Acme(lambda: acme_pool, AcmeConfig(base_url=base, validator=validator, eab_required=False, **config))
    async with serve_answers(acme, acme_pool, base, port, http_port) as s:
        yield s


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    with dns_server() as server:
        yield server


@pytest.fixture
async def acme(acme_pool: asyncpg.Pool, dns: DnsServer) -> AsyncIterator[Stack]:
    async for s in _serve(acme_pool, TxtLookup.parse(dns.address, DNS_TIMEOUT_S)):
        yield s


async def _answer_dns_01(s: Stack, dns: DnsServer, account: Account, authz_url: str) -> dict[str, Any]:
    """Publish the authorization's dns-01 TXT record (beside any already there), ask for validation,
    and return the settled authorization."""
    _, _, authz = await s.post(account, authz_url, None)
    challenge = challenge_of(authz, DNS_01)
    qname = f"_acme-challenge.{authz['identifier']['value']}"
    dns.records.setdefault(qname, []).append(txt_value(key_authorization(challenge["token"], account.thumbprint)))
    status, headers, body = await s.post(account, challenge["url"], {})
    assert status == 200 and body["status"] in ("processing", "valid"), body
    assert headers["Link"].startswith(f"<{authz_url}>")
    return await s.settled(account, authz_url)


async def _dns_01_error(s: Stack, account: Account, name: str) -> dict[str, Any]:
    """Order `name`, ask for its dns-01 validation as the DNS server stands, and return the problem."""
    _, order = await s.order(account, name)
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    await s.post(account, challenge_of(authz, DNS_01)["url"], {})
    settled = await s.settled(account, order["authorizations"][0])
    assert settled["status"] == "invalid"
    error: dict[str, Any] = challenge_of(settled, DNS_01)["error"]
    return error


async def test_dns_01_with_the_right_txt_record_among_others_makes_the_authorization_valid(
    acme: Stack, dns: DnsServer
) -> None:
    account = await acme.account()
    location, order = await acme.order(account, "web.acme.test")
    dns.records["_acme-challenge.web.acme.test"] = ["an old record", "another"]
    settled = await _answer_dns_01(acme, dns, account, order["authorizations"][0])
    assert settled["status"] == "valid"
    assert challenge_of(settled, DNS_01)["status"] == "valid" and "validated" in challenge_of(settled, DNS_01)
    _, _, ready = await acme.post(account, location, None)
    assert ready["status"] == "ready"


async def test_dns_01_asks_again_over_tcp_when_the_udp_answer_is_truncated(acme: Stack, dns: DnsServer) -> None:
    account = await acme.account()
    _, order = await acme.order(account, "big.acme.test")
    dns.records["_acme-challenge.big.acme.test"] = [f"{i:03d}" + "x" * 200 for i in range(10)]
    settled = await _answer_dns_01(acme, dns, account, order["authorizations"][0])
    assert settled["status"] == "valid", settled
    assert dns.asked["tcp"] >= 1


async def test_dns_01_asks_again_when_a_udp_question_goes_unanswered(acme_pool: asyncpg.Pool, dns: DnsServer) -> None:
    async for s in _serve(acme_pool, TxtLookup.parse(dns.address, 5.0)):
        account = await s.account()
        _, order = await s.order(account, "lossy.acme.test")
        dns.drop_udp = 1
        settled = await _answer_dns_01(s, dns, account, order["authorizations"][0])
        assert settled["status"] == "valid", settled
        assert dns.asked["udp"] == 2


async def test_a_wrong_txt_record_is_an_incorrect_response_and_the_order_invalid(acme: Stack, dns: DnsServer) -> None:
    account = await acme.account()
    dns.records["_acme-challenge.wrong.acme.test"] = ["someone-elses-digest"]
    error = await _dns_01_error(acme, account, "wrong.acme.test")
    assert error["type"] == PROBLEM + "incorrectResponse", error
    assert "someone-elses-digest" in error["detail"] and "_acme-challenge.wrong.acme.test" in error["detail"]
    _, _, orders = await acme.post(account, account.url + "/orders", None)
    _, _, order = await acme.post(account, orders["orders"][0], None)
    assert order["status"] == "invalid"


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("nxdomain", "NXDOMAIN looking up TXT for _acme-challenge.case.acme.test"),
        ("no TXT record", "no TXT record found"),
        ("server failure", "SERVFAIL"),
    ],
)
async def test_a_txt_record_dns_does_not_give_is_a_dns_problem_saying_why(
    acme: Stack, dns: DnsServer, case: str, words: str
) -> None:
    if case == "no TXT record":
        dns.records["_acme-challenge.case.acme.test"] = []
    elif case == "server failure":
        dns.servfail.add("_acme-challenge.case.acme.test")
    error = await _dns_01_error(acme, await acme.account(), "case.acme.test")
    assert error["type"] == PROBLEM + "dns" and words in error["detail"], error
    assert dns.address in error["detail"]


async def test_a_dns_server_that_does_not_answer_fails_the_challenge_within_the_timeout(
    acme_pool: asyncpg.Pool,
) -> None:
    with black_hole() as port:
        async for s in _serve(acme_pool, TxtLookup.parse(f"127.0.0.1:{port}", DNS_TIMEOUT_S)):
            started = time.monotonic()
            error = await _dns_01_error(s, await s.account(), "silent.acme.test")
            assert time.monotonic() - started < DNS_TIMEOUT_S + 3
            assert error["type"] == PROBLEM + "dns" and "timed out after 1 s" in error["detail"], error


async def test_a_wildcard_order_has_one_authorization_of_its_base_marked_wildcard_with_dns_01_only(
    acme: Stack, dns: DnsServer
) -> None:
    account = await acme.account()
    location, order = await acme.order(account, "*.wild.acme.test", "wild.acme.test")
    assert order["identifiers"] == [
        {"type": "dns", "value": "*.wild.acme.test"},
        {"type": "dns", "value": "wild.acme.test"},
    ]
    authzs = [(await acme.post(account, url, None))[2] for url in order["authorizations"]]
    wildcard = next(a for a in authzs if a.get("wildcard"))
    base = next(a for a in authzs if "wildcard" not in a)
    assert wildcard["identifier"] == base["identifier"] == {"type": "dns", "value": "wild.acme.test"}
    assert wildcard["wildcard"] is True
    assert [c["type"] for c in wildcard["challenges"]] == [DNS_01]
    assert sorted(c["type"] for c in base["challenges"]) == [DNS_01, HTTP_01, TLS_ALPN_01]
    # Both validated by dns-01 at the same name, each by its own TXT record, as clients do it.
    for url in order["authorizations"]:
        assert (await _answer_dns_01(acme, dns, account, url))["status"] == "valid"
    assert len(dns.records["_acme-challenge.wild.acme.test"]) == 2
    _, _, ready = await acme.post(account, location, None)
    assert ready["status"] == "ready"


async def test_a_wildcard_is_refused_by_a_server_that_does_not_offer_dns_01(acme_pool: asyncpg.Pool) -> None:
    async for s in _serve(acme_pool, TxtLookup(), challenge_types=(HTTP_01, TLS_ALPN_01)):
        account = await s.account()
        identifiers = [{"type": "dns", "value": "*.wild.acme.test"}]
        status, _, problem = await s.post(account, s.url("/acme/new-order"), {"identifiers": identifiers})
        assert (status, problem["type"]) == (400, PROBLEM + "rejectedIdentifier"), problem
        assert "dns-01" in problem["subproblems"][0]["detail"]
        assert await s.pool.fetchval("SELECT count(*) FROM orders") == 0
        _, order = await s.order(account, "plain.acme.test")  # other names are still served
        _, _, authz = await s.post(account, order["authorizations"][0], None)
        assert sorted(c["type"] for c in authz["challenges"]) == [HTTP_01, TLS_ALPN_01]


async def test_failed_dns_01_validations_count_for_the_base_name_wildcard_or_not(
    acme_pool: asyncpg.Pool, dns: DnsServer
) -> None:
    async for s in _serve(acme_pool, TxtLookup.parse(dns.address, DNS_TIMEOUT_S), failed_validations_per_hour=1):
        account = await s.account()
        error = await _dns_01_error(s, account, "*.flaky.acme.test")  # NXDOMAIN: one failure
        assert error["type"] == PROBLEM + "dns"
        asked = dict(dns.asked)
        _, again = await s.order(account, "flaky.acme.test")
        _, _, authz = await s.post(account, again["authorizations"][0], None)
        status, headers, problem = await s.post(account, challenge_of(authz, DNS_01)["url"], {})
        assert (status, problem["type"]) == (429, PROBLEM + "rateLimited"), problem
        assert "flaky.acme.test" in problem["detail"] and int(headers["Retry-After"]) > 3500
        assert dns.asked == asked  # not validated: DNS was not asked


def test_the_dns_server_setting_is_an_address_and_an_optional_port() -> None:
    assert TxtLookup.parse("").server is None
    assert TxtLookup.parse("127.0.0.1:5353").server == ("127.0.0.1", 5353)
    assert TxtLookup.parse(" 10.0.0.53 ").server == ("10.0.0.53", 53)
    assert TxtLookup.parse("[::1]:5353").server == ("::1", 5353)
    assert TxtLookup.parse("::1").server == ("::1", 53)
    assert TxtLookup.parse("[::1]:5353").where == "[::1]:5353"
    for bad in ("dns.example:53", "127.0.0.1:0", "127.0.0.1:dns", "[::1", "[::1]x"):
        with pytest.raises(ValueError):
            TxtLookup.parse(bad)


# -- a wildcard certificate, end to end through enrollment ------------------------------------------
# Whether a wildcard is issued is the profile's to say (ACME's profile, CERTBUS_ACME_PROFILE): the
# shipped ones allow none (tls-server, ACME's default, says allow_wildcards = false), so the test
# applies one that does, as an operator would.


@pytest.fixture
async def finalizing(
    stack: Harness, acme_pool: asyncpg.Pool, dns: DnsServer, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    """ACME finalizing through the five services, under the profile the test is parametrized with."""
    harness = stack
    profile: str = request.param
    await harness.apply_profiles(WILDCARD_PROFILE)
    await harness.identity("acme")
    key = ed25519.Ed25519PrivateKey.generate()
    await register_acme_provisioner(harness, provisioner.public_pem(key), name_suffixes=["acme.internal"])
    finalizer = BusFinalizer(harness.client_settings("acme"), "acme", "acme", key, profile, timeout_s=30)
    async for s in _serve(acme_pool, TxtLookup.parse(dns.address, DNS_TIMEOUT_S), finalizer=finalizer):
        yield s


@pytest.mark.timeout(120)
@pytest.mark.parametrize("finalizing", [WILDCARD_PROFILE.name], indirect=True)
async def test_a_wildcard_order_is_issued_under_a_profile_that_allows_wildcards(
    finalizing: Stack, dns: DnsServer
) -> None:
    s = finalizing
    account = await s.account()
    names = ("*.w.acme.internal", "w.acme.internal")
    location, order = await s.order(account, *names)
    for url in order["authorizations"]:
        assert (await _answer_dns_01(s, dns, account, url))["status"] == "valid"
    key = ec.generate_private_key(ec.SECP256R1())
    # The CSR must ask for exactly the order's names, the wildcard as `*.`.
    status, _, problem = await s.post(account, order["finalize"], {"csr": csr_der(key, "w.acme.internal")})
    assert (status, problem["type"]) == (400, PROBLEM + "badCSR"), problem
    status, _, body = await s.post(account, order["finalize"], {"csr": csr_der(key, *names)})
    assert (status, body["status"]) == (200, "processing"), body

    async def settled() -> dict[str, Any] | None:
        _, _, body = await s.post(account, location, None)
        return body if body["status"] != "processing" else None

    final = await eventually(settled, timeout=60)
    assert final["status"] == "valid", final
    chain = await _certificate(s, account, final["certificate"])
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("finalizing", ["tls-server"], indirect=True)
async def test_a_wildcard_order_is_refused_by_enrollment_under_a_profile_without_wildcards(
    finalizing: Stack, dns: DnsServer
) -> None:
    s = finalizing
    account = await s.account()
    location, order = await s.order(account, "*.w.acme.internal")
    assert (await _answer_dns_01(s, dns, account, order["authorizations"][0]))["status"] == "valid"
    csr = csr_der(ec.generate_private_key(ec.SECP256R1()), "*.w.acme.internal")
    status, _, _ = await s.post(account, order["finalize"], {"csr": csr})
    assert status == 200

    async def settled() -> dict[str, Any] | None:
        _, _, body = await s.post(account, location, None)
        return body if body["status"] != "processing" else None

    final = await eventually(settled, timeout=60)
    assert final["status"] == "invalid", final
    assert final["error"]["type"] == PROBLEM + "rejectedIdentifier", final["error"]
    assert "wildcard_not_allowed" in final["error"]["detail"], final["error"]


async def _certificate(s: Stack, account: Account, url: str) -> str:
    """The certificate chain (PEM) at `url`, by POST-as-GET."""
    async with s.http.head(s.url("/acme/new-nonce")) as r:
        nonce = r.headers["Replay-Nonce"]
    async with s.http.post(
        url, data=jws(account.key, url, None, nonce, kid=account.url), headers={"Content-Type": "application/jose+json"}
    ) as r:
        assert r.status == 200
        return await r.text()
