"""A minimal ACME client for tests: JWS built by hand with `cryptography` alone (not with the
library the server verifies with), so that a server-side mistake cannot cancel out on both ends."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from deploy.local.devstack import free_port
from services.acme.challenges import ID_PE_ACME_IDENTIFIER, key_authorization
from services.acme.jws import thumbprint
from services.acme.server import Acme
from shared.contract.events import ProvisionerRegistered, utcnow
from shared.contract.profiles import Profile
from shared.pki.provisioner_keys import public_key_file

AccountKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
# A profile that allows wildcards under acme.internal: none of the shipped ones does (tls-server,
# ACME's default profile, says allow_wildcards = false), so the tests that issue one apply this.
WILDCARD_PROFILE = Profile(
    name="acme-wildcard", usage="server", dns_suffixes=["acme.internal"], allow_wildcards=True, max_validity_days=30
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(value: int, size: int | None = None) -> str:
    size = size or (value.bit_length() + 7) // 8
    return b64(value.to_bytes(size, "big"))


def alg_of(key: AccountKey) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return {"secp256r1": "ES256", "secp384r1": "ES384"}[key.curve.name]


def public_jwk(key: AccountKey) -> dict[str, Any]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))}
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _int(numbers.n), "e": _int(numbers.e)}
    size = (key.curve.key_size + 7) // 8
    point = key.public_key().public_numbers()
    crv = {"secp256r1": "P-256", "secp384r1": "P-384"}[key.curve.name]
    return {"kty": "EC", "crv": crv, "x": _int(point.x, size), "y": _int(point.y, size)}


def sign(key: AccountKey, data: bytes, alg: str | None = None) -> bytes:
    alg = alg or alg_of(key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    digest = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def jws(
    key: AccountKey,
    url: str,
    payload: dict[str, Any] | None,
    nonce: str | None,
    *,
    kid: str | None = None,
    header: dict[str, Any] | None = None,
) -> bytes:
    """A flattened-JSON JWS as RFC 8555 §6.2 asks: signed with `key`, naming it by `kid` or carrying
    its jwk; `payload` None is POST-as-GET; `nonce` None leaves it out (keyChange's inner JWS).
    `header` overrides or adds protected members."""
    protected: dict[str, Any] = {"alg": alg_of(key), "url": url} | ({"nonce": nonce} if nonce is not None else {})
    protected |= {"kid": kid} if kid else {"jwk": public_jwk(key)}
    protected |= header or {}
    p = b64(json.dumps(protected).encode())
    body = "" if payload is None else b64(json.dumps(payload).encode())
    signature = sign(key, f"{p}.{body}".encode(), protected["alg"] if protected["alg"] in ("ES256", "ES384") else None)
    return json.dumps({"protected": p, "payload": body, "signature": b64(signature)}).encode()


def eab(
    kid: str, hmac_key: bytes, account_key: AccountKey | dict[str, Any], url: str, *, alg: str = "HS256"
) -> dict[str, str]:
    """An external account binding (RFC 8555 §7.3.4) for a newAccount payload: a flattened JWS over
    the account's public JWK (or the JWK given), MACed with `hmac_key` under `alg` (HS256/384/512)."""
    jwk = account_key if isinstance(account_key, dict) else public_jwk(account_key)
    protected = b64(json.dumps({"alg": alg, "kid": kid, "url": url}).encode())
    payload = b64(json.dumps(jwk).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(hmac_key, f"{protected}.{payload}".encode(), digest).digest()
    return {"protected": protected, "payload": payload, "signature": b64(signature)}


@dataclass
class Account:
    key: AccountKey
    url: str

    @property
    def thumbprint(self) -> str:
        return thumbprint(public_jwk(self.key))


@dataclass
class Stack:
    base: str
    http: aiohttp.ClientSession
    pool: asyncpg.Pool
    answers: dict[str, str] = field(default_factory=dict)  # what the test's http-01 server answers, by token
    hits: dict[str, int] = field(default_factory=dict)  # how often it was asked, by token

    def url(self, path: str) -> str:
        return self.base + path

    async def post(
        self, account: Account | AccountKey, url: str, payload: dict[str, Any] | None
    ) -> tuple[int, Any, Any]:
        async with self.http.head(self.url("/acme/new-nonce")) as r:
            nonce = r.headers["Replay-Nonce"]
        if isinstance(account, Account):
            body = jws(account.key, url, payload, nonce, kid=account.url)
        else:
            body = jws(account, url, payload, nonce)
        async with self.http.post(url, data=body, headers={"Content-Type": "application/jose+json"}) as r:
            return r.status, r.headers, await r.json(content_type=None)

    async def account(self) -> Account:
        key = ec.generate_private_key(ec.SECP256R1())
        status, headers, _ = await self.post(key, self.url("/acme/new-account"), {"termsOfServiceAgreed": True})
        assert status == 201
        return Account(key, headers["Location"])

    async def order(self, account: Account, *names: str, replaces: str | None = None) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {"identifiers": [{"type": "dns", "value": n} for n in names]}
        if replaces is not None:
            payload["replaces"] = replaces
        status, headers, body = await self.post(account, self.url("/acme/new-order"), payload)
        assert status == 201, body
        return headers["Location"], body

    async def settled(self, account: Account, authz_url: str) -> dict[str, Any]:
        """The authorization once it is no longer pending (bounded)."""
        for _ in range(100):
            _, _, body = await self.post(account, authz_url, None)
            if body["status"] != "pending":
                settled: dict[str, Any] = body
                return settled
            await asyncio.sleep(0.05)
        raise AssertionError(f"{authz_url} still pending")


def csr_der(key: ec.EllipticCurvePrivateKey, *names: str, common_name: str | None = None) -> str:
    """A finalize payload's CSR (base64url DER) for DNS `names`, its common name the first unless given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0])])
    )
    builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return b64(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def challenge_of(authz: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in authz["challenges"] if c["type"] == kind)


def alpn_certificate(
    name: str, key_authorization_text: str, *, critical: bool = True, digest: bytes | None = None
) -> tuple[bytes, bytes]:
    """A tls-alpn-01 certificate (RFC 8737 §3) and its key, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    value = b"\x04\x20" + (digest or hashlib.sha256(key_authorization_text.encode()).digest())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, value), critical=critical)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


