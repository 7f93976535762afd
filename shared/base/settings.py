"""Configuration from `CERTBUS_*` environment variables, with defaults that work on a laptop."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NATS_URL = "nats://127.0.0.1:14222"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/certbus"
INSTANCE_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
# Where `make run` writes its ACME's /readyz URL, under CERTBUS_HOME, for the CLI run from the
# checkout (read when CERTBUS_ACME_READYZ_URL is unset).
ACME_READYZ_URL_FILE = Path("acme") / "readyz-url"


class CommonSettings(BaseSettings):
    """What every Certbus process shares: where NATS and the log are, how subjects are named."""

    model_config = SettingsConfigDict(env_prefix="CERTBUS_", extra="ignore")

    # One server, or several separated by commas (the nodes of a cluster: a process connects to
    # whichever answers, and follows the cluster when that one goes away).
    nats_url: str = DEFAULT_NATS_URL
    # How this process proves who it is to NATS: an NKey seed file (0600; `make run` writes one
    # per identity under .certbus/identities), or a user and password.
    nats_seed_file: Path | None = None
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    # Who this process is on the bus: a service's name, a requester's or an operator's name. It
    # names the process's ingress subjects and reply inbox, which NATS lets only it use.
    identity: str | None = None
    # An operator's signing key (PEM, 0600): the SDK signs operator commands with it, as `identity`.
    operator_key_file: Path | None = None
    # Clients: the ACME service's readiness URL (its /readyz, plain HTTP), where ACME is part of the
    # deployment; `certbus health` then asks it with the five. None or "": ACME is not deployed
    # (the CLI first looks for the URL `make run` wrote, ACME_READYZ_URL_FILE, if None).
    acme_readyz_url: str | None = None
    stream: str = "CERTBUS"
    subject_root: str = "pki"
    query_root: str = "certbus.q"
    crl_bucket: str = "certbus-crl"
    # Requests wait on the ingress stream until the service that owns them admits them to the log.
    ingress_stream: str = "CERTBUS_IN"
    ingress_root: str = "certbus.in"
    # Where the log republishes what it stored, for core subscribers in other accounts.
    events_root: str = "certbus.ev"
    # Where JetStream's API is found: the log lives in an account of its own, and the others reach
    # it through imports under this prefix (`$JS.API` only for the log's own account, admin).
    js_prefix: str = "certbus.js"
    stream_replicas: int = 1
    duplicate_window_s: float = 120.0
    # The log's limits: once one is reached new events are refused (and services alarm and retry);
    # the log never deletes history to make room. JetStream reserves the bytes when the stream is
    # created, so they must fit the server's (and the account's) file storage: size them for the
    # deployment (a certificate's whole life is a few events of 1-4 KiB).
    stream_max_bytes: int = 8 * 1024**3
    stream_max_msgs: int = 1_000_000_000
    # Requests of one kind one identity may have waiting for admission (the server refuses more),
    # and the ingress stream's size.
    ingress_backlog: int = 1000
    ingress_max_bytes: int = 256 * 1024**2
    crl_store_max_bytes: int = 2 * 1024**3  # the CRL object store (signing keeps a few CRLs per issuer)
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def nats_servers(self) -> list[str]:
        """The NATS servers `nats_url` lists, in order."""
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

    @property
    def who(self) -> str | None:
        """This process's identity on the bus (its NATS user when no identity is set)."""
        return self.identity or self.nats_user

    def connect_options(self) -> dict[str, Any]:
        """The credentials and inbox nats-py's `connect` (and FastStream's broker) take."""
        options: dict[str, Any] = {"inbox_prefix": self.inbox_prefix}
        if self.nats_seed_file is not None:
            options["nkeys_seed"] = str(self.nats_seed_file)
        elif self.nats_user and self.nats_password:
            options["user"] = self.nats_user
            options["password"] = self.nats_password.get_secret_value()
        return options

    @property
    def inbox_prefix(self) -> str:
        """A per-identity reply inbox (`_INBOX_<identity>`), so no identity can read another's replies."""
        return f"_INBOX_{self.who}" if self.who else "_INBOX"


