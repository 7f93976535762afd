"""A Certbus deployment for tests, in the production trust model: a nats-server of its own with the
accounts and NKey identities `shared.trust.accounts` renders (the same as `make run` and deploy/nats), the
log created by the admin, a fresh database, and the five services either in this process (fast)
or as separate processes (e2e). Every test process, service, client and CLI call authenticates as
one identity; nothing connects anonymously."""

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
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from deploy.local.devstack import SERVICES, NatsServer, ServiceProcess, free_port
from deploy.local.devstack import wait_ready as readiness_missing
from shared.admin import init_log
from shared.base.clock import Clock
from shared.base.files import write_new
from shared.base.settings import (
    AuditSettings,
    CommonSettings,
    EnrollmentSettings,
    RevocationSettings,
    ServiceSettings,
    SigningSettings,
    ValidationSettings,
)
from shared.client.cli import provisioner
from shared.client.sdk import CertbusClient
from shared.contract.binding import publisher_of
from shared.contract.events import CertificateIssued, ProfileLinted, ProvisionerRegistered, utcnow
from shared.contract.ingress import sender
from shared.contract.profiles import Profile, load_profiles
from shared.pki.crypto import build_csr, generate_key, key_pem
from shared.pki.lint import errors, lint_certificate
from shared.pki.tokens import create_token
from shared.runtime.db import create_pool, drop_schema
from shared.runtime.service import Runtime
from shared.trust import operators
from shared.trust.accounts import Names, Role, render
from shared.trust.identities import IdentityStore

PROFILES_FILE = Path(__file__).resolve().parent.parent / "deploy" / "profiles.toml"

