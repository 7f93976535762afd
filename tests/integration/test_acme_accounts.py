"""ACME's directory, nonces, request checks and accounts (RFC 8555 §6-7.3), over HTTP on loopback,
with nonces and accounts in a real PostgreSQL. The client signs with its own JWS code
(tests/acme_client.py), independent of the server's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from acme_client import AccountKey, b64, jws, public_jwk
from deploy.local.devstack import free_port
from services.acme.server import Acme, AcmeConfig

pytestmark = pytest.mark.timeout(60)
PROBLEM = "urn:ietf:params:acme:error:"


@dataclass
class Server:
    base: str
    http: aiohttp.ClientSession
    pool: asyncpg.Pool
    acme: Acme

    def url(self, path: str) -> str:
        return self.base + path

    async def nonce(self) -> str:
        async with self.http.head(self.url("/acme/new-nonce")) as r:
            assert r.status == 200
            return r.headers["Replay-Nonce"]

    async def post(self, path: str, body: bytes, content_type: str = "application/jose+json") -> tuple[int, Any, Any]:
        async with self.http.post(self.url(path), data=body, headers={"Content-Type": content_type}) as r:
            return r.status, r.headers, await r.json(content_type=None)

    async def signed(
        self, key: AccountKey, path: str, payload: dict[str, Any] | None, *, kid: str | None = None, **header: Any
    ) -> tuple[int, Any, Any]:
        return await self.post(path, jws(key, self.url(path), payload, await self.nonce(), kid=kid, header=header))

    async def new_account(self, key: AccountKey, **payload: Any) -> tuple[int, Any, Any]:
        return await self.signed(key, "/acme/new-account", {"termsOfServiceAgreed": True, **payload})

    async def accounts(self) -> int:
        count: int = await self.pool.fetchval("SELECT count(*) FROM accounts")
        return count


async def _serve(pool: asyncpg.Pool, **config: Any) -> AsyncIterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    acme = Acme(lambda: pool, AcmeConfig(base_url=base, **{"eab_required": False, **config}))
    server = TestServer(acme.application(), host="127.0.0.1", port=port)
    await server.start_server()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield Server(base, http, pool, acme)
    await server.close()


@pytest.fixture
async def server(acme_pool: asyncpg.Pool) -> AsyncIterator[Server]:
    async for s in _serve(acme_pool):
        yield s


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


async def test_the_directory_names_absolute_urls_and_every_answer_carries_a_nonce_and_the_index(
    server: Server,
) -> None:
    async with server.http.get(server.url("/acme/directory")) as r:
        directory = await r.json()
        assert r.headers["Link"] == f'<{server.url("/acme/directory")}>;rel="index"'
    assert directory["newNonce"] == server.url("/acme/new-nonce")
    assert directory["newAccount"] == server.url("/acme/new-account")
    assert directory["meta"]["externalAccountRequired"] is False
    async with server.http.get(server.url("/acme/new-nonce")) as r:
        assert r.status == 204 and r.headers["Cache-Control"] == "no-store"
        assert len(r.headers["Replay-Nonce"]) >= 22
    assert await server.nonce() != await server.nonce()


@pytest.mark.parametrize(
    "make_key",
    [
        p256,
        lambda: ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate,
        lambda: rsa.generate_private_key(65537, 2048),
    ],
    ids=["ES256", "ES384", "EdDSA", "RS256"],
)
async def test_an_account_is_created_once_per_key_and_found_again_by_it(server: Server, make_key: Any) -> None:
    key = make_key()
    status, headers, body = await server.new_account(key, contact=["mailto:ops@example.test"])
    assert status == 201, body
    location = headers["Location"]
    assert location.startswith(server.url("/acme/acct/"))
    assert body == {"status": "valid", "contact": ["mailto:ops@example.test"], "orders": location + "/orders"}
    status, headers, body = await server.new_account(key)
    assert (status, headers["Location"]) == (200, location)
    status, headers, _ = await server.signed(key, "/acme/new-account", {"onlyReturnExisting": True})
    assert (status, headers["Location"]) == (200, location)
    status, _, body = await server.signed(key, location.removeprefix(server.base), None, kid=location)
    assert status == 200 and body["status"] == "valid"
    assert await server.accounts() == 1


async def test_only_return_existing_for_an_unknown_key_creates_nothing(server: Server) -> None:
    status, _, body = await server.signed(p256(), "/acme/new-account", {"onlyReturnExisting": True})
    assert (status, body["type"]) == (400, PROBLEM + "accountDoesNotExist")
    assert await server.accounts() == 0


async def test_a_nonce_is_spent_once_and_a_replay_changes_nothing(server: Server) -> None:
    key = p256()
    nonce = await server.nonce()
    body = jws(key, server.url("/acme/new-account"), {"termsOfServiceAgreed": True}, nonce)
    status, headers, _ = await server.post("/acme/new-account", body)
    assert status == 201
    status, headers, problem = await server.post("/acme/new-account", body)
    assert (status, problem["type"]) == (400, PROBLEM + "badNonce")
    assert headers["Replay-Nonce"]  # a client retries with the nonce a badNonce carries
    made_up = jws(p256(), server.url("/acme/new-account"), {"termsOfServiceAgreed": True}, b64(b"not issued here"))
    status, _, problem = await server.post("/acme/new-account", made_up)
    assert problem["type"] == PROBLEM + "badNonce"
    assert await server.accounts() == 1


async def test_an_expired_nonce_is_refused(acme_pool: asyncpg.Pool) -> None:
    async for server in _serve(acme_pool, nonce_ttl=timedelta(microseconds=1)):
        status, _, problem = await server.new_account(p256())
        assert (status, problem["type"]) == (400, PROBLEM + "badNonce")


async def test_a_signature_that_does_not_verify_is_malformed_and_creates_nothing(server: Server) -> None:
    good = json.loads(
        jws(p256(), server.url("/acme/new-account"), {"termsOfServiceAgreed": True}, await server.nonce())
    )
    good["payload"] = b64(json.dumps({"termsOfServiceAgreed": True, "contact": ["mailto:x@example.test"]}).encode())
    status, _, problem = await server.post("/acme/new-account", json.dumps(good).encode())
    assert (status, problem["type"]) == (400, PROBLEM + "malformed")
    assert "signature" in problem["detail"]
    signed_by_another = jws(
        p256(), server.url("/acme/new-account"), {}, await server.nonce(), header={"jwk": public_jwk(p256())}
    )
    status, _, problem = await server.post("/acme/new-account", signed_by_another)
    assert problem["type"] == PROBLEM + "malformed"
    assert await server.accounts() == 0


@pytest.mark.parametrize("alg", ["none", "HS256", "ES512", "PS256"])
async def test_an_algorithm_outside_the_list_is_refused_with_the_list(server: Server, alg: str) -> None:
    protected = b64(
        json.dumps(
            {
                "alg": alg,
                "nonce": await server.nonce(),
                "url": server.url("/acme/new-account"),
                "jwk": public_jwk(p256()),
            }
        ).encode()
    )
    body = json.dumps({"protected": protected, "payload": b64(b"{}"), "signature": ""}).encode()
    status, _, problem = await server.post("/acme/new-account", body)
    assert (status, problem["type"]) == (400, PROBLEM + "badSignatureAlgorithm")
    assert problem["algorithms"] == ["ES256", "ES384", "EdDSA", "RS256"]


async def test_an_algorithm_that_does_not_fit_the_key_is_refused(server: Server) -> None:
    _, _, problem = await server.signed(p256(), "/acme/new-account", {}, alg="EdDSA")
    assert problem["type"] == PROBLEM + "badSignatureAlgorithm"


async def test_a_request_naming_another_url_is_unauthorized(server: Server) -> None:
    body = jws(p256(), server.url("/acme/acct/elsewhere"), {"termsOfServiceAgreed": True}, await server.nonce())
    status, _, problem = await server.post("/acme/new-account", body)
    assert (status, problem["type"]) == (403, PROBLEM + "unauthorized")
    assert await server.accounts() == 0


@pytest.mark.parametrize(
    ("shape", "detail"),
    [
        ({"signatures": []}, "flattened"),
        ({"protected": "e30", "payload": "", "signature": "", "header": {}}, "unprotected"),
        ({"protected": "e30", "payload": ""}, "exactly"),
        ({"protected": "!!!", "payload": "", "signature": ""}, "base64url"),
        ([], "not a JWS object"),
    ],
)
async def test_a_body_that_is_not_an_acme_jws_is_malformed(server: Server, shape: Any, detail: str) -> None:
    status, _, problem = await server.post("/acme/new-account", json.dumps(shape).encode())
    assert (status, problem["type"]) == (400, PROBLEM + "malformed")
    assert detail in problem["detail"]


async def test_a_body_that_is_not_jose_json_is_refused_with_415(server: Server) -> None:
    body = jws(p256(), server.url("/acme/new-account"), {}, await server.nonce())
    status, _, problem = await server.post("/acme/new-account", body, content_type="application/json")
    assert (status, problem["type"]) == (415, PROBLEM + "malformed")


async def test_a_private_or_weak_account_key_is_refused(server: Server) -> None:
    key = p256()
    private = public_jwk(key) | {"d": b64(key.private_numbers().private_value.to_bytes(32, "big"))}
    _, _, problem = await server.signed(key, "/acme/new-account", {}, jwk=private)
    assert problem["type"] == PROBLEM + "badPublicKey"
    weak = rsa.generate_private_key(65537, 1024)
    _, _, problem = await server.new_account(weak)
    assert problem["type"] == PROBLEM + "badPublicKey" and "1024" in problem["detail"]
    assert await server.accounts() == 0


async def test_a_kid_must_name_an_account_of_this_server_and_only_its_own(server: Server) -> None:
    one, two = p256(), p256()
    _, headers, _ = await server.new_account(one)
    first = headers["Location"]
    _, headers, _ = await server.new_account(two)
    second = headers["Location"]
    status, _, problem = await server.signed(one, "/acme/acct/nobody", None, kid=server.url("/acme/acct/nobody"))
    assert (status, problem["type"]) == (400, PROBLEM + "accountDoesNotExist")
    status, _, problem = await server.signed(two, first.removeprefix(server.base), None, kid=second)
    assert (status, problem["type"]) == (403, PROBLEM + "unauthorized")
    # Naming account one while signing with account two's key does not verify.
    status, _, problem = await server.signed(two, first.removeprefix(server.base), None, kid=first)
    assert problem["type"] == PROBLEM + "malformed"
    status, _, problem = await server.signed(one, "/acme/new-account", {}, kid=first)
    assert problem["type"] == PROBLEM + "malformed" and "jwk" in problem["detail"]


async def test_contacts_are_bounded_and_checked(server: Server) -> None:
    key = p256()
    for contact, kind in [
        (["tel:+15555550100"], "unsupportedContact"),
        (["mailto:a@example.test,b@example.test"], "invalidContact"),
        (["mailto:a@example.test?subject=x"], "invalidContact"),
        (["mailto:nobody"], "invalidContact"),
        ([f"mailto:{i}@example.test" for i in range(5)], "malformed"),
        ("mailto:a@example.test", "malformed"),
    ]:
        status, _, problem = await server.new_account(key, contact=contact)
        assert (status, problem["type"]) == (400, PROBLEM + kind), contact
    assert await server.accounts() == 0


async def test_an_account_updates_its_contacts_and_once_deactivated_can_do_nothing(server: Server) -> None:
    key = p256()
    _, headers, _ = await server.new_account(key, contact=["mailto:old@example.test"])
    url = headers["Location"]
    path = url.removeprefix(server.base)
    status, _, body = await server.signed(key, path, {"contact": ["mailto:new@example.test"]}, kid=url)
    assert (status, body["contact"]) == (200, ["mailto:new@example.test"])
    status, _, problem = await server.signed(key, path, {"status": "revoked"}, kid=url)
    assert problem["type"] == PROBLEM + "malformed"
    status, _, body = await server.signed(key, path, {"status": "deactivated"}, kid=url)
    assert (status, body["status"]) == (200, "deactivated")
    status, _, problem = await server.signed(key, path, None, kid=url)
    assert (status, problem["type"]) == (403, PROBLEM + "unauthorized")
    assert "deactivated" in problem["detail"]
    # The key stays bound to its deactivated account: newAccount finds it, never makes a second one.
    status, _, body = await server.new_account(key)
    assert (status, body["status"]) == (200, "deactivated")
    assert await server.accounts() == 1


async def test_terms_of_service_when_the_server_has_them_must_be_agreed(acme_pool: asyncpg.Pool) -> None:
    async for server in _serve(acme_pool, terms_of_service="https://pki.example.test/terms"):
        async with server.http.get(server.url("/acme/directory")) as r:
            assert (await r.json())["meta"]["termsOfService"] == "https://pki.example.test/terms"
        status, _, problem = await server.signed(p256(), "/acme/new-account", {})
        assert problem["type"] == PROBLEM + "malformed" and "terms of service" in problem["detail"]
        status, _, _ = await server.new_account(p256())
        assert status == 201


async def test_expired_nonces_are_pruned(server: Server) -> None:
    await server.nonce()
    await server.pool.execute("UPDATE nonces SET expires_at = now() - interval '1 second'")
    assert await server.acme.prune() >= 1
    assert await server.pool.fetchval("SELECT count(*) FROM nonces") == 0


async def test_without_its_database_acme_says_try_again_and_changes_nothing(acme_pool: asyncpg.Pool) -> None:
    async for server in _serve(acme_pool):
        key = p256()
        body = jws(key, server.url("/acme/new-account"), {"termsOfServiceAgreed": True}, await server.nonce())
        await acme_pool.close()  # what a lost database looks like to the service
        status, headers, problem = await server.post("/acme/new-account", body)
        assert (status, problem["type"], headers["Retry-After"]) == (503, PROBLEM + "serverInternal", "5")
        assert "Replay-Nonce" not in headers
        async with server.http.get(server.url("/acme/directory")) as r:
            assert r.status == 200  # what needs no database is still served


async def _key_change(
    server: Server, old: AccountKey, new: AccountKey, url: str, **inner_fields: Any
) -> tuple[int, Any, Any]:
    """RFC 8555 §7.3.5: an inner JWS by the new key (its jwk, no nonce) inside one by the account."""
    change = server.url("/acme/key-change")
    inner_url = inner_fields.pop("inner_url", change)
    payload = {"account": url, "oldKey": public_jwk(old)} | inner_fields
    inner = json.loads(jws(new, inner_url, payload, None))
    return await server.signed(old, "/acme/key-change", inner, kid=url)


async def test_an_account_rolls_over_to_a_new_key_and_the_old_one_stops_working(server: Server) -> None:
    old, new = p256(), ed25519.Ed25519PrivateKey.generate()
    _, headers, _ = await server.new_account(old)
    url = headers["Location"]
    async with server.http.get(server.url("/acme/directory")) as r:
        assert (await r.json())["keyChange"] == server.url("/acme/key-change")
    status, headers, body = await _key_change(server, old, new, url)
    assert (status, body["status"]) == (200, "valid"), body
    path = url.removeprefix(server.base)
    status, _, _ = await server.signed(new, path, None, kid=url)
    assert status == 200
    status, _, problem = await server.signed(old, path, None, kid=url)
    # An ES256 signature for an account whose key is now Ed25519.
    assert (status, problem["type"]) == (400, PROBLEM + "badSignatureAlgorithm")
    status, headers, _ = await server.signed(new, "/acme/new-account", {"onlyReturnExisting": True})
    assert (status, headers["Location"]) == (200, url)
    assert await server.accounts() == 1


async def test_a_key_change_to_another_accounts_key_is_a_conflict_naming_it(server: Server) -> None:
    one, two = p256(), p256()
    _, headers, _ = await server.new_account(one)
    first = headers["Location"]
    _, headers, _ = await server.new_account(two)
    second = headers["Location"]
    status, headers, problem = await _key_change(server, one, two, first)
    assert (status, headers["Location"]) == (409, second), problem
    status, _, _ = await server.signed(one, first.removeprefix(server.base), None, kid=first)
    assert status == 200  # unchanged


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("inner url", "url"),
        ("account", "account"),
        ("old key", "oldKey"),
        ("inner nonce", "no nonce"),
        ("forged", "signature"),
    ],
)
async def test_a_key_change_that_does_not_hold_together_changes_nothing(server: Server, case: str, words: str) -> None:
    old, new = p256(), p256()
    _, headers, _ = await server.new_account(old)
    url = headers["Location"]
    change = server.url("/acme/key-change")
    if case == "inner url":
        status, _, problem = await _key_change(server, old, new, url, inner_url=server.url("/acme/new-account"))
    elif case == "account":
        status, _, problem = await _key_change(server, old, new, url, account=server.url("/acme/acct/other"))
    elif case == "old key":
        status, _, problem = await _key_change(server, old, new, url, oldKey=public_jwk(p256()))
    else:
        payload = {"account": url, "oldKey": public_jwk(old)}
        if case == "inner nonce":
            inner = json.loads(jws(new, change, payload, "a-nonce"))
        else:  # carries the new key's jwk but is signed by yet another key
            inner = json.loads(jws(p256(), change, payload, None, header={"jwk": public_jwk(new)}))
        status, _, problem = await server.signed(old, "/acme/key-change", inner, kid=url)
    assert (status, problem["type"]) == (400, PROBLEM + "malformed"), problem
    assert words in problem["detail"]
    status, _, _ = await server.signed(old, url.removeprefix(server.base), None, kid=url)
    assert status == 200


async def test_the_directory_spends_no_nonce(server: Server) -> None:
    async with server.http.get(server.url("/acme/directory")) as r:
        assert r.status == 200 and "Replay-Nonce" not in r.headers
    assert await server.pool.fetchval("SELECT count(*) FROM nonces") == 0