class ServiceSettings(CommonSettings):
    """A service process: its database and its health/metrics HTTP endpoint."""

    database_url: str = DEFAULT_DATABASE_URL
    db_pool_min: int = 1
    db_pool_max: int = 5
    http_host: str = "127.0.0.1"
    http_port: int = 0
    max_deliver: int = 10
    # How long JetStream waits for a message's ack before it redelivers it (to another replica, if
    # this process died): handlers that take longer are kept in progress every ack_wait/3 while
    # their process lives (`shared.runtime.inflight`), so a short wait costs a live handler nothing.
    ack_wait_s: float = 3.0
    fetch_batch: int = 64
    # Batch consumers (shared.runtime.batch): how many messages their pull requests keep asked for
    # (buffered ones included), and how many one transaction applies at most.
    batch_consumers: bool = True  # false: FastStream's per-message handlers and a GroupCommit, as before
    batch_pull: int = 256
    batch_max: int = 256
    # At shutdown, how long NATS may take to drain subscriptions before the connection is closed
    # anyway (anything unacknowledged is redelivered): a stop stays within a 30 s grace period.
    drain_timeout_s: int = 10
    # How many requests of one identity a service admits from the ingress stream a minute.
    admission_rate_per_min: int = 600
    # Which replica of its service this process is, in health reports (unset: `<hostname>:<pid>`).
    # Replicas share the service's name, NATS identity and schema; each needs its own instance name.
    instance: str | None = Field(default=None, pattern=INSTANCE_PATTERN)

    @property
    def instance_name(self) -> str:
        """This replica's name: `instance` if set, else `<hostname>:<pid>` (cut to 128 characters)."""
        if self.instance is not None:
            return self.instance
        pid = f":{os.getpid()}"
        return socket.gethostname()[: 128 - len(pid)] + pid


class EnrollmentSettings(ServiceSettings):
    """Enrollment: token policy and the default profile it applies."""

    http_port: int = 8441
    max_token_ttl_s: int = 3600
    pending_sweep_s: float = 30.0
    renewal_check_s: float = 30.0  # how often the schedule sends renewal-due / expired events
    renewal_grace_s: int = 3600  # how long after notAfter a certificate may still be renewed
    renewal_batch: int = 100  # scheduled events sent per transaction


