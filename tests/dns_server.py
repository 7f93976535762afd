"""A tiny authoritative DNS server for tests, over UDP and TCP on one loopback port: it answers TXT
from `records` (and from `records_file`, lines of `name value` that a client's hook appends), and
NXDOMAIN for every other name; a UDP answer too long for the question's payload is sent truncated
(TC), so that the client asks again over TCP, as a real server does."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

UDP_PAYLOAD = 512  # without EDNS (RFC 1035 §4.2.1)


@dataclass
class DnsServer:
    """What the server answers: TXT values by name (lower case, no trailing dot); a name mapped to []
    exists with no TXT record; names in `servfail` are answered SERVFAIL; the next `drop_udp` UDP
    questions go unanswered (as datagrams lost). Questions are counted by transport in `asked`."""

    port: int
    records: dict[str, list[str]] = field(default_factory=dict)
    records_file: Path | None = None
    servfail: set[str] = field(default_factory=set)
    drop_udp: int = 0
    asked: dict[str, int] = field(default_factory=lambda: {"udp": 0, "tcp": 0})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _txt(self, name: str) -> list[str] | None:
        values = list(self.records[name]) if name in self.records else None
        if self.records_file is not None and self.records_file.exists():
            for line in self.records_file.read_text().splitlines():
                owner, _, value = line.partition(" ")
                if owner.rstrip(".").lower() == name:
                    values = [*(values or []), value.strip()]
        return values

    def answer(self, wire: bytes, transport: str, max_size: int = 65535) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        self.asked[transport] += 1
        if transport == "udp" and self.drop_udp > 0:
            self.drop_udp -= 1
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0] if query.question else None
        name = question.name.to_text(omit_final_dot=True).lower() if question is not None else ""
        values = self._txt(name)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif values is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question is not None and question.rdtype == dns.rdatatype.TXT and values:
            quoted = ['"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values]
            response.answer.append(dns.rrset.from_text_list(question.name, 60, dns.rdataclass.IN, "TXT", quoted))
        if transport == "udp":
            max_size = max(query.payload, UDP_PAYLOAD) if query.edns >= 0 else UDP_PAYLOAD
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns.answer(data, "udp")  # type: ignore[attr-defined]
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(5)
        try:
            while header := _read(conn, 2):
                wire = _read(conn, struct.unpack("!H", header)[0])
                reply = self.server.dns.answer(wire, "tcp")  # type: ignore[attr-defined]
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def dns_server(records_file: Path | None = None) -> Iterator[DnsServer]:
    """A server on a free loopback port (UDP and TCP alike), stopped on leaving."""
    for _ in range(20):
        udp = _UdpServer(("127.0.0.1", 0), _Udp)
        port = udp.server_address[1]
        try:
            tcp = _TcpServer(("127.0.0.1", port), _Tcp)
            break
        except OSError:  # that port is taken over TCP: another one
            udp.server_close()
    else:
        raise RuntimeError("no loopback port free over both UDP and TCP")
    server = DnsServer(port, records_file=records_file)
    threads = []
    for s in (udp, tcp):
        s.dns = server  # type: ignore[attr-defined]
        thread = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield server
    finally:
        for s in (udp, tcp):
            s.shutdown()
            s.server_close()
        for thread in threads:
            thread.join(timeout=5)


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback UDP port that receives questions and never answers (a server that is down or
    filtered): the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
