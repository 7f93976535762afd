"""Who may do what on the bus, declared once.

The NATS configuration of a Certbus deployment (accounts, users, exports and imports) is generated
from this module: `deploy/nats/accounts.conf`, the server `make run` starts and the servers the tests
start all come from `render`. Its publishing rules come from the event classes themselves
(`Event.publisher`), so what NATS lets an identity publish and what consumers and audit accept
from a subject can never drift apart.

The shape (see deploy/README.md):
- account CERTBUS owns the log, the ingress stream and the CRL object store, and has no user at
  all: every identity reaches it from an account of its own, through imports;
- account ADMIN holds `admin`, which manages the streams through the whole JetStream API
  (imported, like everyone's) and publishes no event and no request;
- each service has an account of its own (ENROLLMENT, SIGNING, ...), one user, and reaches the
  log only through what CERTBUS exports to it: the subjects of the events it publishes, the
  JetStream API calls its own durable consumers and its outbox need (imported under `js_prefix`),
  and the queries of the other services it asks;
- operators (OPERATORS) and requesters (REQUESTERS) are people and programs, each with a user of
  their own whose name is their identity: a requester may publish only on its own ingress subjects
  (`<ingress_root>.<name>.<kind>`) and read only its own inbox, an operator only operator commands
  (which also need operator signatures, see `shared.trust.operators`).
Because every publish from outside CERTBUS crosses an account boundary, a reply subject set by
hand is rewritten by the server: no answer from JetStream or from a service can land in the log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.base.settings import CommonSettings
from shared.contract.events import EVENT_TYPES, Publisher
from shared.contract.ingress import INTAKES

Role = Literal["admin", "enrollment", "signing", "validation", "revocation", "audit", "operator", "requester"]
SERVICES: tuple[Publisher, ...] = ("enrollment", "signing", "validation", "revocation", "audit")
ROLES: tuple[Role, ...] = (
    "admin",
    "enrollment",
    "signing",
    "validation",
    "revocation",
    "audit",
    "operator",
    "requester",
)
PUBLISHER_ROLES: tuple[Publisher, ...] = (*SERVICES, "operator")
ACCOUNTS: dict[Role, str] = {
    "admin": "ADMIN",
    "enrollment": "ENROLLMENT",
    "signing": "SIGNING",
    "validation": "VALIDATION",
    "revocation": "REVOCATION",
    "audit": "AUDIT",
    "operator": "OPERATORS",
    "requester": "REQUESTERS",
}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Every durable consumer, by service: (purpose, stream kind). A test checks the services register
# exactly these; audit's replay consumers must never be able to touch them.
DURABLES: dict[Publisher, tuple[tuple[str, Literal["log", "ingress"]], ...]] = {
    "enrollment": (("requests", "log"), ("admit", "ingress")),
    "signing": (("approved", "log"), ("revoked", "log"), ("ceremony", "log")),
    "validation": (("status", "log"),),
    "revocation": (("requests", "log"), ("admit", "ingress")),
    "audit": (("archive", "log"),),
}
# The queries each client role may ask, as (service, query); "*" is every query of the service.
QUERIES: dict[Role, tuple[tuple[str, str], ...]] = {
    "requester": (
        *((service, "health") for service in SERVICES),
        ("validation", "*"),
        ("enrollment", "request"),
        ("enrollment", "profiles"),
        ("audit", "issued"),
        ("audit", "revocations"),
    ),
    "operator": tuple((service, "*") for service in SERVICES),
    "validation": (
        ("enrollment", "request"),
        ("enrollment", "provisioners"),
        ("enrollment", "profiles"),
        ("audit", "issued"),
    ),
}
# The events each client role hears (as core messages, after the log stored them), by verb of the
# `cert` and `revoke` aggregates; operators hear everything.
HEARS: dict[Role, tuple[str, ...]] = {
    "requester": (
        "cert.*.issued",
        "cert.*.rejected",
        "cert.*.refused",
        "cert.*.pending",
        "cert.*.revoked",
        "cert.*.renewal_due",
        "cert.*.superseded",
        "cert.*.destroyed",
        "revoke.*.rejected",
    ),
    "validation": ("cert.*.issued", "cert.*.rejected", "cert.*.refused", "cert.*.pending"),
    "operator": (">",),
}
# Who may put requests on the ingress stream (each under its own name only).
SENDS_REQUESTS: tuple[Role, ...] = ("requester", "validation")
# Which services admit which kinds of request from the ingress stream.
ADMITS: dict[Publisher, tuple[str, ...]] = {
    "enrollment": ("enroll", "renew"),
    "revocation": ("revoke", "key_destroyed"),
}
assert {kind for kinds in ADMITS.values() for kind in kinds} == set(INTAKES)


@dataclass(frozen=True)
class Identity:
    """One user on the bus: its name (a subject token), its role, and its public NKey (or the name
    of the environment variable the server reads it from, for a deployment's template)."""

    name: str
    role: Role
    nkey: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"identity {self.name!r}: 1-64 letters, digits, '_' or '-'")
        if self.role in SERVICES and self.name != self.role:
            raise ValueError(f"the {self.role} service's identity must be named {self.role!r}")