class SigningSettings(ServiceSettings):
    """Signing: where the encrypted CA keys live and what it will put into certificates."""

    http_port: int = 8442
    key_dir: Path = Path(".certbus/signing/keys")
    ca_passphrase: SecretStr | None = None
    ca_passphrase_file: Path | None = None
    ca_key_type: str = "ec-p384"
    root_validity_days: int = 3650
    issuing_validity_days: int = 1825
    organization: str = "Certbus"
    public_base_url: str = "http://127.0.0.1:8440"
    crl_validity_s: int = 7 * 24 * 3600
    crl_batch_s: float = 0.2
    # CRL shards of each issuing CA created from now on (recorded on its CaCreated; a CA keeps the
    # count it was created with): a leaf is in shard `serial mod crl_shards`, served at
    # /crl/{ca}/{shard}.crl, so a revocation re-signs one small CRL instead of the issuer's whole
    # list. 0 creates unsharded CAs (one CRL at /crl/{ca}.crl, as before shards).
    crl_shards: int = Field(default=128, ge=0, le=1024)
    # Where CA keys live: "file" (encrypted PKCS#8 files in key_dir, for development) or "pkcs11"
    # (generated and used inside a PKCS#11 token, never extractable; docs/hsm.md).
    ca_keystore: Literal["file", "pkcs11"] = "file"
    ca_pkcs11_module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")  # Debian's softhsm2
    ca_pkcs11_token_label: str | None = None  # the token by its label, or by its slot id:
    ca_pkcs11_slot: int | None = None
    ca_pkcs11_pin: SecretStr | None = None
    ca_pkcs11_pin_file: Path | None = None
    # Where the root's key is: "online" (signing creates the root at first start and signs issuing
    # CA certificates and the root's CRLs itself) or "offline" (the root comes from the offline
    # ceremony, `certbus-ceremony`: signing never holds its key, generates issuing CA keys and asks
    # the ceremony to certify them; docs/hsm.md).
    ca_root: Literal["online", "offline"] = "online"
    # `certbus health` warns this long before an offline root's CRL (the ceremony's) goes out of date.
    root_crl_warn_days: int = Field(default=14, ge=1, le=365)

    def pkcs11_pin(self) -> str:
        """The token's user PIN, from a file (preferred) or the environment; never logged."""
        if self.ca_pkcs11_pin_file is not None:
            value = self.ca_pkcs11_pin_file.read_text().strip()
        elif self.ca_pkcs11_pin is not None:
            value = self.ca_pkcs11_pin.get_secret_value()
        else:
            raise ValueError("no PKCS#11 PIN: set CERTBUS_CA_PKCS11_PIN_FILE (preferred) or CERTBUS_CA_PKCS11_PIN")
        if not value:
            raise ValueError("the PKCS#11 PIN is empty")
        return value

    def passphrase(self) -> bytes:
        """The CA key passphrase, from the environment or a file; never logged."""
        if self.ca_passphrase is not None:
            value = self.ca_passphrase.get_secret_value()
        elif self.ca_passphrase_file is not None:
            value = self.ca_passphrase_file.read_text().strip()
        else:
            raise ValueError(
                "no CA key passphrase: set CERTBUS_CA_PASSPHRASE_FILE (preferred) or CERTBUS_CA_PASSPHRASE"
            )
        if len(value) < 16:
            raise ValueError("the CA key passphrase must be at least 16 characters")
        return value.encode()


class ValidationSettings(ServiceSettings):
    """Validation: the relying-party HTTP endpoint (CRLs, CA certificates, OCSP) and its delegated
    OCSP responder, whose certificate it enrolls for with a provisioner key of its own."""

    http_port: int = 8440
    # The base URL signing embeds in certificates; validation also serves under its path, if any.
    public_base_url: str = "http://127.0.0.1:8440"
    ocsp_key_dir: Path = Path(".certbus/validation/ocsp")
    ocsp_provisioner_id: str = "ocsp-validation"
    ocsp_provisioner_key_file: Path = Path(".certbus/validation/ocsp-provisioner.key.pem")
    ocsp_profile: str = "ocsp-responder"
    ocsp_responder_name: str = "validation.ocsp.internal"
    ocsp_validity_s: int = 3600
    ocsp_check_interval_s: float = 60.0
    # OCSP statuses kept in memory (services/validation/statuses.py): how many, and how long the
    # `status_changes` rows every replica polls are kept (a replica that could not poll for half of
    # that forgets every status it held).
    ocsp_status_entries: int = Field(default=1_000_000, ge=1)
    # Signed OCSP responses kept for reuse (~0.7 KB each): more than the serials asked about in one
    # response validity, or requests going round them all miss every time (least recently used out).
    ocsp_response_cache_entries: int = Field(default=100_000, ge=1)
    ocsp_status_changes_keep_s: float = Field(default=600.0, gt=2)
    # Processes answering OCSP (and the CRL and CA routes) on the HTTP port, sharing it with
    # SO_REUSEPORT: the service's own process and `ocsp_workers - 1` responder workers it starts
    # (services/validation/prefork.py). 1 (the default): the service's process alone. More pays
    # only with cores to spare: on the shared 2-core machine, two processes answered about what one
    # did (7.5k vs 7.3k cached responses/s, CPU-bound) for 90 MiB more (docs/benchmarks.md).
    ocsp_workers: int = Field(default=1, ge=1, le=64)

    @property
    def ocsp_provisioner_public_key_file(self) -> Path:
        """Where validation writes its provisioner's public key, for `certbus provisioner add --public-key`."""
        path = self.ocsp_provisioner_key_file
        return path.with_name(path.name.removesuffix(".pem").removesuffix(".key") + ".pub.pem")


