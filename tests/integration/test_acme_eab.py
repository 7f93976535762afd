"""External account binding (RFC 8555 §7.3.4) tied to Certbus provisioners, over HTTP on loopback with
a real PostgreSQL: credentials made with the credential store the CLI uses, bindings built by the
test client with hmac alone (tests/acme_client.py), an EAB account's orders enrolled under its
provisioner, and `certbus acme eab` against a migrated schema."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from acme_client import Account, AccountKey, Stack, challenge_of, eab, serve_answers
from deploy.local.devstack import free_port
from services.acme.challenges import Resolver, Validator, key_authorization
from services.acme.finalize import BusFinalizer, Issued
from services.acme.server import Acme, AcmeConfig
from shared.base.settings import CommonSettings
from shared.contract.events import EnrollmentRequested, utcnow
from shared.trust import eab as credentials

pytestmark = pytest.mark.timeout(60)
PROBLEM = "urn:ietf:params:acme:error:"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RecordingFinalizer(BusFinalizer):
    """ACME's finalizer as it builds requests, with the bus replaced by a list of what it was given."""

    submitted: list[EnrollmentRequested] = field(default_factory=list)

    async def submit(self, request: EnrollmentRequested) -> Issued:
        self.submitted.append(request)
        return Issued("01", "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")


@dataclass
class Eab:
    stack: Stack
    pool: asyncpg.Pool
    finalizer: RecordingFinalizer

    @property
    def new_account_url(self) -> str:
        return self.stack.url("/acme/new-account")

    async def credential(self, provisioner: str = "team-a", profile: str | None = None) -> tuple[str, bytes]:
        async with self.pool.acquire() as conn:
            return await credentials.create(conn, provisioner, profile, "tests", utcnow())

    async def new_account(
        self, key: AccountKey, binding: dict[str, str] | None, **payload: Any
    ) -> tuple[int, Any, Any]:
        body: dict[str, Any] = {"termsOfServiceAgreed": True, **payload}
        if binding is not None:
            body["externalAccountBinding"] = binding
        return await self.stack.post(key, self.new_account_url, body)

    async def bound_account(self, provisioner: str = "team-a", profile: str | None = None) -> Account:
        kid, hmac_key = await self.credential(provisioner, profile)
        key = p256()
        status, headers, body = await self.new_account(key, eab(kid, hmac_key, key, self.new_account_url))
        assert status == 201, body
        return Account(key, headers["Location"])

    async def accounts(self) -> int:
        count: int = await self.pool.fetchval("SELECT count(*) FROM accounts")
        return count


async def _serve(acme_pool: asyncpg.Pool, **config: Any) -> AsyncIterator[Eab]:
    http_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    finalizer = RecordingFinalizer(CommonSettings(), "acme", "acme", ed25519.Ed25519PrivateKey.generate(), "tls-server")
    validator = Validator(Resolver.parse("*.acme.test=127.0.0.1"), http_port=http_port, timeout_s=5)
    acme = Acme(lambda: acme_pool, AcmeConfig(base_url=base, validator=validator, finalizer=finalizer, **config))
    async with serve_answers(acme, acme_pool, base, port, http_port) as s:
        yield Eab(s, acme_pool, finalizer)


@pytest.fixture
async def server(acme_pool: asyncpg.Pool) -> AsyncIterator[Eab]:
    async for s in _serve(acme_pool):
        yield s


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_an_account_with_a_valid_binding_is_created_and_bound_to_the_credentials_provisioner(
    server: Eab, alg: str
) -> None:
    kid, hmac_key = await server.credential("team-a")
    key = p256()
    status, headers, body = await server.new_account(key, eab(kid, hmac_key, key, server.new_account_url, alg=alg))
    assert status == 201, body
    account_id = headers["Location"].rsplit("/", 1)[1]
    assert await server.pool.fetchval("SELECT provisioner_id FROM accounts WHERE account_id = $1", account_id) == (
        "team-a"
    )
    row = await server.pool.fetchrow("SELECT account_id, bound_at FROM eab_credentials WHERE kid = $1", kid)
    assert row["account_id"] == account_id and row["bound_at"] is not None


async def test_a_new_account_without_a_binding_is_refused_when_one_is_required(server: Eab) -> None:
    status, _, body = await server.new_account(p256(), None)
    assert (status, body["type"]) == (400, PROBLEM + "externalAccountRequired")
    assert await server.accounts() == 0


async def test_the_directory_says_whether_a_binding_is_required(acme_pool: asyncpg.Pool) -> None:
    for required in (True, False):
        async for s in _serve(acme_pool, eab_required=required):
            async with s.stack.http.get(s.stack.url("/acme/directory")) as r:
                assert (await r.json())["meta"]["externalAccountRequired"] is required


