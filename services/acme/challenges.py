"""Challenge validation from the ACME service's own process, as Boulder's VA does (RFC 8555 §8).

`http-01` (§8.3): GET http://{name}:{port}/.well-known/acme-challenge/{token} must answer the key
authorization (redirects are not followed). `tls-alpn-01` (RFC 8737): a TLS handshake with
{name}:{port}, SNI the name and ALPN `acme-tls/1`, must present a certificate whose only
subjectAltName is the name and whose critical id-pe-acmeIdentifier holds the SHA-256 of the key
authorization. `dns-01` (§8.4): see `dns01`; it is the only type a wildcard's authorization offers
(§7.1.4), since only the zone's owner can put a record at `_acme-challenge.{base}`. Names resolve
through the system's resolver, or through overrides for tests and private networks
(`*.internal=127.0.0.1`, as pebble's); the ports are settings (80 and 443 by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field

import aiohttp
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from services.acme.dns01 import TxtLookup
from services.acme.problems import AcmeProblem

HTTP_01 = "http-01"
TLS_ALPN_01 = "tls-alpn-01"
DNS_01 = "dns-01"
TYPES = (HTTP_01, TLS_ALPN_01, DNS_01)
WILDCARD_TYPES = (DNS_01,)
ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
MAX_HTTP_BODY = 1024  # a key authorization is ~87 characters
TIMEOUT_S = 10.0


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 §8.1."""
    return f"{token}.{thumbprint}"


@dataclass(frozen=True)
class Resolver:
    """Names to addresses: the overrides first (exact names, or `*.suffix` for any name under it),
    then the system's resolver."""

    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Resolver:
        """From `pattern=address[,pattern=address...]`, e.g. `*.internal=127.0.0.1`."""
        pairs = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            pattern, sep, address = item.partition("=")
            if not sep or not pattern.strip():
                raise ValueError(f"resolver override {item!r} is not pattern=address")
            pairs.append((pattern.strip().lower(), str(ipaddress.ip_address(address.strip()))))
        return cls(tuple(pairs))

    async def address(self, name: str) -> str:
        for pattern, address in self.overrides:
            if name == pattern or (pattern.startswith("*.") and name.endswith(pattern[1:])):
                return address
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            raise AcmeProblem("dns", f"{name} does not resolve: {e}") from None
        if not infos:
            raise AcmeProblem("dns", f"{name} has no address")
        return str(infos[0][4][0])


@dataclass(frozen=True)
class Validator:
    """Checks a challenge against the name's server: raises the problem a failure is, or returns."""

    resolver: Resolver = field(default_factory=Resolver)
    http_port: int = 80
    tls_alpn_port: int = 443
    timeout_s: float = TIMEOUT_S
    dns: TxtLookup = field(default_factory=TxtLookup)

    async def validate(self, kind: str, name: str, token: str, thumbprint: str) -> None:
        expected = key_authorization(token, thumbprint)
        if kind == DNS_01:  # bounded by the lookup's own lifetime; the margin lets it say what timed out
            await asyncio.wait_for(self.dns.check(name, expected), self.dns.timeout_s + 1)
            return
        address = await self.resolver.address(name)
        if kind == HTTP_01:
            await asyncio.wait_for(self._http_01(name, address, token, expected), self.timeout_s)
        elif kind == TLS_ALPN_01:
            await asyncio.wait_for(self._tls_alpn_01(name, address, expected), self.timeout_s)
        else:
            raise AcmeProblem("malformed", f"challenge type {kind!r} is not served")

    async def _http_01(self, name: str, address: str, token: str, expected: str) -> None:
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{self.http_port}/.well-known/acme-challenge/{token}"
        shown = f"http://{name}:{self.http_port}/.well-known/acme-challenge/{token}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http,
                http.get(url, headers={"Host": name}, allow_redirects=False) as response,
            ):
                body = await response.content.read(MAX_HTTP_BODY + 1)
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise AcmeProblem("connection", f"could not fetch {shown} ({address}): {type(e).__name__}") from None
        if status != 200:
            raise AcmeProblem("unauthorized", f"{shown} answered HTTP {status}", 403)
        if len(body) > MAX_HTTP_BODY:
            raise AcmeProblem("unauthorized", f"{shown} answered more than {MAX_HTTP_BODY} bytes", 403)
        got = body.decode("utf-8", "replace").strip()
        if got != expected:
            raise AcmeProblem(
                "incorrectResponse", f"{shown} answered {got[:100]!r}, not the key authorization {expected!r}", 403
            )

    async def _tls_alpn_01(self, name: str, address: str, expected: str) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate is self-signed by design (RFC 8737 §3)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols([ACME_TLS_ALPN])
        where = f"{name}:{self.tls_alpn_port} ({address})"
        try:
            _, writer = await asyncio.open_connection(address, self.tls_alpn_port, ssl=context, server_hostname=name)
        except ssl.SSLError as e:
            raise AcmeProblem("tls", f"TLS handshake with {where} failed: {e.reason or e}") from None
        except (OSError, TimeoutError) as e:
            raise AcmeProblem("connection", f"could not connect to {where}: {type(e).__name__}") from None
        try:
            tls = writer.get_extra_info("ssl_object")
            protocol = tls.selected_alpn_protocol()
            der = tls.getpeercert(binary_form=True)
        finally:
            writer.close()
        if protocol != ACME_TLS_ALPN:
            raise AcmeProblem("tls", f"{where} did not negotiate ALPN {ACME_TLS_ALPN} (got {protocol!r})")
        problem = tls_alpn_certificate_problem(der, name, expected)
        if problem is not None:
            raise AcmeProblem("incorrectResponse", f"{where}: {problem}", 403)


def tls_alpn_certificate_problem(der: bytes | None, name: str, expected: str) -> str | None:
    """What is wrong with a tls-alpn-01 certificate for `name` and key authorization `expected`, or None."""
    if not der:
        return "no certificate was presented"
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = sans.get_values_for_type(x509.DNSName)
        others = len(list(sans)) - len(names)
    except x509.ExtensionNotFound:
        return "the certificate has no subjectAltName"
    except ValueError as e:
        return f"the certificate cannot be read: {e}"
    if others or [n.lower() for n in names] != [name]:
        return f"the certificate's subjectAltName must be exactly {name}, not {names}"
    try:
        extension = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound:
        return "the certificate has no acmeIdentifier extension"
    if not extension.critical:
        return "the certificate's acmeIdentifier extension is not critical"
    want = b"\x04\x20" + hashlib.sha256(expected.encode()).digest()  # DER OCTET STRING of 32 bytes
    value = extension.value.value if isinstance(extension.value, x509.UnrecognizedExtension) else b""
    if value != want:
        return "the certificate's acmeIdentifier is not the SHA-256 of the key authorization"
    return None