class RevocationSettings(ServiceSettings):
    """Revocation."""

    http_port: int = 8443


class AuditSettings(ServiceSettings):
    """Audit: where its checkpoint-signing key lives (not a CA key) and how often it signs."""

    http_port: int = 8444
    checkpoint_key_file: Path = Path(".certbus/audit/checkpoint.key.pem")
    checkpoint_every_events: int = 1000
    checkpoint_interval_s: float = 60.0
    lint_after_issuance: bool = True
    # Post-issuance pkilint runs in the background (services/audit/lint_job.py): at most this many
    # certificates a second, and at most this many waiting before the oldest are passed over (counted).
    lint_per_s: float = Field(default=20.0, gt=0, le=10_000)
    lint_backlog_max: int = Field(default=10_000, ge=32, le=10_000_000)
    check_interval_s: float = 300.0
    crl_check_grace_s: float = 60.0  # a revocation younger than this need not be in a CRL yet


class AcmeSettings(ServiceSettings):
    """ACME (RFC 8555): where clients reach it, how challenges are checked, and the provisioner key
    it signs its orders' tokens with. `http_port` serves health and metrics; ACME itself is served
    over HTTPS on `acme_port`, with a certificate ACME enrolls for through Certbus."""

    http_port: int = 8445
    acme_host: str = "127.0.0.1"
    acme_port: int = 8446
    # The URL clients are given (the directory is at {acme_base_url}/acme/directory); its host must
    # be among acme_tls_names or acme_tls_ips.
    acme_base_url: str = "https://127.0.0.1:8446"
    acme_provisioner_id: str = "acme"
    acme_provisioner_key_file: Path = Path(".certbus/acme/acme-provisioner.key.pem")
    acme_profile: str = "tls-server"  # the profile ordered certificates are enrolled under
    # ACME's own server certificate: its profile, DNS names and IP addresses.
    acme_tls_profile: str = "service"
    acme_tls_names: list[str] = ["acme.certbus.internal"]
    acme_tls_ips: list[str] = ["127.0.0.1"]
    acme_tls_dir: Path = Path(".certbus/acme/tls")
    # Challenge validation: resolver overrides (`*.internal=127.0.0.1,host=10.0.0.5`) and the ports
    # http-01 and tls-alpn-01 are checked on (RFC 8555 says 80 and 443).
    acme_resolve: str = ""
    acme_http01_port: int = Field(default=80, ge=1, le=65535)
    acme_tlsalpn01_port: int = Field(default=443, ge=1, le=65535)
    # The DNS server dns-01's TXT records are asked of: `host:port` or `host` (port 53), an IP
    # address (`[::1]:5353` for IPv6); empty: the system's resolver (/etc/resolv.conf).
    acme_dns_server: str = ""
    acme_terms_of_service: str | None = None
    # External account binding (RFC 8555 §7.3.4): a new account must carry one, made with a credential
    # from `certbus acme eab create --provisioner P`; `make run` turns it off for its quickstart.
    acme_eab_required: bool = True
    # Rate limits per hour (0: none): orders per account, failed validations per account and name.
    acme_orders_per_hour: int = Field(default=300, ge=0)
    acme_failed_validations_per_hour: int = Field(default=5, ge=0)
    acme_sweep_s: float = Field(default=10.0, gt=0)  # how often orders left processing are taken up again
    acme_enroll_timeout_s: float = Field(default=30.0, gt=0)
