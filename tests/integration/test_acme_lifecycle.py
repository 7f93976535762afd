"""ACME revocation and renewal end to end, through the bus: revokeCert (RFC 8555 §7.6) by the
account that ordered a certificate or with the certificate's key, refused otherwise with its ACME
problem; renewal information (RFC 9773) and orders that replace a certificate (ARI `replaces`),
which Certbus records as superseding it. The five services run in this process over a real NATS
and PostgreSQL; the client builds its JWS with `cryptography` alone."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from acme_client import (
    Account,
    Stack,
    csr_der,
    jws,
    ready_order,
    register_acme_provisioner,
    serve_answers,
    settled_order,
)
from deploy.local.devstack import free_port
from harness import Harness, eventually
from services.acme.challenges import Resolver, Validator
from services.acme.finalize import BusFinalizer
from services.acme.lifecycle import BusRevoker, cert_id
from services.acme.server import Acme, AcmeConfig
from shared.client.cli import provisioner

pytestmark = pytest.mark.timeout(180)
PROBLEM = "urn:ietf:params:acme:error:"


@pytest.fixture
async def acme(stack: Harness, acme_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[tuple[Stack, Harness]]:
    await stack.identity("acme")
    key = ed25519.Ed25519PrivateKey.generate()
    await register_acme_provisioner(stack, provisioner.public_pem(key), name_suffixes=["acme.internal"])
    http_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    settings = stack.client_settings("acme")
    config = AcmeConfig(
        base_url=base,
        validator=Validator(Resolver.parse("*.internal=127.0.0.1"), http_port=http_port, timeout_s=5),
        finalizer=BusFinalizer(settings, "acme", "acme", key, "tls-server", timeout_s=30),
        revoker=BusRevoker(settings, "acme", timeout_s=30),
        eab_required=False,
    )
    async with serve_answers(Acme(lambda: acme_pool, config), acme_pool, base, port, http_port) as s:
        yield s, stack


async def _issued(s: Stack, account: Account, *names: str, replaces: str | None = None) -> x509.Certificate:
    """A certificate ordered, validated and finalized by `account` (the order replacing `replaces`)."""
    location, ready = await ready_order(s, account, *names, replaces=replaces)
    await s.post(account, ready["finalize"], {"csr": csr_der(ec.generate_private_key(ec.SECP256R1()), *names)})
    order = await settled_order(s, account, location)
    assert order["status"] == "valid", order
    chain = await _download(s, account, order["certificate"])
    return x509.load_pem_x509_certificates(chain.encode())[0]


async def _download(s: Stack, account: Account, url: str) -> str:
    async with s.http.head(s.url("/acme/new-nonce")) as r:
        nonce = r.headers["Replay-Nonce"]
    body = jws(account.key, url, None, nonce, kid=account.url)
    async with s.http.post(url, data=body, headers={"Content-Type": "application/jose+json"}) as r:
        assert r.status == 200
        return await r.text()


def _der(cert: x509.Certificate) -> str:
    return base64.urlsafe_b64encode(cert.public_bytes(serialization.Encoding.DER)).rstrip(b"=").decode()


async def _renewal_info(s: Stack, cert: x509.Certificate) -> tuple[datetime, datetime]:
    async with s.http.get(s.url(f"/acme/renewal-info/{cert_id(cert)}")) as r:
        # Six hours: the bus answered (the certificate's status and its profile's renewal point).
        assert (r.status, r.headers["Retry-After"]) == (200, "21600")
        window = (await r.json())["suggestedWindow"]
    parse = lambda text: datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)  # noqa: E731
    return parse(window["start"]), parse(window["end"])


async def _status(stack: Harness, serial: str) -> Any:
    async with stack.client("acme") as c:
        return await c.status(serial)


async def test_the_directory_lists_revocation_and_renewal_information(acme: tuple[Stack, Harness]) -> None:
    s, _ = acme
    async with s.http.get(s.url("/acme/directory")) as r:
        directory = await r.json()
    assert directory["revokeCert"] == s.url("/acme/revoke-cert")
    assert directory["renewalInfo"] == s.url("/acme/renewal-info")


async def test_the_ordering_account_revokes_and_renewal_information_then_says_renew_now(
    acme: tuple[Stack, Harness],
) -> None:
    s, stack = acme
    account = await s.account()
    cert = await _issued(s, account, "revoke.acme.internal")
    serial = format(cert.serial_number, "x")
    start, end = await _renewal_info(s, cert)
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert start == (cert.not_valid_after_utc - life / 3).replace(microsecond=0)
    assert start < end < cert.not_valid_after_utc

    # Another account did not order it: refused, and nothing changes.
    other = await s.account()
    status, _, problem = await s.post(other, s.url("/acme/revoke-cert"), {"certificate": _der(cert), "reason": 4})
    assert (status, problem["type"]) == (403, PROBLEM + "unauthorized"), problem
    # cACompromise is an operator's; keyCompromise needs the certificate's key; 7 is no reason.
    for reason, words in [(2, "is not one of"), (1, "certificate's key"), (7, "is not one of")]:
        status, _, problem = await s.post(
            account, s.url("/acme/revoke-cert"), {"certificate": _der(cert), "reason": reason}
        )
        assert (status, problem["type"]) == (400, PROBLEM + "badRevocationReason"), problem
        assert words in problem["detail"]
    assert (await _status(stack, serial)).status == "good"

    status, _, _ = await s.post(account, s.url("/acme/revoke-cert"), {"certificate": _der(cert), "reason": 4})
    assert status == 200
    revoked = await _status(stack, serial)
    assert (revoked.status, revoked.reason) == ("revoked", "superseded")
    status, _, problem = await s.post(account, s.url("/acme/revoke-cert"), {"certificate": _der(cert)})
    assert problem["type"] == PROBLEM + "alreadyRevoked", problem
    # RFC 9773 §4.2: a revoked certificate's window is in the past, so ARI clients renew at once.
    _, end = await _renewal_info(s, cert)
    assert end < datetime.now(UTC)


async def test_a_key_that_is_not_the_certificates_cannot_revoke_it(acme: tuple[Stack, Harness]) -> None:
    s, stack = acme
    account = await s.account()
    cert = await _issued(s, account, "keyed.acme.internal")
    stranger = ec.generate_private_key(ec.SECP256R1())
    status, _, problem = await s.post(stranger, s.url("/acme/revoke-cert"), {"certificate": _der(cert), "reason": 1})
    assert (status, problem["type"]) == (403, PROBLEM + "unauthorized"), problem
    assert (await _status(stack, format(cert.serial_number, "x"))).status == "good"


async def test_an_order_that_replaces_a_certificate_is_recorded_as_superseding_it(
    acme: tuple[Stack, Harness],
) -> None:
    s, stack = acme
    account = await s.account()
    old = await _issued(s, account, "ari.acme.internal")
    new = await _issued(s, account, "ari.acme.internal", "www.ari.acme.internal", replaces=cert_id(old))
    old_serial, new_serial = format(old.serial_number, "x"), format(new.serial_number, "x")

    async def superseded() -> str | None:
        return (await _status(stack, old_serial)).superseded_by  # type: ignore[no-any-return]

    assert await eventually(superseded, timeout=30) == new_serial
    # Replaced once: a second order replacing it is refused with ARI's alreadyReplaced.
    identifiers = [{"type": "dns", "value": "ari.acme.internal"}]
    status, _, problem = await s.post(
        account, s.url("/acme/new-order"), {"identifiers": identifiers, "replaces": cert_id(old)}
    )
    assert (status, problem["type"]) == (409, PROBLEM + "alreadyReplaced"), problem


async def test_replaces_must_name_a_certificate_of_the_account_sharing_a_name(acme: tuple[Stack, Harness]) -> None:
    s, _ = acme
    owner, other = await s.account(), await s.account()
    cert = await _issued(s, owner, "mine.acme.internal")
    order = lambda *names: {"identifiers": [{"type": "dns", "value": n} for n in names], "replaces": cert_id(cert)}  # noqa: E731
    status, _, problem = await s.post(other, s.url("/acme/new-order"), order("mine.acme.internal"))
    assert (status, problem["type"]) == (403, PROBLEM + "unauthorized"), problem
    status, _, problem = await s.post(owner, s.url("/acme/new-order"), order("unrelated.acme.internal"))
    assert (status, problem["type"]) == (400, PROBLEM + "malformed") and "shares no identifier" in problem["detail"]
    bad = {"identifiers": [{"type": "dns", "value": "mine.acme.internal"}], "replaces": "not-a-cert-id"}
    status, _, problem = await s.post(owner, s.url("/acme/new-order"), bad)
    assert (status, problem["type"]) == (400, PROBLEM + "malformed"), problem
    assert await s.pool.fetchval("SELECT count(*) FROM orders") == 1