class AlpnServer:
    """A TLS server on loopback presenting one certificate, negotiating the ALPN protocols given."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.server: asyncio.Server | None = None

    async def serve(self, cert_pem: bytes, key_pem: bytes, alpn: list[str]) -> None:
        await self.close()
        (self.tmp / "alpn.pem").write_bytes(cert_pem)
        (self.tmp / "alpn.key").write_bytes(key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.tmp / "alpn.pem", self.tmp / "alpn.key")
        context.set_alpn_protocols(alpn)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=context)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


@asynccontextmanager
async def serve_answers(acme: Acme, pool: asyncpg.Pool, base: str, port: int, http_port: int) -> AsyncIterator[Stack]:
    """`acme` served at `base` (on `port`), and the test's http-01 server on `http_port` answering
    what `Stack.answers` holds, counting what it is asked in `Stack.hits`."""
    server = TestServer(acme.application(), host="127.0.0.1", port=port)
    await server.start_server()
    answers: dict[str, str] = {}
    hits: dict[str, int] = {}

    async def answer(request: web.Request) -> web.Response:
        token = request.match_info["token"]
        hits[token] = hits.get(token, 0) + 1
        if token not in answers:
            raise web.HTTPNotFound()
        return web.Response(text=answers[token])

    challenge_app = web.Application()
    challenge_app.add_routes([web.get("/.well-known/acme-challenge/{token}", answer)])
    challenge_server = TestServer(challenge_app, host="127.0.0.1", port=http_port)
    await challenge_server.start_server()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            yield Stack(base, http, pool, answers, hits)
    finally:
        await acme.close()
        await challenge_server.close()
        await server.close()


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    """GET a JSON document: (status, body); (0, {}) while nothing listens there."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