@dataclass(frozen=True)
class Names:
    """The names a deployment's resources go by (from its settings)."""

    stream: str
    ingress_stream: str
    subject_root: str
    ingress_root: str
    query_root: str
    crl_bucket: str
    events_root: str = "certbus.ev"  # where the log republishes what it stored, for core subscribers
    js_prefix: str = "certbus.js"  # where JetStream's API is imported into the other accounts

    @classmethod
    def of(cls, settings: CommonSettings) -> Names:
        """The names in `settings`."""
        return cls(
            stream=settings.stream,
            ingress_stream=settings.ingress_stream,
            subject_root=settings.subject_root,
            ingress_root=settings.ingress_root,
            query_root=settings.query_root,
            crl_bucket=settings.crl_bucket,
            events_root=settings.events_root,
            js_prefix=settings.js_prefix,
        )

    @property
    def object_stream(self) -> str:
        """The stream behind the CRL object store."""
        return f"OBJ_{self.crl_bucket}"


# --- what each role may do ------------------------------------------------------------------


def publishes(role: Role | Publisher, names: Names) -> list[str]:
    """The log subjects `role` may publish: those of the event types it is the publisher of."""
    return sorted(cls.filter(names.subject_root) for cls in EVENT_TYPES if cls.publisher == role)


def durables(service: Publisher, names: Names) -> list[tuple[str, str]]:
    """A service's durable consumers as (stream, durable name)."""
    streams = {"log": names.stream, "ingress": names.ingress_stream}
    return [(streams[kind], f"{service}-{purpose}") for purpose, kind in DURABLES[service]]


def rebuild_reader(service: Publisher, names: Names) -> tuple[str, str]:
    """The named reader with which a service reads back its own events when it rebuilds its database."""
    return names.stream, f"{service}-rebuild"


def jetstream_api(service: Publisher, names: Names) -> list[str]:
    """The JetStream API subjects (without the `$JS.API.` prefix) a service calls."""
    calls = [f"STREAM.INFO.{names.stream}", f"STREAM.INFO.{names.object_stream}"]
    # Every service publishes through its outbox, which reads back the message the log holds under
    # an event id it answered `duplicate` for (shared.runtime.outbox); enrollment also reads the
    # log by sequence when it rebuilds (has a request been answered?).
    calls.append(f"STREAM.MSG.GET.{names.stream}")
    # A service that lost its database deletes its durables on the log (they are made again from
    # sequence 1) and reads back its own events with a named reader (shared.runtime.rebuild).
    own = durables(service, names) + ([] if service == "audit" else [rebuild_reader(service, names)])
    for stream, durable in own:
        calls += [
            f"STREAM.INFO.{stream}",
            f"CONSUMER.INFO.{stream}.{durable}",
            f"CONSUMER.CREATE.{stream}.{durable}",
            f"CONSUMER.CREATE.{stream}.{durable}.>",
            f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"CONSUMER.MSG.NEXT.{stream}.{durable}",
            *([f"CONSUMER.DELETE.{stream}.{durable}"] if stream == names.stream and service != "audit" else []),
        ]
    if service == "signing":
        calls += [f"STREAM.MSG.GET.{names.object_stream}", f"STREAM.PURGE.{names.object_stream}"]
    if service in ("validation", "audit"):
        calls.append(f"STREAM.MSG.GET.{names.object_stream}")  # reading CRLs (shared.runtime.stream.read_object)
    if service == "audit":
        # Replay and verify read the whole log with consumers of their own (named, see
        # services/audit/replay.py); the other services' durables are denied to audit's user.
        calls += [
            f"CONSUMER.CREATE.{names.stream}.*",
            f"CONSUMER.CREATE.{names.stream}.*.>",
            f"CONSUMER.MSG.NEXT.{names.stream}.*",
            f"CONSUMER.DELETE.{names.stream}.*",
            f"CONSUMER.INFO.{names.stream}.*",
        ]
    return sorted(set(calls))


def acks(service: Publisher, names: Names) -> list[str]:
    """The acknowledgement subjects of a service's consumers."""
    subjects = [f"$JS.ACK.{stream}.{durable}.>" for stream, durable in durables(service, names)]
    if service == "audit":
        subjects.append(f"$JS.ACK.{names.stream}.*.>")
    return sorted(subjects)


