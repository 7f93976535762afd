"""Certificates in use: a Python `ssl` server and client authenticate each other (mTLS) with them."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from harness import Harness
from shared.crypto import build_csr, generate_key, key_pem


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


def mtls_server_context(chain: Path, key: Path, root: Path) -> ssl.SSLContext:
    """A TLS server that requires a client certificate chaining to the Certbus root."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(root))
    ctx.load_cert_chain(chain, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_mutual_tls_with_certbus_certificates(stack: Harness, tmp_path: Path) -> None:
    server_chain, server_key, root = await enroll_files(stack, "api.corp.internal", tmp_path / "server")
    client_chain, client_key, _ = await enroll_files(stack, "client.corp.internal", tmp_path / "client", "tls-client")

    server_ctx = mtls_server_context(server_chain, server_key, root)
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        seen.append(dict(x[0] for x in peer["subject"])["commonName"])
        writer.write(b"hello " + (await reader.readline()))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(root))
    client_ctx.load_cert_chain(client_chain, client_key)
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="api.corp.internal"
        )
        writer.write(b"certbus\n")
        await writer.drain()
        assert await reader.readline() == b"hello certbus\n"
        writer.close()
    assert seen == ["client.corp.internal"]


async def test_a_client_without_a_certbus_certificate_is_refused(stack: Harness, tmp_path: Path) -> None:
    server_chain, server_key, root = await enroll_files(stack, "api.corp.internal", tmp_path / "server")
    server_ctx = mtls_server_context(server_chain, server_key, root)

    served: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(True)
        writer.write(b"welcome\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    anonymous = ssl.create_default_context(cafile=str(root))  # trusts the server, presents no certificate
    async with server:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=anonymous, server_hostname="api.corp.internal"
        )
        writer.write(b"x\n")
        try:
            data = await asyncio.wait_for(reader.read(), timeout=5)
        except (ssl.SSLError, ConnectionResetError):
            data = b""
        writer.close()
    assert data == b""  # TLS 1.3: the server's alert closes the connection after the handshake
    assert served == []  # the server never accepted the anonymous client