async def test_an_existing_account_is_returned_without_a_binding(server: Eab) -> None:
    account = await server.bound_account()
    status, headers, _ = await server.new_account(account.key, None)
    assert (status, headers["Location"]) == (200, account.url)
    status, headers, _ = await server.new_account(account.key, None, onlyReturnExisting=True)
    assert (status, headers["Location"]) == (200, account.url)


async def test_a_binding_with_a_wrong_hmac_is_unauthorized(server: Eab) -> None:
    kid, _ = await server.credential()
    key = p256()
    status, _, body = await server.new_account(key, eab(kid, bytes(32), key, server.new_account_url))
    assert (status, body["type"]) == (403, PROBLEM + "unauthorized")
    assert await server.accounts() == 0
    assert await server.pool.fetchval("SELECT account_id FROM eab_credentials WHERE kid = $1", kid) is None


async def test_a_binding_with_an_unknown_kid_is_unauthorized(server: Eab) -> None:
    key = p256()
    status, _, body = await server.new_account(key, eab("no-such-kid", bytes(32), key, server.new_account_url))
    assert (status, body["type"]) == (403, PROBLEM + "unauthorized")
    assert await server.accounts() == 0


async def test_a_binding_with_a_revoked_kid_is_unauthorized(server: Eab) -> None:
    kid, hmac_key = await server.credential()
    async with server.pool.acquire() as conn:
        assert await credentials.revoke(conn, kid, utcnow()) is not None
    key = p256()
    status, _, body = await server.new_account(key, eab(kid, hmac_key, key, server.new_account_url))
    assert (status, body["type"]) == (403, PROBLEM + "unauthorized") and "revoked" in body["detail"]
    assert await server.accounts() == 0


async def test_a_kid_binds_one_account_only(server: Eab) -> None:
    kid, hmac_key = await server.credential()
    first, second = p256(), p256()
    assert (await server.new_account(first, eab(kid, hmac_key, first, server.new_account_url)))[0] == 201
    status, _, body = await server.new_account(second, eab(kid, hmac_key, second, server.new_account_url))
    assert (status, body["type"]) == (403, PROBLEM + "unauthorized") and "bound" in body["detail"]
    assert await server.accounts() == 1


async def test_a_kid_used_by_two_accounts_at_once_binds_one(server: Eab) -> None:
    kid, hmac_key = await server.credential()
    keys = [p256() for _ in range(6)]
    answers = await asyncio.gather(
        *(server.new_account(k, eab(kid, hmac_key, k, server.new_account_url)) for k in keys)
    )
    assert sorted(status for status, _, _ in answers) == [201] + [403] * 5
    assert await server.accounts() == 1
    bound = await server.pool.fetchval("SELECT account_id FROM eab_credentials WHERE kid = $1", kid)
    assert await server.pool.fetchval("SELECT account_id FROM accounts") == bound


async def test_a_binding_over_another_key_is_refused(server: Eab) -> None:
    kid, hmac_key = await server.credential()
    key, other = p256(), p256()
    status, _, body = await server.new_account(key, eab(kid, hmac_key, other, server.new_account_url))
    assert (status, body["type"]) == (400, PROBLEM + "malformed") and "key" in body["detail"]
    assert await server.accounts() == 0
    assert await server.pool.fetchval("SELECT account_id FROM eab_credentials WHERE kid = $1", kid) is None


def _resigned(binding: dict[str, str], hmac_key: bytes, **header: Any) -> dict[str, str]:
    """The binding with its protected header changed (and MACed again, so only the change is wrong)."""
    import hashlib
    import hmac

    protected = json.loads(base64.urlsafe_b64decode(binding["protected"] + "=="))
    protected = {k: v for k, v in {**protected, **header}.items() if v is not None}
    p = base64.urlsafe_b64encode(json.dumps(protected).encode()).rstrip(b"=").decode()
    mac = hmac.new(hmac_key, f"{p}.{binding['payload']}".encode(), hashlib.sha256).digest()
    return {**binding, "protected": p, "signature": base64.urlsafe_b64encode(mac).rstrip(b"=").decode()}


@pytest.mark.parametrize(
    "header",
    [{"url": "https://elsewhere.test/acme/new-account"}, {"nonce": "abc"}, {"alg": "none"}, {"alg": "RS256"}],
)
async def test_a_structurally_bad_binding_is_malformed(server: Eab, header: dict[str, Any]) -> None:
    kid, hmac_key = await server.credential()
    key = p256()
    binding = _resigned(eab(kid, hmac_key, key, server.new_account_url), hmac_key, **header)
    status, _, body = await server.new_account(key, binding)
    assert (status, body["type"]) == (400, PROBLEM + "malformed"), body
    status, _, body = await server.new_account(key, {"protected": binding["protected"]})
    assert (status, body["type"]) == (400, PROBLEM + "malformed"), body
    assert await server.accounts() == 0