def others_durables(service: Publisher, names: Names) -> list[tuple[str, str]]:
    """Every durable on the log that is not `service`'s own."""
    return [
        d
        for other in SERVICES
        if other != service
        for d in [*durables(other, names), *([rebuild_reader(other, names)] if other != "audit" else [])]
        if d[0] == names.stream
    ]


def queries_asked(role: Role, names: Names) -> list[str]:
    """The query subjects `role` may ask."""
    return sorted(
        f"{names.query_root}.{service}.{'>' if query == '*' else query}" for service, query in QUERIES.get(role, ())
    )


def heard(role: Role, names: Names) -> list[str]:
    """The event subjects `role` hears as core messages (in its own account: `<root>.<...>`)."""
    return sorted(f"{names.subject_root}.{pattern}" for pattern in HEARS.get(role, ()))


def template_identities() -> list[Identity]:
    """The identities of deploy/nats/accounts.conf: the services, the admin, one operator, one
    requester and the ACME service (a requester named `acme`: it publishes its orders' requests like
    any program), each with its public NKey read from the server's environment (`$<NAME>_NKEY`)."""
    named: list[tuple[str, Role]] = [(service, service) for service in SERVICES]
    named += [("admin", "admin"), ("operator", "operator"), ("requester", "requester"), ("acme", "requester")]
    return [Identity(name, role, f"${name.upper()}_NKEY") for name, role in named]


# --- rendering the server configuration ------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """A value the server reads from its environment (`$NAME`), for a deployment's template."""

    name: str


@dataclass
class _Account:
    users: list[dict[str, object]] = field(default_factory=list)
    exports: list[dict[str, object]] = field(default_factory=list)
    imports: list[dict[str, object]] = field(default_factory=list)
    jetstream: dict[str, object] | bool = False


@dataclass(frozen=True)
class Limits:
    """Account limits: JetStream storage for the log's account; connections for the others."""

    log_file_bytes: int = -1  # CERTBUS's file storage (-1: the server's)
    client_connections: int = 1000  # per client account (operators, requesters)
    service_connections: int = 64  # per service account (its replicas)
    max_payload: int = 1024 * 1024


def render(identities: Sequence[Identity], names: Names, limits: Limits | None = None) -> str:
    """The `accounts { ... }` block of a nats-server configuration for these identities."""
    limits = limits or Limits()
    _check(identities)
    accounts: dict[str, _Account] = {"CERTBUS": _Account(), **{ACCOUNTS[role]: _Account() for role in ROLES}}
    log = accounts["CERTBUS"]
    log.jetstream = {"max_file": limits.log_file_bytes, "max_mem": 0} if limits.log_file_bytes >= 0 else True

    def export(subject: str, to: Iterable[str], *, stream: bool = False, response: str | None = None) -> None:
        targets = sorted(set(to))
        if not targets:
            return
        entry: dict[str, object] = {"stream" if stream else "service": subject, "accounts": targets}
        if response:
            entry["response_type"] = response
        log.exports.append(entry)

    def use(
        account: str, subject: str, *, to: str | None = None, stream: bool = False, source: str = "CERTBUS"
    ) -> None:
        target: dict[str, object] = {"account": source, "subject": subject}
        entry: dict[str, object] = {"stream" if stream else "service": target}
        if to is not None and to != subject:
            entry["to"] = to
        accounts[account].imports.append(entry)

    # The admin: the whole JetStream API of the log's account (so even its answers are rewritten
    # on the way back, and cannot land in the log), and nothing else.
    export("$JS.API.>", [ACCOUNTS["admin"]], response="stream")
    use(ACCOUNTS["admin"], "$JS.API.>", to=f"{names.js_prefix}.>")
    # Events: each subject into the log from its one publisher's account.
    for publisher in PUBLISHER_ROLES:
        for subject in publishes(publisher, names):
            export(subject, [ACCOUNTS[publisher]])
            use(ACCOUNTS[publisher], subject)
    # Requests: requesters' ingress subjects (each user its own name only: see its permissions);
    # validation, alone in its account, imports only its own.
    export(f"{names.ingress_root}.*.*", [ACCOUNTS[role] for role in SENDS_REQUESTS])
    use(ACCOUNTS["requester"], f"{names.ingress_root}.*.*")
    use(ACCOUNTS["validation"], f"{names.ingress_root}.validation.*")
    # The services' JetStream API calls and acknowledgements, and signing's CRL objects.
    for service in SERVICES:
        account = ACCOUNTS[service]
        for call in jetstream_api(service, names):
            response = "stream" if ".MSG.NEXT." in call else None
            export(f"$JS.API.{call}", [account], response=response)
            use(account, f"$JS.API.{call}", to=f"{names.js_prefix}.{call}")
        for subject in acks(service, names):
            export(subject, [account])
            use(account, subject)
    export(f"$O.{names.crl_bucket}.>", [ACCOUNTS["signing"]])
    use(ACCOUNTS["signing"], f"$O.{names.crl_bucket}.>")
    # What clients hear: the log republishes what it stored under `events_root`.
    for listener in HEARS:
        for subject in heard(listener, names):
            republished = f"{names.events_root}.{subject}"
            export(republished, [ACCOUNTS[listener]], stream=True)
            use(ACCOUNTS[listener], republished, to=subject, stream=True)
    # Queries: each service exports its own; each asking role imports what it may ask.
    for service in SERVICES:
        askers = [ACCOUNTS[asker] for asker in QUERIES if any(s == service for s, _ in QUERIES[asker])]
        for asker, asked in QUERIES.items():
            everything = (service, "*") in asked  # then one import covers every query of the service
            for asked_service, query in asked:
                if asked_service != service or (everything and query != "*"):
                    continue
                subject = f"{names.query_root}.{service}.{'>' if query == '*' else query}"
                accounts[ACCOUNTS[asker]].imports.append(
                    {"service": {"account": ACCOUNTS[service], "subject": subject}}
                )
        if askers:
            accounts[ACCOUNTS[service]].exports.append(
                {"service": f"{names.query_root}.{service}.>", "accounts": sorted(set(askers))}
            )
    # Users.
    for identity in identities:
        accounts[ACCOUNTS[identity.role]].users.append(_user(identity, names))
    return _serialise(accounts, limits)


