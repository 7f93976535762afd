"""A Certbus deployment for tests: isolated stream and subjects on a shared NATS server, a fresh
database, and the five services either in this process (fast) or as separate processes (e2e)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from faststream import FastStream

from shared.cli import provisioner
from shared.client import CertbusClient
from shared.clock import Clock
from shared.crypto import build_csr, generate_key
from shared.db import create_pool, drop_schema
from shared.devstack import SERVICES, ServiceProcess, free_port
from shared.events import CertificateIssued, ProfileLinted, ProvisionerRegistered, utcnow
from shared.lint import errors, lint_certificate
from shared.profiles import Profile, load_profiles
from shared.service import Runtime
from shared.settings import (
    AuditSettings,
    CommonSettings,
    EnrollmentSettings,
    RevocationSettings,
    ServiceSettings,
    SigningSettings,
    ValidationSettings,
)
from shared.tokens import create_token

PROFILES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "profiles.toml"

SETTINGS: dict[str, type[ServiceSettings]] = {
    "enrollment": EnrollmentSettings,
    "signing": SigningSettings,
    "validation": ValidationSettings,
    "revocation": RevocationSettings,
    "audit": AuditSettings,
}
PASSPHRASE = "test-passphrase-not-a-secret-0123456789"


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last value {last!r})")


class Harness:
    """One isolated Certbus: its own stream name, subject roots, CRL bucket and database."""

    def __init__(self, nats_url: str, database_url: str, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.nats_url = nats_url
        self.database_url = database_url
        self.tmp = tmp
        self.common: dict[str, Any] = {
            "nats_url": nats_url,
            "stream": f"T{tag}",
            "subject_root": f"t{tag}",
            "query_root": f"tq{tag}",
            "crl_bucket": f"crl-{tag}",
        }
        self.root = self.common["subject_root"]
        self.http_ports = {name: free_port() for name in SERVICES}
        self.key_dir = tmp / "signing-keys"
        self.apps: dict[str, tuple[FastStream, Runtime]] = {}
        self.procs: dict[str, ServiceProcess] = {}
        self.provisioner_key = ed25519.Ed25519PrivateKey.generate()
        self._pool: asyncpg.Pool | None = None
        self.lint_exempt: set[str] = set()
        self.lint_at_close = True
        self.overrides: dict[str, dict[str, Any]] = {}
        self.clocks: dict[str, Clock] = {}  # injected into services started in this process

    # --- configuration -----------------------------------------------------------------

    def settings(self, name: str, **overrides: Any) -> ServiceSettings:
        extra: dict[str, Any] = {
            "database_url": self.database_url,
            "http_port": self.http_ports[name],
            "log_level": "WARNING",
        }
        if name == "enrollment":
            extra.update(pending_sweep_s=0.2)
        if name == "audit":
            extra.update(
                checkpoint_key_file=self.tmp / "audit" / "checkpoint.key.pem",
                checkpoint_interval_s=0.5,
                check_interval_s=1.0,
            )
        if name == "validation":
            extra.update(
                public_base_url=f"http://127.0.0.1:{self.http_ports['validation']}",
                ocsp_key_dir=self.tmp / "validation" / "ocsp",
                ocsp_provisioner_key_file=self.tmp / "validation" / "ocsp-provisioner.key.pem",
                ocsp_check_interval_s=1.0,
            )
        if name == "signing":
            extra.update(
                key_dir=self.key_dir,
                ca_passphrase=PASSPHRASE,
                ca_key_type="ec-p256",
                public_base_url=f"http://127.0.0.1:{self.http_ports['validation']}",
                crl_batch_s=0.05,
            )
        return SETTINGS[name](**{**self.common, **extra, **self.overrides.get(name, {}), **overrides})

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
        for key, value in self.settings(name).model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            env[f"CERTBUS_{key.upper()}"] = str(value)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        return env

    async def cli(
        self, *args: str, operator: str = "tests", settings_of: str = "enrollment"
    ) -> subprocess.CompletedProcess[str]:
        """Run the `certbus` CLI against this deployment as a separate process, without blocking the
        event loop (the services may run in it); CERTBUS_HOME is in the test's tmp dir. The CLI gets
        the CERTBUS_* settings of service `settings_of`."""
        env = self.env(settings_of)
        env.update(CERTBUS_HOME=str(self.tmp / "home"), CERTBUS_OPERATOR=operator)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.cli.main", *args, env=env, stdout=PIPE, stderr=PIPE
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode is not None
        return subprocess.CompletedProcess(list(args), proc.returncode, stdout.decode(), stderr.decode())

    # --- services in this process --------------------------------------------------------

    async def start(self, *names: str) -> None:
        """Start services in this event loop (all five if none named)."""
        from services.audit.app import build as audit
        from services.enrollment.app import build as enrollment
        from services.revocation.app import build as revocation
        from services.signing.app import build as signing
        from services.validation.app import build as validation

        builders = {
            "enrollment": enrollment,
            "signing": signing,
            "validation": validation,
            "revocation": revocation,
            "audit": audit,
        }
        # Signing first: it declares the CAs that the others learn about.
        for name in sorted(names or SERVICES, key=lambda n: n != "signing"):
            app, rt = builders[name](self.settings(name), clock=self.clocks.get(name))  # type: ignore[operator]
            await app.start()
            self.apps[name] = (app, rt)

    async def start_replica(self, name: str, replica: str) -> None:
        """Start one more instance of service `name` in this process (it shares the durable consumers)."""
        from services.signing.app import build as signing
        from services.validation.app import build as validation

        builders = {"signing": signing, "validation": validation}
        app, rt = builders[name](self.settings(name, http_port=free_port()), clock=self.clocks.get(name))  # type: ignore[operator]
        await app.start()
        self.apps[replica] = (app, rt)

    async def stop(self, name: str) -> None:
        app, _ = self.apps.pop(name)
        await app.stop()

    async def forget(self, name: str, durable: str) -> None:
        """Drop stopped service `name`'s schema and delete its durable consumer `durable`, so that
        its next start rebuilds its tables from the log (sequence 1)."""
        pool = await create_pool(self.database_url, name)
        try:
            await drop_schema(pool, name)
        finally:
            await pool.close()
        nc = await nats.connect(self.nats_url)
        try:
            await nc.jetstream().delete_consumer(self.common["stream"], durable)
        finally:
            await nc.close()

    def runtime(self, name: str) -> Runtime:
        return self.apps[name][1]

    # --- services as processes ------------------------------------------------------------

    def spawn(self, name: str) -> ServiceProcess:
        proc = ServiceProcess(name, self.env(name), log_file=self.tmp / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    def spawn_all(self) -> None:
        for name in SERVICES:
            self.spawn(name)
        for proc in self.procs.values():
            proc.wait_healthy(60)

    # --- clients ----------------------------------------------------------------------------

    def client(self, requester: str = "tests") -> CertbusClient:
        return CertbusClient(CommonSettings(**self.common), requester=requester)

    async def apply_profiles(self, *extra: Profile) -> dict[str, ProfileLinted]:
        """Apply the shipped profiles (deploy/profiles.toml) and `extra`; returns signing's verdicts."""
        verdicts = {}
        async with self.client("operator") as c:
            for profile in [*load_profiles(PROFILES_FILE), *extra]:
                verdicts[profile.name] = await c.apply_profile(profile, "tests")
        return verdicts

    async def register_provisioner(self, provisioner_id: str = "default") -> None:
        async with self.client("operator") as c:
            await c.publish(
                ProvisionerRegistered(
                    aggregate_id=provisioner_id,
                    occurred_at=utcnow(),
                    correlation_id="tests",
                    producer="operator",
                    name=provisioner_id,
                    public_key_pem=provisioner.public_pem(self.provisioner_key),
                    registered_by="tests",
                )
            )

    async def register_ocsp_provisioner(self, timeout: float = 30.0) -> None:
        """Register validation's own provisioner from the public key it wrote on start (what `make
        run` does), so that validation can enroll for its OCSP responder certificate. Not part of
        the `stack` fixture: the responder's issuance would change what other tests count."""
        settings = self.settings("validation")
        assert isinstance(settings, ValidationSettings)
        path = settings.ocsp_provisioner_public_key_file
        await eventually(lambda: asyncio.sleep(0, path.exists()), timeout=timeout)
        async with self.client("operator") as c:
            await c.publish(
                ProvisionerRegistered(
                    aggregate_id=settings.ocsp_provisioner_id,
                    occurred_at=utcnow(),
                    correlation_id="tests",
                    producer="operator",
                    name=settings.ocsp_provisioner_id,
                    public_key_pem=path.read_text(),
                    registered_by="tests",
                )
            )

    def token(
        self,
        *names: str,
        ttl: timedelta = timedelta(minutes=5),
        key: ed25519.Ed25519PrivateKey | None = None,
        provisioner_id: str = "default",
        profile: str = "tls-server",
    ) -> str:
        return create_token(key or self.provisioner_key, provisioner_id, list(names), utcnow(), ttl, profile=profile)

    async def enroll(self, *names: str, key_type: str = "ec-p256", profile: str = "tls-server") -> CertificateIssued:
        key = generate_key(key_type)  # type: ignore[arg-type]
        async with self.client() as c:
            csr = build_csr(key, list(names)).decode()
            return await c.enroll(csr, self.token(*names, profile=profile), profile=profile)

    # --- looking inside -----------------------------------------------------------------------

    async def db(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=3)
        assert self._pool is not None
        return self._pool

    async def publish_raw(self, subject: str, payload: bytes) -> None:
        """Put bytes on the stream under a fresh Nats-Msg-Id (a copy, a redelivery, or garbage)."""
        nc = await nats.connect(self.nats_url)
        try:
            await nc.jetstream().publish(
                subject, payload, stream=self.common["stream"], headers={"Nats-Msg-Id": str(uuid.uuid4())}
            )
        finally:
            await nc.close()

    async def stream_messages(self, subject_filter: str) -> list[Any]:
        """Every message in the stream matching `subject_filter` (read with an ephemeral consumer)."""
        nc = await nats.connect(self.nats_url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(self.common["stream"])
            if info.state.messages == 0:
                return []
            sub = await js.subscribe(subject_filter, stream=self.common["stream"], ordered_consumer=True)
            found = []
            try:
                while True:
                    try:
                        msg = await sub.next_msg(timeout=0.5)
                    except nats.errors.TimeoutError:
                        return found
                    found.append(msg)
                    if msg.metadata.num_pending == 0:
                        return found
            finally:
                await sub.unsubscribe()
        finally:
            await nc.close()

    async def lint_issued(self) -> list[str]:
        """pkilint every certificate issued on this harness's log; returns what failed (every issued
        certificate in the test suite must pass, except serials a test put in `lint_exempt`)."""
        failures: list[str] = []
        if not self.lint_at_close:
            return failures
        for msg in await self.stream_messages(f"{self.root}.cert.*.issued"):
            try:
                event = CertificateIssued.model_validate_json(msg.data)
            except ValueError:
                continue  # a test's deliberately malformed event
            if event.serial in self.lint_exempt:
                continue
            der = x509.load_pem_x509_certificate(event.cert_pem.encode()).public_bytes(serialization.Encoding.DER)
            found = errors(lint_certificate(der))
            if found:
                failures.append(f"{event.serial} ({event.profile}): {', '.join(f.code for f in found)}")
        return failures

    async def close(self) -> None:
        stuck = []
        for name in list(self.apps):
            try:
                await asyncio.wait_for(asyncio.shield(self.stop(name)), timeout=30)
            except TimeoutError:
                stuck.append(name)
                for task in asyncio.all_tasks():  # what the service is still waiting for
                    task.print_stack(limit=8, file=sys.stderr)
        for proc in self.procs.values():
            proc.stop(kill=True)
        if self._pool is not None:
            await self._pool.close()
        assert not stuck, f"services did not stop within 30 s: {stuck} (task stacks on stderr)"


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `certbus` CLI as a separate process with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
