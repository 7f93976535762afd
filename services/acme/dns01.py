"""dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.{name}` must hold base64url(SHA-256(key
authorization)).

The TXT record is asked of a configured DNS server (`host:port`, for private zones and tests) or of
the system's resolver, with no cache (every validation asks again), a bounded lifetime, and over TCP
when the UDP answer comes back truncated (dnspython's resolver does so).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdtypes.ANY.TXT
import dns.resolver

from services.acme.problems import AcmeProblem

CHALLENGE_LABEL = "_acme-challenge"
DNS_PORT = 53
TIMEOUT_S = 10.0


def txt_value(key_authorization: str) -> str:
    """What the TXT record must hold (RFC 8555 §8.4)."""
    return base64.urlsafe_b64encode(hashlib.sha256(key_authorization.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class TxtLookup:
    """TXT records, from `server` (an address and port) or, when it is None, the system's resolver."""

    server: tuple[str, int] | None = None
    timeout_s: float = TIMEOUT_S

    @classmethod
    def parse(cls, text: str, timeout_s: float = TIMEOUT_S) -> TxtLookup:
        """From `host:port`, `host` (port 53), `[v6]:port` or `v6`, or "" for the system's resolver;
        the host is an IP address (a DNS server cannot be found by name without one)."""
        text = text.strip()
        if not text:
            return cls(None, timeout_s)
        host, port = text, str(DNS_PORT)
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"DNS server {text!r} is not [address]:port")
            port = rest[1:] or port
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            address = str(ipaddress.ip_address(host))
        except ValueError:
            raise ValueError(f"DNS server {text!r}: {host!r} is not an IP address") from None
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"DNS server {text!r}: port {port!r} is not 1-65535")
        return cls((address, int(port)), timeout_s)

    @property
    def where(self) -> str:
        if self.server is None:
            return "the system's resolver"
        host, port = self.server
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _resolver(self) -> dns.asyncresolver.Resolver:
        resolver = dns.asyncresolver.Resolver(configure=self.server is None)
        if self.server is not None:
            resolver.nameservers = [self.server[0]]
            resolver.port = self.server[1]
        resolver.cache = None
        # Each try waits dnspython's 2 s (a lost UDP datagram is asked again), all of them timeout_s.
        resolver.timeout = min(resolver.timeout, self.timeout_s)
        resolver.lifetime = self.timeout_s
        return resolver

    async def strings(self, qname: str) -> list[str]:
        """The TXT records at `qname`, each one's character-strings joined (as Boulder does); raises
        the `dns` problem of a name that does not exist, has no TXT record, or was not answered."""
        asked = f"TXT for {qname} at {self.where}"
        try:
            # Built per lookup (the system's configuration read anew): none is a `dns` problem too.
            answer = await self._resolver().resolve(qname, "TXT", search=False, lifetime=self.timeout_s)
        except dns.resolver.NXDOMAIN:
            raise AcmeProblem("dns", f"NXDOMAIN looking up {asked}: check that the record exists") from None
        except dns.resolver.NoAnswer:
            raise AcmeProblem("dns", f"no TXT record found looking up {asked} (the name exists)") from None
        except dns.exception.Timeout:
            raise AcmeProblem("dns", f"timed out after {self.timeout_s:g} s looking up {asked}") from None
        except dns.resolver.NoNameservers as e:  # SERVFAIL, REFUSED, or no answer that could be read
            raise AcmeProblem("dns", f"server failure looking up {asked}: {e}") from None
        except dns.exception.DNSException as e:
            raise AcmeProblem("dns", f"looking up {asked} failed: {e}") from None
        return [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in answer
            if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
        ]

    async def check(self, name: str, key_authorization: str) -> None:
        """Return if a TXT record at `_acme-challenge.{name}` holds the key authorization's digest;
        raise the problem otherwise."""
        qname = f"{CHALLENGE_LABEL}.{name}"
        expected = txt_value(key_authorization)
        found = await self.strings(qname)
        if expected in found:
            return
        if not found:
            raise AcmeProblem("dns", f"no TXT record found looking up TXT for {qname} at {self.where}")
        # A TXT record that holds something else is `incorrectResponse`: RFC 8555 §6.7 defines it as
        # "the response received didn't match the challenge's requirements", and http-01 and
        # tls-alpn-01 here answer it for a wrong answer too. Boulder says `unauthorized` (for every
        # validation that reached the client's answer and found it wrong); clients treat both alike,
        # as the challenge's final failure, and show the detail.
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise AcmeProblem(
            "incorrectResponse",
            f"TXT record {found[0][:100]!r}{more} found at {qname}, not the key authorization's digest {expected!r}",
            403,
        )