def _check(identities: Sequence[Identity]) -> None:
    seen: set[str] = set()
    for identity in identities:
        if identity.name in seen:
            raise ValueError(f"two identities are named {identity.name!r}")
        seen.add(identity.name)
    reserved = set(SERVICES) | {"admin"}
    for identity in identities:
        if identity.role in ("operator", "requester") and identity.name in reserved:
            raise ValueError(f"{identity.name!r} is a service's or the admin's name: choose another")


def _user(identity: Identity, names: Names) -> dict[str, object]:
    """A user entry: a service's needs no permissions (its account's imports are all it reaches),
    but admin, audit and the people's users do."""
    key: object = Var(identity.nkey[1:]) if identity.nkey.startswith("$") else identity.nkey
    user: dict[str, object] = {"nkey": key}
    inbox = f"_INBOX_{identity.name}.>"
    if identity.role == "admin":
        # Manages the streams through the imported API; its account imports nothing else.
        user["permissions"] = {
            "publish": {"allow": [f"{names.js_prefix}.>"]},
            "subscribe": {"allow": [inbox]},
        }
    elif identity.role == "audit":
        # Audit reads the log with consumers of its own; it may not touch another service's.
        denied = []
        for stream, durable in others_durables("audit", names):
            prefix = f"{names.js_prefix}.CONSUMER"
            denied += [f"{prefix}.*.{stream}.{durable}", f"{prefix}.*.{stream}.{durable}.>"]
            denied += [f"{prefix}.*.*.{stream}.{durable}", f"$JS.ACK.{stream}.{durable}.>"]
        user["permissions"] = {"publish": {"allow": [">"], "deny": sorted(denied)}}
    elif identity.role in ("operator", "requester"):
        allow = queries_asked(identity.role, names)
        if identity.role == "requester":
            allow.append(f"{names.ingress_root}.{identity.name}.*")
        else:
            allow += publishes("operator", names)
        user["permissions"] = {
            "publish": {"allow": sorted(allow)},
            "subscribe": {"allow": sorted([inbox, *heard(identity.role, names)])},
        }
    return user


def _serialise(accounts: dict[str, _Account], limits: Limits) -> str:
    lines = ["accounts {"]
    for name, account in accounts.items():
        lines.append(f"  {name} {{")
        if account.jetstream is True:
            lines.append("    jetstream: enabled")
        elif account.jetstream:
            lines.append(f"    jetstream: {_value(account.jetstream, 4)}")
        if name != "CERTBUS":
            is_client = name in ("OPERATORS", "REQUESTERS")
            connections = limits.client_connections if is_client else limits.service_connections
            lines.append(
                f"    limits: {_value({'max_connections': connections, 'max_payload': limits.max_payload}, 4)}"
            )
        for key in ("users", "exports", "imports"):
            items = getattr(account, key)
            lines.append(f"    {key}: [")
            lines += [f"      {_value(item, 6)}" for item in items]
            lines.append("    ]")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _value(value: object, indent: int) -> str:
    """A value in the server's configuration syntax (JSON-like; subjects always quoted, so a `$`
    never reads as a variable; a Var is a variable)."""
    if isinstance(value, Var):
        return f"${value.name}"
    if isinstance(value, dict):
        inner = ", ".join(f"{k}: {_value(v, indent)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v, indent) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))
