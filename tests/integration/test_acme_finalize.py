"""ACME orders finalized through the bus, end to end: the five services run in this process over a
real NATS and PostgreSQL; the ACME server publishes the enrollment request under its own requester
identity with a token its provisioner key signed; enrollment judges it by the profile; the client
downloads the certificate and its chain, which `openssl verify` accepts against the root."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from acme_client import (
    Stack,
    csr_der,
    jws,
    ready_order,
    register_acme_provisioner,
    serve_answers,
    settled_order,
)
from deploy.local.devstack import free_port
from harness import Harness
from services.acme.challenges import Resolver, Validator
from services.acme.finalize import BusFinalizer
from services.acme.server import Acme, AcmeConfig
from shared.client.cli import provisioner

pytestmark = pytest.mark.timeout(120)
PROBLEM = "urn:ietf:params:acme:error:"


@pytest.fixture
async def acme(stack: Harness, acme_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[tuple[Stack, Acme, Harness]]:
    await stack.identity("acme")
    key = ed25519.Ed25519PrivateKey.generate()
    await register_acme_provisioner(stack, provisioner.public_pem(key), name_suffixes=["acme.internal"])
    http_port, port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    finalizer = BusFinalizer(stack.client_settings("acme"), "acme", "acme", key, "tls-server", timeout_s=30)
    config = AcmeConfig(
        base_url=base,
        validator=Validator(Resolver.parse("*.internal=127.0.0.1"), http_port=http_port, timeout_s=5),
        finalizer=finalizer,
        eab_required=False,
    )
    server_acme = Acme(lambda: acme_pool, config)
    async with serve_answers(server_acme, acme_pool, base, port, http_port) as s:
        yield s, server_acme, stack


async def test_a_ready_order_is_finalized_through_enrollment_and_its_chain_verifies(
    acme: tuple[Stack, Acme, Harness], tmp_path: Path
) -> None:
    s, _, harness = acme
    account = await s.account()
    async with s.http.get(s.url("/acme/directory")) as r:
        assert (await r.json())["newOrder"] == s.url("/acme/new-order")
    location, ready = await ready_order(s, account, "web.acme.internal", "api.acme.internal")
    key = ec.generate_private_key(ec.SECP256R1())
    status, headers, body = await s.post(
        account, ready["finalize"], {"csr": csr_der(key, "web.acme.internal", "api.acme.internal")}
    )
    assert (status, body["status"]) == (200, "processing") and headers["Retry-After"] == "1"
    order = await settled_order(s, account, location)
    assert order["status"] == "valid", order
    async with s.http.head(s.url("/acme/new-nonce")) as r:
        nonce = r.headers["Replay-Nonce"]
    async with s.http.post(
        order["certificate"],
        data=jws(account.key, order["certificate"], None, nonce, kid=account.url),
        headers={"Content-Type": "application/jose+json"},
    ) as r:
        assert r.headers["Content-Type"].startswith("application/pem-certificate-chain")
        chain = await r.text()
    certs = x509.load_pem_x509_certificates(chain.encode())
    leaf = certs[0]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["api.acme.internal", "web.acme.internal"]
    # The chain verifies with openssl against the root, as a relying party would check it.
    (tmp_path / "leaf.pem").write_text(chain.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    (tmp_path / "chain.pem").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:]))
    root = certs[-1]
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Enrollment's record says who asked: the ACME identity, under the ACME provisioner.
    request_id = await s.pool.fetchval("SELECT request_id FROM orders")
    async with harness.client("operator") as c:
        detail = await c.request(request_id)
    assert (detail.requester, detail.provisioner_id, detail.status) == ("acme", "acme", "issued")


async def test_a_csr_that_does_not_match_the_order_is_bad_and_leaves_the_order_ready(
    acme: tuple[Stack, Acme, Harness],
) -> None:
    s, _, _ = acme
    account = await s.account()
    location, ready = await ready_order(s, account, "one.acme.internal")
    key = ec.generate_private_key(ec.SECP256R1())
    for csr, words in [
        (csr_der(key, "one.acme.internal", "two.acme.internal"), "the order is for"),
        (csr_der(key, "one.acme.internal", common_name="other.acme.internal"), "common name"),
        (csr_der(account.key, "one.acme.internal"), "account's key"),  # type: ignore[arg-type]
        ("not-a-csr", "cannot be read"),
    ]:
        status, _, problem = await s.post(account, ready["finalize"], {"csr": csr})
        assert (status, problem["type"]) == (400, PROBLEM + "badCSR"), problem
        assert words in problem["detail"]
    _, _, still = await s.post(account, location, None)
    assert still["status"] == "ready"


async def test_a_name_outside_the_acme_provisioners_scope_is_refused_by_enrollment(
    acme: tuple[Stack, Acme, Harness],
) -> None:
    s, _, _ = acme
    account = await s.account()
    # Validated by ACME (the resolver sends it to the test's server), but the ACME provisioner may
    # only vouch for names under acme.internal: enrollment refuses, and the order says why.
    location, ready = await ready_order(s, account, "elsewhere.internal")
    await s.post(
        account, ready["finalize"], {"csr": csr_der(ec.generate_private_key(ec.SECP256R1()), "elsewhere.internal")}
    )
    order = await settled_order(s, account, location)
    assert order["status"] == "invalid"
    assert order["error"]["type"] == PROBLEM + "rejectedIdentifier", order["error"]
    assert "provisioner_scope" in order["error"]["detail"]


async def test_an_order_left_processing_is_submitted_again_and_issued_once(
    acme: tuple[Stack, Acme, Harness],
) -> None:
    s, server_acme, _ = acme
    account = await s.account()
    location, ready = await ready_order(s, account, "again.acme.internal")
    await s.post(
        account, ready["finalize"], {"csr": csr_der(ec.generate_private_key(ec.SECP256R1()), "again.acme.internal")}
    )
    first = await settled_order(s, account, location)
    assert first["status"] == "valid"
    serial = await s.pool.fetchval("SELECT serial FROM orders")
    # As if the replica had stopped before it recorded the outcome: the order is processing again.
    await s.pool.execute(
        "UPDATE orders SET finalize_status = 'processing', serial = NULL, cert_chain = NULL, "
        "finalized_at = finalized_at - interval '1 hour'"
    )
    assert await server_acme.sweep() == 1
    again = await settled_order(s, account, location)
    assert again["status"] == "valid"
    # The same request was followed, not sent again: the same certificate, issued once.
    assert await s.pool.fetchval("SELECT serial FROM orders") == serial
