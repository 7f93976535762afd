"""Real ACME clients from Debian's packages against Certbus's ACME service (its own process, over
TLS with a Certbus certificate) and the five services: certbot and lego get certificates with no
Certbus code; each verifies with openssl against the Certbus chain and is in the audit history.
The clients' challenge servers listen on loopback ports, which the ACME service is told to check
(CERTBUS_ACME_HTTP01_PORT / _TLSALPN01_PORT), with the names resolved to 127.0.0.1
(CERTBUS_ACME_RESOLVE), as pebble's tests do. For dns-01, lego's `exec` provider writes its TXT
records into the test's authoritative DNS server (tests/dns_server.py), the one ACME asks
(CERTBUS_ACME_DNS_SERVER) and lego checks (--dns.resolvers)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from acme_client import WILDCARD_PROFILE, AcmeProcess
from deploy.local.devstack import free_port
from dns_server import DnsServer, dns_server
from harness import Harness, eventually

pytestmark = pytest.mark.timeout(240)


# lego's `exec` DNS provider runs this with `present|cleanup FQDN VALUE`: it adds the TXT record to
# (or removes it from) the file the test's DNS server answers from.
EXEC_HOOK = """#!/bin/sh
set -e
case "$1" in
  present) echo "$2 $3" >> "$RECORDS_FILE" ;;
  cleanup) grep -v -F -x "$2 $3" "$RECORDS_FILE" > "$RECORDS_FILE.tmp" || true
           mv "$RECORDS_FILE.tmp" "$RECORDS_FILE" ;;
esac
"""


class Clients:
    def __init__(self, acme: AcmeProcess, tmp: Path, http01_port: int, tlsalpn01_port: int, dns: DnsServer) -> None:
        self.acme, self.tmp = acme, tmp
        self.http01_port, self.tlsalpn01_port = http01_port, tlsalpn01_port
        self.dns = dns
        self.ca = tmp / "certbus-root.pem"
        self.ca.write_text(acme.root_pem())
        self.exec_hook = tmp / "lego-exec-hook.sh"
        self.exec_hook.write_text(EXEC_HOOK)
        self.exec_hook.chmod(0o755)

    def env(self) -> dict[str, str]:
        assert self.dns.records_file is not None
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")},
            "REQUESTS_CA_BUNDLE": str(self.ca),  # certbot
            "LEGO_CA_CERTIFICATES": str(self.ca),  # lego
            # lego's exec provider: its hook, where the hook writes, and no waiting longer than needed
            "EXEC_PATH": str(self.exec_hook),
            "RECORDS_FILE": str(self.dns.records_file),
            "EXEC_POLLING_INTERVAL": "1",
            "EXEC_PROPAGATION_TIMEOUT": "30",
            "EXEC_SEQUENCE_INTERVAL": "1",
        }

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run, list(args), env=self.env(), capture_output=True, text=True, timeout=120, check=False
        )

    async def certbot(self, *args: str) -> subprocess.CompletedProcess[str]:
        d = self.tmp / "certbot"
        return await self.run(
            "certbot",
            *args,
            "--non-interactive",
            "--server",
            self.acme.directory,
            "--config-dir",
            str(d / "config"),
            "--work-dir",
            str(d / "work"),
            "--logs-dir",
            str(d / "logs"),
        )

    async def lego(
        self, challenge: str, *domains: str, command: str = "run", path: str = "lego", options: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        flags = {
            "http-01": ["--http", "--http.port", f"127.0.0.1:{self.http01_port}"],
            "tls-alpn-01": ["--tls", "--tls.port", f"127.0.0.1:{self.tlsalpn01_port}"],
            # The test's DNS server only: lego checks the record there once, not at public servers.
            "dns-01": ["--dns", "exec", "--dns.resolvers", self.dns.address, "--dns.disable-cp"],
        }[challenge]
        names = [arg for d in domains for arg in ("--domains", d)]
        return await self.run(
            "lego",
            "--server",
            self.acme.directory,
            "--accept-tos",
            "--email",
            "ops@example.test",
            "--path",
            str(self.tmp / path),
            *options,
            *flags,
            *names,
            command,
        )

    async def verify(self, cert: Path, chain: Path) -> None:
        """openssl verify against Certbus's root, the issuing CA untrusted, as a relying party does."""
        result = await self.run("openssl", "verify", "-CAfile", str(self.ca), "-untrusted", str(chain), str(cert))
        assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + result.stderr


