"""ACME orders, authorizations and challenges (RFC 8555 §7.4-7.5, §8.3; RFC 8737), over HTTP on
loopback with a real PostgreSQL: http-01 answered by an HTTP server of the test's, tls-alpn-01 by
a TLS server of the test's negotiating `acme-tls/1`, names resolved to 127.0.0.1 by the resolver
override, as pebble's tests do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from acme_client import AlpnServer, Stack, alpn_certificate, challenge_of, serve_answers
from deploy.local.devstack import free_port
from services.acme.challenges import Resolver, Validator, key_authorization
from services.acme.server import Acme, AcmeConfig

pytestmark = pytest.mark.timeout(60)
PROBLEM = "urn:ietf:params:acme:error:"


async def _stack(acme_pool: asyncpg.Pool, tmp_path: Path, **config: Any) -> AsyncIterator[tuple[Stack, AlpnServer]]:
    http_port, alpn_port, port = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    validator = Validator(
        Resolver.parse("*.acme.test=127.0.0.1"), http_port=http_port, tls_alpn_port=alpn_port, timeout_s=5
    )
    acme = Acme(lambda: acme_pool, AcmeConfig(base_url=base, validator=validator, eab_required=False, **config))
    alpn = AlpnServer(tmp_path, alpn_port)
    async with serve_answers(acme, acme_pool, base, port, http_port) as s:
        yield s, alpn
    await alpn.close()


@pytest.fixture
async def stack(acme_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[tuple[Stack, AlpnServer]]:
    async for s in _stack(acme_pool, tmp_path):
        yield s


async def test_an_order_has_one_authorization_per_name_each_with_every_challenge(
    stack: tuple[Stack, AlpnServer],
) -> None:
    s, _ = stack
    account = await s.account()
    location, order = await s.order(account, "b.acme.test", "a.acme.test", "a.acme.test")
    assert order["status"] == "pending"
    assert order["identifiers"] == [{"type": "dns", "value": "a.acme.test"}, {"type": "dns", "value": "b.acme.test"}]
    assert order["finalize"] == location + "/finalize"
    assert datetime.fromisoformat(order["expires"]) > datetime.now(UTC) + timedelta(days=6)
    assert len(order["authorizations"]) == 2
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    assert authz["identifier"] == {"type": "dns", "value": "a.acme.test"} and authz["status"] == "pending"
    assert sorted(c["type"] for c in authz["challenges"]) == ["dns-01", "http-01", "tls-alpn-01"]
    assert "wildcard" not in authz
    assert all(len(c["token"]) >= 43 and c["status"] == "pending" for c in authz["challenges"])
    _, _, listed = await s.post(account, account.url + "/orders", None)
    assert listed["orders"] == [location]
    status, _, problem = await s.post(account, location + "/finalize", {"csr": ""})
    assert (status, problem["type"]) == (403, PROBLEM + "orderNotReady")


async def test_http_01_and_tls_alpn_01_make_their_authorizations_valid_and_the_order_ready(
    stack: tuple[Stack, AlpnServer],
) -> None:
    s, alpn = stack
    account = await s.account()
    location, order = await s.order(account, "web.acme.test", "tls.acme.test")
    urls = order["authorizations"]
    _, _, tls_authz = await s.post(account, urls[0], None)
    _, _, web_authz = await s.post(account, urls[1], None)
    assert (tls_authz["identifier"]["value"], web_authz["identifier"]["value"]) == ("tls.acme.test", "web.acme.test")

    http01 = challenge_of(web_authz, "http-01")
    s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
    status, headers, body = await s.post(account, http01["url"], {})
    assert status == 200 and body["status"] in ("processing", "valid")
    assert headers["Link"].startswith(f"<{urls[1]}>")
    settled = await s.settled(account, urls[1])
    assert settled["status"] == "valid"
    assert challenge_of(settled, "http-01")["status"] == "valid" and "validated" in challenge_of(settled, "http-01")
    _, _, now = await s.post(account, location, None)
    assert now["status"] == "pending"  # one authorization of two

    tlsalpn = challenge_of(tls_authz, "tls-alpn-01")
    await alpn.serve(
        *alpn_certificate("tls.acme.test", key_authorization(tlsalpn["token"], account.thumbprint)), ["acme-tls/1"]
    )
    await s.post(account, tlsalpn["url"], {})
    assert (await s.settled(account, urls[0]))["status"] == "valid"
    _, _, ready = await s.post(account, location, None)
    assert ready["status"] == "ready"


async def test_a_wrong_http_01_answer_makes_the_challenge_authorization_and_order_invalid(
    stack: tuple[Stack, AlpnServer],
) -> None:
    s, _ = stack
    account = await s.account()
    location, order = await s.order(account, "wrong.acme.test")
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    http01 = challenge_of(authz, "http-01")
    s.answers[http01["token"]] = key_authorization(http01["token"], "someone-elses-thumbprint")
    await s.post(account, http01["url"], {})
    settled = await s.settled(account, order["authorizations"][0])
    assert settled["status"] == "invalid"
    error = challenge_of(settled, "http-01")["error"]
    assert error["type"] == PROBLEM + "incorrectResponse" and "someone-elses-thumbprint" in error["detail"]
    _, _, now = await s.post(account, location, None)
    assert now["status"] == "invalid"
    # A settled challenge is not validated again.
    s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
    _, _, again = await s.post(account, http01["url"], {})
    assert again["status"] == "invalid"


async def test_an_http_01_server_that_answers_404_or_is_not_there_fails_thechallenge_of(
    stack: tuple[Stack, AlpnServer],
) -> None:
    s, _ = stack
    account = await s.account()
    _, order = await s.order(account, "missing.acme.test")
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    await s.post(account, challenge_of(authz, "http-01")["url"], {})  # nothing served for its token: 404
    error = challenge_of(await s.settled(account, order["authorizations"][0]), "http-01")["error"]
    assert error["type"] == PROBLEM + "unauthorized" and "HTTP 404" in error["detail"]
    # tls-alpn-01 with no TLS server listening.
    _, order = await s.order(account, "nobody.acme.test")
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    await s.post(account, challenge_of(authz, "tls-alpn-01")["url"], {})
    error = challenge_of(await s.settled(account, order["authorizations"][0]), "tls-alpn-01")["error"]
    assert error["type"] == PROBLEM + "connection"


@pytest.mark.parametrize("case", ["no ALPN", "wrong digest", "not critical", "another name"])
async def test_a_tls_alpn_01_answer_that_is_not_exactly_right_fails(stack: tuple[Stack, AlpnServer], case: str) -> None:
    s, alpn = stack
    account = await s.account()
    _, order = await s.order(account, "alpn.acme.test")
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    challenge = challenge_of(authz, "tls-alpn-01")
    right = key_authorization(challenge["token"], account.thumbprint)
    if case == "no ALPN":
        await alpn.serve(*alpn_certificate("alpn.acme.test", right), ["http/1.1"])
    elif case == "wrong digest":
        await alpn.serve(*alpn_certificate("alpn.acme.test", right, digest=bytes(32)), ["acme-tls/1"])
    elif case == "not critical":
        await alpn.serve(*alpn_certificate("alpn.acme.test", right, critical=False), ["acme-tls/1"])
    else:
        await alpn.serve(*alpn_certificate("other.acme.test", right), ["acme-tls/1"])
    await s.post(account, challenge["url"], {})
    settled = await s.settled(account, order["authorizations"][0])
    error = challenge_of(settled, "tls-alpn-01")["error"]
    assert settled["status"] == "invalid"
    assert error["type"] == PROBLEM + ("tls" if case == "no ALPN" else "incorrectResponse"), error


@pytest.mark.parametrize(
    ("identifiers", "kind"),
    [
        ([{"type": "ip", "value": "127.0.0.1"}], "unsupportedIdentifier"),
        ([{"type": "dns", "value": "*.test"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "*.*.acme.test"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "Upper.acme.test"}], "rejectedIdentifier"),
        ([{"type": "dns", "value": "bad_label.acme.test"}], "rejectedIdentifier"),
        (
            [
                {"type": "dns", "value": "ok.acme.test"},
                {"type": "ip", "value": "::1"},
                {"type": "dns", "value": "a..b"},
            ],
            "compound",
        ),
        ([{"type": "dns", "value": f"n{i}.acme.test"} for i in range(101)], "malformed"),
        ([], "malformed"),
        ([{"type": "dns", "value": "a.acme.test", "extra": 1}], "malformed"),
    ],
)
async def test_an_order_for_identifiers_that_cannot_be_served_is_refused_and_creates_nothing(
    stack: tuple[Stack, AlpnServer], identifiers: list[dict[str, Any]], kind: str
) -> None:
    s, _ = stack
    account = await s.account()
    status, _, problem = await s.post(account, s.url("/acme/new-order"), {"identifiers": identifiers})
    assert (status, problem["type"]) == (400, PROBLEM + kind), problem
    if kind == "compound":
        assert [p["identifier"]["value"] for p in problem["subproblems"]] == ["::1", "a..b"]
    assert await s.pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_an_order_may_not_choose_its_validity(stack: tuple[Stack, AlpnServer]) -> None:
    s, _ = stack
    account = await s.account()
    payload = {"identifiers": [{"type": "dns", "value": "a.acme.test"}], "notAfter": "2030-01-01T00:00:00Z"}
    status, _, problem = await s.post(account, s.url("/acme/new-order"), payload)
    assert (status, problem["type"]) == (400, PROBLEM + "malformed") and "validity" in problem["detail"]


async def test_an_account_cannot_see_or_answer_another_accounts_order(stack: tuple[Stack, AlpnServer]) -> None:
    s, _ = stack
    owner, other = await s.account(), await s.account()
    location, order = await s.order(owner, "mine.acme.test")
    _, _, authz = await s.post(owner, order["authorizations"][0], None)
    for url, payload in [
        (location, None),
        (order["authorizations"][0], None),
        (challenge_of(authz, "http-01")["url"], {}),
        (location + "/finalize", {"csr": ""}),
    ]:
        status, _, problem = await s.post(other, url, payload)
        assert (status, problem["type"]) == (404, PROBLEM + "malformed"), url
    _, _, still = await s.post(owner, order["authorizations"][0], None)
    assert challenge_of(still, "http-01")["status"] == "pending"


async def test_a_deactivated_authorization_makes_its_order_invalid(stack: tuple[Stack, AlpnServer]) -> None:
    s, _ = stack
    account = await s.account()
    location, order = await s.order(account, "gone.acme.test")
    status, _, authz = await s.post(account, order["authorizations"][0], {"status": "deactivated"})
    assert (status, authz["status"]) == (200, "deactivated")
    _, _, now = await s.post(account, location, None)
    assert now["status"] == "invalid"
    status, _, problem = await s.post(account, order["authorizations"][0], {"status": "valid"})
    assert problem["type"] == PROBLEM + "malformed"


async def test_a_challenge_posted_twice_is_validated_once(stack: tuple[Stack, AlpnServer]) -> None:
    s, _ = stack
    account = await s.account()
    _, order = await s.order(account, "twice.acme.test")
    _, _, authz = await s.post(account, order["authorizations"][0], None)
    http01 = challenge_of(authz, "http-01")
    s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
    await asyncio.gather(s.post(account, http01["url"], {}), s.post(account, http01["url"], {}))
    assert (await s.settled(account, order["authorizations"][0]))["status"] == "valid"
    await s.post(account, http01["url"], {})
    assert s.hits == {http01["token"]: 1}


def test_resolver_overrides_parse_and_refuse_what_is_not_an_address() -> None:
    resolver = Resolver.parse(" *.internal=127.0.0.1, host.test=::1 ")
    assert resolver.overrides == (("*.internal", "127.0.0.1"), ("host.test", "::1"))
    assert asyncio.run(resolver.address("a.b.internal")) == "127.0.0.1"
    for bad in ("*.internal", "=127.0.0.1", "x.test=not-an-ip"):
        with pytest.raises(ValueError):
            Resolver.parse(bad)


async def test_an_account_over_its_orders_an_hour_is_rate_limited_until_the_hour_passes(
    acme_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async for s, _ in _stack(acme_pool, tmp_path, orders_per_hour=2):
        account, other = await s.account(), await s.account()
        await s.order(account, "one.acme.test")
        await s.order(account, "two.acme.test")
        status, headers, problem = await s.post(
            account, s.url("/acme/new-order"), {"identifiers": [{"type": "dns", "value": "three.acme.test"}]}
        )
        assert (status, problem["type"]) == (429, PROBLEM + "rateLimited"), problem
        assert 3500 <= int(headers["Retry-After"]) <= 3601 and "2 orders in the last hour" in problem["detail"]
        assert await s.pool.fetchval("SELECT count(*) FROM orders") == 2
        await s.order(other, "three.acme.test")  # another account has its own limit
        # An hour later (the orders' times moved back), the account may order again.
        await s.pool.execute("UPDATE orders SET created_at = created_at - interval '61 minutes'")
        await s.order(account, "three.acme.test")


async def test_failed_validations_of_a_name_are_rate_limited_per_account(
    acme_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    async for s, _ in _stack(acme_pool, tmp_path, failed_validations_per_hour=1):
        account = await s.account()
        _, order = await s.order(account, "flaky.acme.test")
        _, _, authz = await s.post(account, order["authorizations"][0], None)
        await s.post(account, challenge_of(authz, "http-01")["url"], {})  # nothing served: fails
        assert (await s.settled(account, order["authorizations"][0]))["status"] == "invalid"
        _, again = await s.order(account, "flaky.acme.test")
        _, _, authz = await s.post(account, again["authorizations"][0], None)
        http01 = challenge_of(authz, "http-01")
        s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
        status, headers, problem = await s.post(account, http01["url"], {})
        assert (status, problem["type"]) == (429, PROBLEM + "rateLimited"), problem
        assert "flaky.acme.test" in problem["detail"] and int(headers["Retry-After"]) > 3500
        assert s.hits.get(http01["token"]) is None  # not validated: nothing was asked
        # Another name of the same account is not limited.
        _, fine = await s.order(account, "fine.acme.test")
        _, _, authz = await s.post(account, fine["authorizations"][0], None)
        http01 = challenge_of(authz, "http-01")
        s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
        status, _, _ = await s.post(account, http01["url"], {})
        assert status == 200
        assert (await s.settled(account, fine["authorizations"][0]))["status"] == "valid"
