"""Certificates in use: a Python `ssl` server and client authenticate each other (mTLS) with them."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import Harness, eventually
from shared.pki.crypto import build_csr, generate_key, key_pem


async def enroll_files(h: Harness, name: str, out: Path, profile: str = "tls-server") -> tuple[Path, Path, Path]:
    key = generate_key("ec-p256")
    async with h.client() as c:
        issued = await c.enroll(build_csr(key, [name]).decode(), h.token(name, profile=profile), profile=profile)
    out.mkdir(parents=True)
    (out / "key.pem").write_bytes(key_pem(key))
    (out / "fullchain.pem").write_text(issued.cert_pem + issued.chain_pem)
    chain = issued.chain_pem
    root_pem = chain[chain.rindex("-----BEGIN CERTIFICATE-----") :]
    (out / "root.pem").write_text(root_pem)
    return out / "fullchain.pem", out / "key.pem", out / "root.pem"


async def revoke_as_operator(h: Harness, serial: str, reason: str) -> None:
    """Revoke as an operator would (recorded as the operator whose key signs the order)."""
    async with h.client("operator") as c:
        await c.revoke_as_operator(serial, reason, "tests")


def mtls_server_context(chain: Path, key: Path, root: Path) -> ssl.SSLContext:
    """A TLS server that requires a client certificate chaining to the Certbus root."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(root))
    ctx.load_cert_chain(chain, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_mutual_tls_with_certbus_certificates(stack: Harness, tmp_path: Path) -> None:
    server_chain, server_key, root = await enroll_files(stack, "api.corp.internal", tmp_path / "server")
    client_chain, client_key, _ = await enroll_files(stack, "client.corp.internal", tmp_path / "client", "tls-client")
    client_ctx = ssl.create_default_context(cafile=str(root))
    client_ctx.load_cert_chain(client_chain, client_key)
    answer, peers = await _handshake(mtls_server_context(server_chain, server_key, root), client_ctx)
    assert answer == b"hello certbus\n"
    assert peers == ["client.corp.internal"]


async def test_a_client_without_a_certbus_certificate_is_refused(stack: Harness, tmp_path: Path) -> None:
    server_chain, server_key, root = await enroll_files(stack, "api.corp.internal", tmp_path / "server")
    anonymous = ssl.create_default_context(cafile=str(root))  # trusts the server, presents no certificate
    answer, peers = await _handshake(mtls_server_context(server_chain, server_key, root), anonymous)
    assert answer == b""  # TLS 1.3: the server's alert closes the connection after the handshake
    assert peers == []  # the server never accepted the anonymous client


def fetch_crl_pem(cert_file: Path) -> tuple[int, str]:
    """The CRL named in a certificate's CRL distribution point, fetched over HTTP like any relying
    party would (no Certbus code): (CRL number, PEM)."""
    leaf = x509.load_pem_x509_certificate(cert_file.read_bytes())
    points = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    url = points[0].full_name[0].value  # type: ignore[index]
    with urllib.request.urlopen(url, timeout=5) as response:
        crl = x509.load_der_x509_crl(response.read())
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return number, crl.public_bytes(serialization.Encoding.PEM).decode()


async def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[bytes, list[str]]:
    """Connect, send a line; return what the server answered (b"" if it refused the client) and the
    common names of the client certificates the server accepted."""
    peers: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        peers.append(dict(x[0] for x in peer["subject"])["commonName"])
        writer.write(b"hello " + (await reader.readline()))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="api.corp.internal"
        )
        writer.write(b"certbus\n")
        try:
            data = await asyncio.wait_for(reader.read(), timeout=5)
        except (ssl.SSLError, ConnectionResetError):
            data = b""
        writer.close()
    return data, peers


async def test_a_server_checking_the_crl_refuses_a_revoked_client_certificate(stack: Harness, tmp_path: Path) -> None:
    """Python's `ssl` as the relying party: the server loads the CRL from the client certificate's
    distribution point and checks it (VERIFY_CRL_CHECK_LEAF); it accepts the client before the
    revocation and refuses it once the republished CRL lists it."""
    server_chain, server_key, root = await enroll_files(stack, "api.corp.internal", tmp_path / "server")
    client_chain, client_key, _ = await enroll_files(stack, "client.corp.internal", tmp_path / "client", "tls-client")
    client_ctx = ssl.create_default_context(cafile=str(root))
    client_ctx.load_cert_chain(client_chain, client_key)

    def crl_checking_server(crl_pem: str, name: str) -> ssl.SSLContext:
        ctx = mtls_server_context(server_chain, server_key, root)
        (tmp_path / name).write_text(crl_pem)
        ctx.load_verify_locations(cafile=str(tmp_path / name))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    number, crl_pem = await eventually(lambda: asyncio.to_thread(fetch_crl_pem, client_chain))
    assert (await _handshake(crl_checking_server(crl_pem, "before.crl"), client_ctx))[0] == b"hello certbus\n"

    serial = format(x509.load_pem_x509_certificate(client_chain.read_bytes()).serial_number, "x")
    await revoke_as_operator(stack, serial, "keyCompromise")

    async def republished() -> tuple[int, str] | None:
        fetched = await asyncio.to_thread(fetch_crl_pem, client_chain)
        return fetched if fetched[0] > number else None

    _, revoked_pem = await eventually(republished)
    assert (await _handshake(crl_checking_server(revoked_pem, "after.crl"), client_ctx))[0] == b""