@dataclass
class AcmeProcess:
    """`python -m services.acme` beside a harness's services, as its own process with its own identity."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    key_file: Path
    home: Path

    @classmethod
    @contextmanager
    def start(cls, stack: Any, tmp_path: Path, **settings: str) -> Iterator[AcmeProcess]:
        """Start it (identity `acme` must exist: `await stack.identity("acme")` first)."""
        http_port, acme_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
        for key, value in stack.common_settings.model_dump().items():
            if value is not None and key not in ("identity", "nats_seed_file", "nats_user", "nats_password"):
                env[f"CERTBUS_{key.upper()}"] = str(value)
        home = tmp_path / "acme"
        key_file = home / "acme-provisioner.key.pem"
        env["CERTBUS_ACME_EAB_REQUIRED"] = "0"  # the clients' accounts carry no binding, unless a test says so
        env.update(
            CERTBUS_IDENTITY="acme",
            CERTBUS_NATS_SEED_FILE=str(stack.identities.seed_file("acme")),
            CERTBUS_DATABASE_URL=stack.database_url,
            CERTBUS_HTTP_PORT=str(http_port),
            CERTBUS_ACME_PORT=str(acme_port),
            CERTBUS_ACME_BASE_URL=f"https://127.0.0.1:{acme_port}",
            CERTBUS_ACME_PROVISIONER_KEY_FILE=str(key_file),
            CERTBUS_ACME_TLS_DIR=str(home / "tls"),
            CERTBUS_ACME_ENROLL_TIMEOUT_S="10",
            CERTBUS_ACME_SWEEP_S="1",
            CERTBUS_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(Path(__file__).resolve().parents[1]),
            **{f"CERTBUS_{k.upper()}": v for k, v in settings.items()},
        )
        home.mkdir(parents=True, exist_ok=True)
        with open(tmp_path / "acme.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "services.acme"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                yield cls(proc, env, key_file, home)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)

    @property
    def health(self) -> str:
        return f"http://127.0.0.1:{self.env['CERTBUS_HTTP_PORT']}"

    @property
    def directory(self) -> str:
        return f"{self.env['CERTBUS_ACME_BASE_URL']}/acme/directory"

    async def register(self, stack: Any, provisioner_id: str = "acme", **scope: Any) -> None:
        """Register ACME's provisioner (its key's public half, written at its start), for its identity;
        or, as `provisioner_id`, another provisioner ACME signs for with the same key (an EAB's)."""
        public = public_key_file(self.key_file)
        for _ in range(300):
            if public.exists():
                break
            await asyncio.sleep(0.1)
        await register_acme_provisioner(stack, public.read_text(), provisioner_id, **scope)

    async def ready(self, timeout: float = 60.0) -> None:
        for _ in range(int(timeout / 0.1)):
            if (await asyncio.to_thread(get, f"{self.health}/readyz"))[0] == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"ACME not ready within {timeout} s: {get(f'{self.health}/readyz')}")

    def root_pem(self) -> str:
        """Certbus's root, the last certificate of ACME's server chain: what a client must trust."""
        chain = (self.home / "tls" / "server.chain.pem").read_text()
        return chain[chain.rindex("-----BEGIN CERTIFICATE-----") :]


async def register_acme_provisioner(
    stack: Any, public_key_pem: str, provisioner_id: str = "acme", **scope: Any
) -> None:
    """Register provisioner `provisioner_id` (`acme`) with `public_key_pem`, usable by the `acme`
    identity alone (and within `scope`: name_suffixes, profiles...), as an operator does."""
    async with stack.client("operator") as c:
        await c.publish(
            ProvisionerRegistered(
                aggregate_id=provisioner_id,
                occurred_at=utcnow(),
                correlation_id="tests",
                producer="operator",
                name=provisioner_id,
                public_key_pem=public_key_pem,
                registered_by="tests",
                requesters=["acme"],
                **scope,
            )
        )


async def ready_order(
    s: Stack, account: Account, *names: str, replaces: str | None = None
) -> tuple[str, dict[str, Any]]:
    """An order for `names` (replacing the certificate `replaces` names) with its http-01 challenges answered: ready."""
    location, order = await s.order(account, *names, replaces=replaces)
    for url in order["authorizations"]:
        _, _, authz = await s.post(account, url, None)
        http01 = challenge_of(authz, "http-01")
        s.answers[http01["token"]] = key_authorization(http01["token"], account.thumbprint)
        await s.post(account, http01["url"], {})
        assert (await s.settled(account, url))["status"] == "valid"
    _, _, ready = await s.post(account, location, None)
    assert ready["status"] == "ready"
    return location, ready


async def settled_order(s: Stack, account: Account, location: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        _, _, body = await s.post(account, location, None)
        return body if body["status"] != "processing" else None

    for _ in range(600):  # bounded: a minute
        if (body := await done()) is not None:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{location} still processing")