async def _in_history(stack: Harness, cert: x509.Certificate) -> None:
    """`certbus audit history SERIAL` shows the certificate's request (by ACME) and its issuance."""
    serial = format(cert.serial_number, "x")

    async def archived() -> str | None:
        answer = await stack.cli("audit", "history", serial)
        return answer.stdout if answer.returncode == 0 and "CertificateIssued" in answer.stdout else None

    text = await eventually(archived, timeout=30)
    assert "EnrollmentRequested" in text and "acme" in text


def _split(pem: Path) -> tuple[Path, Path]:
    """A full chain file as its leaf and the rest."""
    certs = pem.read_text().split("-----END CERTIFICATE-----")
    leaf, rest = pem.with_suffix(".leaf.pem"), pem.with_suffix(".rest.pem")
    leaf.write_text(certs[0] + "-----END CERTIFICATE-----\n")
    rest.write_text("-----END CERTIFICATE-----".join(certs[1:-1]) + "-----END CERTIFICATE-----\n")
    return leaf, rest


@pytest.fixture
async def clients(stack: Harness, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Clients]:
    """ACME as its own process, enrolling under the profile the test is parametrized with (tls-server,
    ACME's default, unless it says otherwise), and the clients' environment."""
    missing = [tool for tool in ("certbot", "lego") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not installed: `make test` installs them (apt-get install certbot lego)")
    profile = getattr(request, "param", "tls-server")
    if profile == WILDCARD_PROFILE.name:
        await stack.apply_profiles(WILDCARD_PROFILE)
    await stack.identity("acme")
    http01, tlsalpn01 = free_port(), free_port()
    with dns_server(records_file=tmp_path / "dns-records.txt") as dns:
        settings = {
            "acme_resolve": "*.internal=127.0.0.1",
            "acme_http01_port": str(http01),
            "acme_tlsalpn01_port": str(tlsalpn01),
            "acme_dns_server": dns.address,
            "acme_profile": profile,
        }
        with AcmeProcess.start(stack, tmp_path, **settings) as acme:
            await acme.register(stack, name_suffixes=["acme.internal", "certbus.internal"])
            await acme.ready()
            yield Clients(acme, tmp_path, http01, tlsalpn01, dns)


async def test_certbot_certonly_standalone_over_http_01(clients: Clients, stack: Harness) -> None:
    result = await clients.certbot(
        "certonly",
        "--standalone",
        "--agree-tos",
        "--email",
        "ops@example.test",
        "--http-01-port",
        str(clients.http01_port),
        "--http-01-address",
        "127.0.0.1",
        "-d",
        "web.acme.internal",
        "--key-type",
        "ecdsa",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    live = clients.tmp / "certbot" / "config" / "live" / "web.acme.internal"
    leaf = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["web.acme.internal"]
    await clients.verify(live / "cert.pem", live / "chain.pem")
    await _in_history(stack, leaf)


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
async def test_lego_run(clients: Clients, stack: Harness, challenge: str) -> None:
    domains = [f"{challenge}.acme.internal", f"www.{challenge}.acme.internal"]
    result = await clients.lego(challenge, *domains)
    assert result.returncode == 0, result.stdout + result.stderr
    pem = clients.tmp / "lego" / "certificates" / f"{domains[0]}.crt"  # lego writes the full chain there
    leaf_file, rest = _split(pem)
    leaf = x509.load_pem_x509_certificate(leaf_file.read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(domains)
    await clients.verify(leaf_file, rest)
    await _in_history(stack, leaf)


async def _ocsp_says(stack: Harness, live: Path, ca: Path, status: str) -> str:
    """`openssl ocsp` about certbot's certificate at the URL its AIA names, trusting only the root,
    until it answers `status` (the responder's first answer may need its own certificate first)."""
    url = (await _openssl("x509", "-noout", "-ocsp_uri", "-in", str(live / "cert.pem"))).stdout.strip()
    args = [
        "ocsp",
        "-issuer",
        str(live / "chain.pem"),
        "-cert",
        str(live / "cert.pem"),
        "-url",
        url,
        "-CAfile",
        str(ca),
    ]

    async def answered() -> str | None:
        result = await _openssl(*args, "-resp_text")
        said = result.stdout + result.stderr
        return said if "Response verify OK" in said and f"cert.pem: {status}" in said else None

    return await eventually(answered, timeout=30)


async def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, ["openssl", *args], capture_output=True, text=True, timeout=20)


async def _certbot_certonly(clients: Clients, name: str) -> Path:
    args = ["--standalone", "--agree-tos", "--email", "ops@example.test", "--key-type", "ecdsa", "-d", name]
    port = ["--http-01-port", str(clients.http01_port), "--http-01-address", "127.0.0.1"]
    result = await clients.certbot("certonly", *args, *port)
    assert result.returncode == 0, result.stdout + result.stderr
    return clients.tmp / "certbot" / "config" / "live" / name


async def test_certbot_revoke_makes_ocsp_say_revoked(clients: Clients, stack: Harness) -> None:
    await stack.register_ocsp_provisioner()
    live = await _certbot_certonly(clients, "gone.acme.internal")
    await _ocsp_says(stack, live, clients.ca, "good")
    # certbot signs with its account's key: the account that ordered the certificate.
    revoked = await clients.certbot(
        "revoke", "--cert-path", str(live / "cert.pem"), "--reason", "superseded", "--no-delete-after-revoke"
    )
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    said = await _ocsp_says(stack, live, clients.ca, "revoked")
    assert "Reason: superseded" in said
    serial = format(x509.load_pem_x509_certificate((live / "cert.pem").read_bytes()).serial_number, "x")

    async def revocation() -> dict[str, object] | None:
        async with stack.client("operator") as c:  # the audit trail is the operators' to read
            events = (await c.history(serial)).events
        return next((e.event for e in events if e.event_type == "CertificateRevoked"), None)

    event = await eventually(revocation, timeout=30)
    assert event["requested_by"] == "acme" and event["authorised_by"] == "requester"


async def test_certbot_revoke_with_the_certificates_key_for_key_compromise(clients: Clients, stack: Harness) -> None:
    await stack.register_ocsp_provisioner()
    live = await _certbot_certonly(clients, "leaked.acme.internal")
    # --key-path: the request is a JWS made with the certificate's key, which revocation checks itself.
    revoked = await clients.certbot(
        "revoke",
        "--cert-path",
        str(live / "cert.pem"),
        "--key-path",
        str(live / "privkey.pem"),
        "--reason",
        "keycompromise",
        "--no-delete-after-revoke",
    )
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    said = await _ocsp_says(stack, live, clients.ca, "revoked")
    assert "Reason: keyCompromise" in said


async def test_certbot_renew_force_renewal_is_recorded_as_superseding(clients: Clients, stack: Harness) -> None:
    live = await _certbot_certonly(clients, "renewed.acme.internal")
    old = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())
    renewed = await clients.certbot(
        "renew",
        "--force-renewal",
        "--no-random-sleep-on-renew",  # certbot waits up to 8 minutes when no terminal is attached
        "--cert-name",
        "renewed.acme.internal",
        "--http-01-port",
        str(clients.http01_port),
        "--http-01-address",
        "127.0.0.1",
    )
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    new = x509.load_pem_x509_certificate((live / "cert.pem").read_bytes())  # live/ links to the newest
    assert new.serial_number != old.serial_number
    await clients.verify(live / "cert.pem", live / "chain.pem")
    old_serial, new_serial = format(old.serial_number, "x"), format(new.serial_number, "x")

    async def superseded() -> str | None:
        async with stack.client("acme") as c:
            return (await c.status(old_serial)).superseded_by

    assert await eventually(superseded, timeout=30) == new_serial
    result = await stack.cli("audit", "history", new_serial)
    assert "EnrollmentRequested" in result.stdout and old_serial in result.stdout


async def _eab_credential(stack: Harness, provisioner: str) -> tuple[str, str]:
    """`certbus acme eab create --provisioner P` against ACME's database: the key id and HMAC key."""
    env = {**stack.cli_env(), "CERTBUS_DATABASE_URL": stack.database_url}
    args = ["-m", "shared.client.cli.main", "acme", "eab", "create", "--provisioner", provisioner, "--json"]
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    created = json.loads(result.stdout)
    return created["kid"], created["hmac_key"]


@pytest.fixture
async def eab_clients(stack: Harness, tmp_path: Path) -> AsyncIterator[Clients]:
    """ACME requiring external account binding; provisioner `team-a` registered with ACME's public key
    for *.team-a.internal alone, `acme` (ACME's own) for *.acme.internal."""
    if shutil.which("lego") is None:
        pytest.fail("lego not installed: `make test` installs it (apt-get install lego)")
    await stack.identity("acme")
    http01 = free_port()
    settings = {"acme_resolve": "*.internal=127.0.0.1", "acme_http01_port": str(http01), "acme_eab_required": "1"}
    with (
        dns_server(records_file=tmp_path / "dns-records.txt") as dns,
        AcmeProcess.start(stack, tmp_path, **settings) as acme,
    ):
        await acme.register(stack, name_suffixes=["acme.internal", "certbus.internal"])
        await acme.register(stack, "team-a", name_suffixes=["team-a.internal"])
        await acme.ready()
        yield Clients(acme, tmp_path, http01, free_port(), dns)


async def test_lego_with_external_account_binding_orders_within_its_provisioners_scope(
    eab_clients: Clients, stack: Harness
) -> None:
    # lego reads the directory's meta.externalAccountRequired and asks for a binding itself.
    refused = await eab_clients.lego("http-01", "web.team-a.internal", path="no-eab")
    assert refused.returncode != 0 and "External Account Binding" in refused.stdout + refused.stderr

    kid, hmac_key = await _eab_credential(stack, "team-a")
    eab = ("--eab", "--kid", kid, "--hmac", hmac_key)
    result = await eab_clients.lego("http-01", "web.team-a.internal", options=eab)
    assert result.returncode == 0, result.stdout + result.stderr
    leaf_file, rest = _split(eab_clients.tmp / "lego" / "certificates" / "web.team-a.internal.crt")
    await eab_clients.verify(leaf_file, rest)
    leaf = x509.load_pem_x509_certificate(leaf_file.read_bytes())
    history = await stack.cli("audit", "history", format(leaf.serial_number, "x"))
    assert "provisioner team-a" in history.stdout, history.stdout

    # The same account, for a name ACME's own provisioner could vouch for but team-a may not: the bus
    # judges the order by team-a's scope.
    outside = await eab_clients.lego("http-01", "web.acme.internal", options=eab)
    assert outside.returncode != 0 and "provisioner_scope" in outside.stdout + outside.stderr


@pytest.mark.parametrize("clients", [WILDCARD_PROFILE.name], indirect=True)
async def test_lego_run_over_dns_01_for_a_wildcard_and_its_base(clients: Clients, stack: Harness) -> None:
    domains = ["*.dns.acme.internal", "dns.acme.internal"]
    result = await clients.lego("dns-01", *domains)
    assert result.returncode == 0, result.stdout + result.stderr
    # A wildcard's authorization offers dns-01 alone: ACME validated both through the test's DNS
    # server, where lego's hook had put the records, and from where it took them away again.
    assert clients.dns.asked["udp"] >= 2
    assert clients.dns.records_file is not None and clients.dns.records_file.read_text().strip() == ""
    pem = clients.tmp / "lego" / "certificates" / "_.dns.acme.internal.crt"  # lego's file name for *.
    leaf_file, rest = _split(pem)
    leaf = x509.load_pem_x509_certificate(leaf_file.read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(domains)
    await clients.verify(leaf_file, rest)
    await _in_history(stack, leaf)