def _csr(*names: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return base64.urlsafe_b64encode(csr.public_bytes(serialization.Encoding.DER)).rstrip(b"=").decode()


async def _finalized(server: Eab, account: Account, name: str) -> EnrollmentRequested:
    """The enrollment request an order of `account` for `name` became once finalized."""
    s = server.stack
    _, order = await s.order(account, name)
    for url in order["authorizations"]:
        _, _, authz = await s.post(account, url, None)
        http01 = challenge_of(authz, "http-01")
        s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
        await s.post(account, http01["url"], {})
        assert (await s.settled(account, url))["status"] == "valid"
    status, _, body = await s.post(account, order["finalize"], {"csr": _csr(name)})
    assert status == 200, body
    for _ in range(100):
        if server.finalizer.submitted:
            break
        await asyncio.sleep(0.05)
    return server.finalizer.submitted.pop()


async def test_an_eab_accounts_order_is_enrolled_with_its_provisioner_as_the_tokens_kid(server: Eab) -> None:
    account = await server.bound_account("team-a", profile="short-lived")
    request = await _finalized(server, account, "web.acme.test")
    header, claims = (
        jwt.get_unverified_header(request.token),
        jwt.decode(request.token, options={"verify_signature": False}),
    )
    assert (header["kid"], claims["iss"]) == ("team-a", "team-a")
    assert (request.profile, claims["profile"]) == ("short-lived", "short-lived")


async def test_an_account_without_a_binding_is_enrolled_with_acmes_own_provisioner(acme_pool: asyncpg.Pool) -> None:
    async for server in _serve(acme_pool, eab_required=False):
        account = await server.stack.account()
        request = await _finalized(server, account, "web.acme.test")
        assert jwt.get_unverified_header(request.token)["kid"] == "acme" and request.profile == "tls-server"


# -- certbus acme eab -----------------------------------------------------------------------------------


async def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`certbus acme eab ...` as its own process, its stdout a pipe, with ACME's database setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
    env |= {"CERTBUS_DATABASE_URL": database_url, "CERTBUS_OPERATOR": "alice", "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.client.cli.main",
        "acme",
        "eab",
        *args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, stdout.decode(), stderr.decode())


async def test_the_cli_creates_lists_and_revokes_credentials(server: Eab, database_url: str) -> None:
    created = await _cli(database_url, "create", "--provisioner", "team-a", "--profile", "short-lived")
    assert created.returncode == 0, created.stderr
    lines = dict(line.split(": ", 1) for line in created.stdout.splitlines())
    kid, hmac_key = lines["kid"], lines["hmac key"]
    assert "shown this once" in created.stderr

    # What the operator hands out binds an account, under the credential's provisioner.
    key = base64.urlsafe_b64decode(hmac_key + "=" * (-len(hmac_key) % 4))
    account_key = p256()
    status, headers, _ = await server.new_account(account_key, eab(kid, key, account_key, server.new_account_url))
    assert status == 201
    account_id = headers["Location"].rsplit("/", 1)[1]

    other = await _cli(database_url, "create", "--provisioner", "team-b", "--json")
    assert other.returncode == 0, other.stderr
    other_kid = json.loads(other.stdout)["kid"]
    revoked = await _cli(database_url, "revoke", other_kid)
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked {other_kid} (provisioner team-b)\n"), revoked.stderr

    listed = await _cli(database_url, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]  # a pipe: plain tab-separated lines
    assert rows[0] == ["kid", "provisioner", "profile", "account", "created (UTC)", "created by", "revoked (UTC)"]
    by_kid = {r[0]: r for r in rows[1:]}
    assert by_kid[kid][1:4] == ["team-a", "short-lived", account_id] and by_kid[kid][5:] == ["alice", ""]
    assert by_kid[other_kid][1:4] == ["team-b", "", ""] and by_kid[other_kid][6] != ""
    assert hmac_key not in listed.stdout

    as_json = json.loads((await _cli(database_url, "list", "--json")).stdout)
    assert {c["kid"]: c["account"] for c in as_json} == {kid: account_id, other_kid: None}
    assert not any("hmac" in k for c in as_json for k in c)

    unknown = await _cli(database_url, "revoke", "no-such-kid")
    assert unknown.returncode == 1 and "no EAB credential" in unknown.stderr
    # A key id that begins with `-` (as base64url ids made before hex ones could) reaches the command after `--`.
    dashed = await _cli(database_url, "revoke", "--", "-no-such-kid")
    assert dashed.returncode == 1 and "no EAB credential has key id '-no-such-kid'" in dashed.stderr


async def test_the_cli_says_when_acmes_schema_is_not_migrated_or_its_database_unreachable(database_url: str) -> None:
    unmigrated = await _cli(database_url, "list")
    assert unmigrated.returncode == 1 and "migrations have not run" in unmigrated.stderr
    unreachable = await _cli(f"postgresql://acme:secret@127.0.0.1:{free_port()}/certbus", "list")
    assert unreachable.returncode == 3 and "unreachable" in unreachable.stderr
    assert "secret" not in unreachable.stderr