SETTINGS: dict[str, type[ServiceSettings]] = {
    "enrollment": EnrollmentSettings,
    "signing": SigningSettings,
    "validation": ValidationSettings,
    "revocation": RevocationSettings,
    "audit": AuditSettings,
}
PASSPHRASE = "test-passphrase-not-a-secret-0123456789"
CRL_SHARDS = 4  # the issuing CAs of a test stack publish this many CRLs each (few: each is signed at start)
# The requesters every harness knows; others are added (and the server reloaded) when first used.
REQUESTERS = ("tests", "alice", "bob", "mallory", "agent", "holder-app", "requester")


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
    """One isolated Certbus: its own nats-server (`nats`, which a test may kill and start again),
    identities, stream names, subject roots, CRL bucket and database. `await open()` before use."""

    def __init__(self, database_url: str, tmp: Path, nats_store: Path | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.nats = NatsServer(store_dir=nats_store, config_file=tmp / "nats" / "server.conf")
        self.nats_url = self.nats.url
        self.database_url = database_url
        self.tmp = tmp
        self.identities = IdentityStore(tmp / "identities")
        self.common: dict[str, Any] = {
            "nats_url": self.nats_url,
            "stream": f"T{tag}",
            "subject_root": f"t{tag}",
            "query_root": f"tq{tag}",
            "crl_bucket": f"crl-{tag}",
            "ingress_stream": f"T{tag}_IN",
            "ingress_root": f"tin{tag}",
            # Every test's streams live on one server, which reserves each stream's bytes.
            "stream_max_bytes": 256 * 1024**2,
            "ingress_max_bytes": 16 * 1024**2,
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

    # --- the bus ------------------------------------------------------------------------------

    async def open(self) -> Harness:
        """Create the identities, start the nats-server with their accounts, and create the log as
        the admin (what `make run` does)."""
        for service in SERVICES:
            self.identities.ensure(service, service)  # type: ignore[arg-type]
        self.identities.ensure("admin", "admin")
        self.identities.ensure("operator", "operator")
        for name in REQUESTERS:
            self.identities.ensure(name, "requester")
        self._write_config()
        await asyncio.to_thread(self.nats.start)
        await init_log(self.client_settings("admin"))
        # The operator's key, registered on the log first (the genesis): it signs operator commands.
        key = ed25519.Ed25519PrivateKey.generate()
        self.operator_key_file.parent.mkdir(parents=True, exist_ok=True)
        write_new(self.operator_key_file, key_pem(key))
        async with self.client("operator") as c:
            await c.publish(operators.registration("operator", key, "operator", utcnow()))
        return self

    @property
    def operator_key_file(self) -> Path:
        return self.tmp / "operators" / "operator.key.pem"

    def _write_config(self) -> None:
        conf = self.tmp / "nats" / "server.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        (conf.parent / "accounts.conf").write_text(render(self.identities.all(), self.names))
        conf.write_text("max_payload: 1MB\ninclude ./accounts.conf\n")

    @property
    def names(self) -> Names:
        return Names.of(CommonSettings(**self.common))

    async def identity(self, name: str, role: Role = "requester") -> str:
        """Make sure identity `name` exists (adding it reloads the server's configuration)."""
        if self.identities.get(name) is None:
            self.identities.ensure(name, role)
            self._write_config()
            await asyncio.to_thread(self.nats.reload)
        return name

    def role_of(self, name: str) -> Role:
        identity = self.identities.get(name)
        assert identity is not None, f"no identity {name!r}: use `await harness.identity(...)` first"
        return identity.role

    def client_settings(self, name: str = "tests") -> CommonSettings:
        """Settings that connect as identity `name` (a service, `admin`, `operator` or a requester);
        the operator's also sign operator commands with the registered operator key."""
        key = self.operator_key_file if self.role_of(name) == "operator" else None
        return CommonSettings(
            **self.common, identity=name, nats_seed_file=self.identities.seed_file(name), operator_key_file=key
        )

    async def connect(self, name: str = "admin", **options: Any) -> nats.NATS:
        """A raw NATS connection as identity `name`; `js(nc, name)` gives its JetStream."""
        return await nats.connect(self.nats_url, **self.client_settings(name).connect_options(), **options)

    def js(self, nc: nats.NATS, name: str = "admin") -> Any:
        """JetStream for a connection made as `name` (every identity reaches the log's JetStream API
        through its account's imports, under the deployment's prefix)."""
        return nc.jetstream(prefix=self.common_settings.js_prefix)

    @property
    def common_settings(self) -> CommonSettings:
        return CommonSettings(**self.common)

    # --- configuration -----------------------------------------------------------------

    def settings(self, name: str, **overrides: Any) -> ServiceSettings:
        extra: dict[str, Any] = {
            "database_url": self.database_url,
            "http_port": self.http_ports[name],
            "log_level": "WARNING",
            "identity": name,
            "nats_seed_file": self.identities.seed_file(name),
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
                ocsp_workers=1,  # the service's process alone: a test that wants workers overrides it
            )
        if name == "signing":
            extra.update(
                key_dir=self.key_dir,
                ca_passphrase=PASSPHRASE,
                ca_key_type="ec-p256",
                public_base_url=f"http://127.0.0.1:{self.http_ports['validation']}",
                crl_batch_s=0.05,
                crl_shards=CRL_SHARDS,
            )
        return SETTINGS[name](**{**self.common, **extra, **self.overrides.get(name, {}), **overrides})

    def env(self, name: str, **overrides: Any) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
        for key, value in self.settings(name, **overrides).model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            env[f"CERTBUS_{key.upper()}"] = str(value)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        return env

    def cli_env(self) -> dict[str, str]:
        """The environment of a `certbus` CLI run against this deployment (CERTBUS_HOME in the tmp dir,
        the identities here): it connects as requester `tests`, and for an operator's command as the
        operator `operator`, signing with its registered key."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBUS_")}
        for key, value in self.common_settings.model_dump().items():
            if value is not None and key not in ("identity", "nats_seed_file", "nats_user", "nats_password"):
                env[f"CERTBUS_{key.upper()}"] = str(value)
        env.update(
            CERTBUS_HOME=str(self.tmp / "home"),
            CERTBUS_IDENTITIES=str(self.identities.directory),
            CERTBUS_REQUESTER="tests",
            CERTBUS_OPERATOR="operator",
            CERTBUS_OPERATOR_KEY_FILE=str(self.operator_key_file),
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(Path(__file__).resolve().parent.parent),
        )
        return env

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the `certbus` CLI against this deployment as a separate process, without blocking the
        event loop (the services may run in it)."""
        env = self.cli_env()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared.client.cli.main", *args, env=env, stdout=PIPE, stderr=PIPE
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

    async def serve(self) -> Harness:
        """The five services in this process, the test provisioner and the shipped profiles."""
        await self.start()
        await self.register_provisioner()
        await self.apply_profiles()
        return self

    async def start_replica(self, name: str, replica: str) -> None:
        """Start one more instance of service `name` in this process, named `replica` (it shares the
        durable consumers; its own instance name, as this process's pid is the first one's too)."""
        from services.signing.app import build as signing
        from services.validation.app import build as validation

        builders = {"signing": signing, "validation": validation}
        settings = self.settings(name, http_port=free_port(), instance=replica)
        app, rt = builders[name](settings, clock=self.clocks.get(name))  # type: ignore[operator]
        await app.start()
        self.apps[replica] = (app, rt)

    async def stop(self, name: str) -> None:
        app, _ = self.apps.pop(name)
        await app.stop()

    async def lose_database(self, name: str) -> None:
        """What losing the whole database is for service `name` (stopped first if it runs here): its
        schema gone, its durables on the log kept, so that its next start rebuilds it from the log."""
        if name in self.apps:
            await self.stop(name)
        pool = await create_pool(self.database_url, name)
        try:
            await drop_schema(pool, name)
        finally:
            await pool.close()

    async def rebuilt(self, name: str) -> dict[str, Any]:
        """Service `name`'s finished rebuild from the log (waits for it): its `rebuilds` row."""
        pool = await self.db()
        query = f"SELECT * FROM {name}.rebuilds ORDER BY id DESC LIMIT 1"

        async def finished() -> bool:
            row = await pool.fetchrow(query)
            return row is not None and row["finished_at"] is not None

        await eventually(finished, timeout=60)
        return dict(await pool.fetchrow(query))

    async def forget(self, name: str, durable: str) -> None:
        """Drop stopped service `name`'s schema and delete its durable consumer `durable`, so that
        its next start rebuilds its tables from the log (sequence 1)."""
        await self.lose_database(name)
        nc = await self.connect("admin")
        try:
            await self.js(nc).delete_consumer(self.common["stream"], durable)
        finally:
            await nc.close()

    def runtime(self, name: str) -> Runtime:
        return self.apps[name][1]

    # --- services as processes ------------------------------------------------------------

    def spawn(self, name: str) -> ServiceProcess:
        proc = ServiceProcess(name, self.env(name), log_file=self.tmp / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    async def spawn_replica(self, name: str, replica: str, timeout: float = 60.0) -> ServiceProcess:
        """Start one more instance of service `name` as its own process, named `replica`; wait until
        it is alive."""
        env = self.env(name, http_port=free_port(), instance=replica)
        proc = ServiceProcess(name, env, log_file=self.tmp / f"{replica}.log").start()
        self.procs[replica] = proc
        await asyncio.to_thread(proc.wait_healthy, timeout)
        return proc

    def spawn_all(self) -> None:
        for name in SERVICES:
            self.spawn(name)
        for proc in self.procs.values():
            proc.wait_healthy(60)

    # --- clients ----------------------------------------------------------------------------

    def client(self, name: str = "tests") -> CertbusClient:
        """A client connected as identity `name` (a requester by default; `operator` for operator
        commands; a service's name to act, in a test, with that service's credentials)."""
        return CertbusClient(self.client_settings(name), requester=name)

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

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every service is ready (what `certbus health` judges before it exits 0, polled
        as `make run` polls it); fail naming what is still missing."""
        missing = await readiness_missing(self.client_settings("tests"), timeout)
        assert not missing, f"not ready within {timeout} s: {missing}"

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

    async def publish_raw(self, subject: str, payload: bytes, as_: str | None = None) -> None:
        """Put bytes on the log (or the ingress stream) under a fresh Nats-Msg-Id (a copy, a
        redelivery, or garbage), as identity `as_`: by default the one allowed to publish `subject`
        (the service or operator its event type names; on the ingress stream, the requester it names)."""
        settings = self.common_settings
        if as_ is None:
            if subject.startswith(settings.ingress_root + "."):
                as_ = sender(subject, settings.ingress_root)[0]
            else:
                publisher = publisher_of(subject, self.root)
                assert publisher is not None, f"nobody may publish {subject!r}: say as whom"
                as_ = publisher
        stream = settings.ingress_stream if subject.startswith(settings.ingress_root + ".") else settings.stream
        nc = await self.connect(as_)
        try:
            await self.js(nc, as_).publish(subject, payload, stream=stream, headers={"Nats-Msg-Id": str(uuid.uuid4())})
        finally:
            await nc.close()

    async def stream_messages(self, subject_filter: str) -> list[Any]:
        """Every message in the log matching `subject_filter`, read as the admin with an ephemeral
        pull consumer (the admin reaches the log's account only through imports, so no push)."""
        nc = await self.connect("admin")
        try:
            js = self.js(nc)
            info = await js.stream_info(self.common["stream"])
            if info.state.messages == 0:
                return []
            config = ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0
            )
            sub = await js.pull_subscribe(subject_filter, durable=None, stream=self.common["stream"], config=config)
            found: list[Any] = []
            try:
                # The consumer's pending count at creation is exactly what matches: fetch until all of
                # it arrived, so a slow server (a loaded machine) cannot make an answer look empty.
                expected = (await sub.consumer_info()).num_pending
                deadline = asyncio.get_running_loop().time() + 30
                while len(found) < expected:
                    try:
                        found.extend(await sub.fetch(min(1000, expected - len(found)), timeout=2))
                    except TimeoutError:  # nats-py raises its own subclass or the bare builtin
                        if asyncio.get_running_loop().time() > deadline:
                            raise
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
        self.nats.cleanup()
        assert not stuck, f"services did not stop within 30 s: {stuck} (task stacks on stderr)"


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `certbus` CLI as a separate process with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "shared.client.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
