"""docker-compose.yml describes the cluster deploy/cluster.py renders: three NATS nodes, the log
replicated on each, every service in two replicas that know every node. (No Docker engine runs
here: the file is read as data, and `docker-compose config` checks it as Compose reads it.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.cluster import NATS_DIR, deployment_nodes
from deploy.local.devstack import ACME, SERVICES
from shared.base.settings import AcmeSettings
from shared.trust.accounts import template_identities

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
INIT_SQL = ROOT / "deploy" / "postgres" / "init.sql"
SECRETS_README = ROOT / "deploy" / "secrets" / "README.md"


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_each_nats_node_runs_the_configuration_rendered_for_it() -> None:
    services = _compose()["services"]
    nodes = deployment_nodes()
    assert sorted(name for name in services if name.startswith("nats-")) == [n.name for n in nodes]
    for node in nodes:
        assert services[node.name]["command"] == ["-c", f"/etc/nats/{node.name}.conf"]
        assert (NATS_DIR / f"{node.name}.conf").exists()
        routes = {k: v for k, v in services[node.name]["environment"].items() if re.fullmatch(r"NATS_ROUTE_\d+", k)}
        assert sorted(routes) == [f"NATS_ROUTE_{n.index}" for n in nodes]
        assert all(f"@{n.name}:6222" in routes[f"NATS_ROUTE_{n.index}"] for n in nodes)


def test_every_service_knows_every_node_and_runs_two_replicas_by_default() -> None:
    compose = _compose()
    nodes = [n.name for n in deployment_nodes()]
    for name in SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        assert env["CERTBUS_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes], name
        assert env["CERTBUS_STREAM_REPLICAS"] == str(len(nodes))
        replicas = re.fullmatch(r"\$\{\w+_REPLICAS:-(\d+)\}", str(service["deploy"]["replicas"]))
        assert replicas is not None and int(replicas.group(1)) == 2, service["deploy"]
        # Replicas share one identity and schema; no fixed instance name (each container's own is used).
        assert "CERTBUS_INSTANCE" not in env


def test_acme_runs_from_the_same_image_as_its_own_requester_with_its_own_schema_and_key_volume() -> None:
    compose = _compose()
    acme, enrollment = compose["services"][ACME], compose["services"]["enrollment"]
    assert (acme["image"], acme["build"]) == (enrollment["image"], enrollment["build"])
    env = acme["environment"]
    assert env["CERTBUS_SERVICE"] == ACME  # the image's entrypoint runs `python -m services.acme`
    assert (env["CERTBUS_IDENTITY"], env["CERTBUS_NATS_SEED_FILE"]) == (ACME, "/run/secrets/nkey-acme")
    assert acme["secrets"] == ["nkey-acme"]
    assert compose["secrets"]["nkey-acme"] == {"file": "./deploy/secrets/identities/acme.nk"}
    assert any(i.name == ACME and i.role == "requester" for i in template_identities())
    assert env["CERTBUS_DATABASE_URL"].startswith("postgresql://acme:${DB_ACME_PASSWORD:?")
    # Its provisioner key and its server certificate outlive the container, on a volume of its own.
    [volume] = acme["volumes"]
    name, mount = volume.split(":")
    assert name in compose["volumes"] and name not in {v.split(":")[0] for v in enrollment.get("volumes", [])}
    assert env["CERTBUS_ACME_PROVISIONER_KEY_FILE"].startswith(f"{mount}/")
    assert env["CERTBUS_ACME_TLS_DIR"].startswith(f"{mount}/")
    # ACME over HTTPS on 8446, published, listening beyond the container's loopback.
    assert (env["CERTBUS_ACME_HOST"], env["CERTBUS_ACME_PORT"]) == ("0.0.0.0", "8446")
    assert [str(p).rsplit(":", 1)[1] for p in acme["ports"]] == ["8446"]
    assert "depends_on" not in acme or set(acme["depends_on"]) >= {"postgres", "stream-init"}


def test_every_named_volume_the_image_mounts_is_a_directory_the_image_makes_for_its_user() -> None:
    """A new named volume takes the ownership of the image's directory it is mounted on; one the image
    lacks is mounted root-owned, and the service (uid 10001) cannot write its keys there."""
    compose = _compose()
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text().replace("\\\n", " ")
    made = re.search(r"mkdir -p ([^&]+)&& chown -R certbus:certbus /var/lib/certbus ", dockerfile)
    assert made is not None
    for name, service in compose["services"].items():
        if service.get("image") != compose["services"]["enrollment"]["image"]:
            continue
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in compose["volumes"]:
                assert target in made.group(1).split(), (name, volume)


def test_acmes_container_health_is_its_readiness_on_its_http_port() -> None:
    acme = _compose()["services"][ACME]
    assert acme["environment"]["CERTBUS_HTTP_PORT"] == "8445"
    test = acme["healthcheck"]["test"]
    assert test[0] == "CMD" and "http://127.0.0.1:8445/readyz" in " ".join(test)


def test_the_clis_health_asks_acmes_readiness_on_acmes_health_port_unless_told_acme_is_not_run() -> None:
    services = _compose()["services"]
    port = services[ACME]["environment"]["CERTBUS_HTTP_PORT"]
    url = services["cli"]["environment"]["CERTBUS_ACME_READYZ_URL"]
    assert url == f"${{CERTBUS_ACME_READYZ_URL-http://{ACME}:{port}/readyz}}"  # `-`: set empty, ACME is left out


def test_acmes_settings_parse_as_compose_gives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults the file interpolates make valid settings: TLS names and addresses are JSON
    lists, and the host clients are given is one ACME's certificate carries."""
    env = _compose()["services"][ACME]["environment"]
    for key, value in env.items():
        default = re.fullmatch(r"\$\{\w+:-(.*)\}", str(value), re.DOTALL)
        if default or "${" not in str(value):
            monkeypatch.setenv(key, default.group(1) if default else str(value))
    settings = AcmeSettings()
    host = settings.acme_base_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    assert host in [*settings.acme_tls_names, *settings.acme_tls_ips]
    assert settings.acme_port == 8446 and settings.http_port == 8445


@pytest.mark.parametrize("service", [*SERVICES, ACME])
def test_init_sql_gives_each_service_a_role_owning_its_schema_with_a_password_from_compose(service: str) -> None:
    sql = INIT_SQL.read_text()
    variable = f"CERTBUS_DB_{service.upper()}_PASSWORD"
    assert re.search(rf"^\\getenv {service}_password {variable}$", sql, re.MULTILINE), service
    assert re.search(rf"^CREATE ROLE {service} +LOGIN PASSWORD :'{service}_password';$", sql, re.MULTILINE)
    assert re.search(rf"^CREATE SCHEMA {service} +AUTHORIZATION {service};$", sql, re.MULTILINE)
    for grant in ("GRANT CONNECT, TEMPORARY ON DATABASE certbus TO ", "GRANT CREATE ON DATABASE certbus TO "):
        [line] = [line for line in sql.splitlines() if line.startswith(grant)]
        assert service in line.removeprefix(grant).rstrip(";").split(", "), (grant, service)
    postgres = _compose()["services"]["postgres"]["environment"]
    assert postgres[variable] == f"${{DB_{service.upper()}_PASSWORD:?see deploy/secrets/README.md}}"


def test_every_template_identity_is_known_to_every_nats_node_by_its_public_key_only() -> None:
    services = _compose()["services"]
    for node in deployment_nodes():
        env = services[node.name]["environment"]
        for identity in template_identities():
            variable = identity.nkey.removeprefix("$")
            assert env[variable] == f"${{{variable}:?see deploy/secrets/README.md}}", (node.name, variable)


def test_no_secret_is_written_in_the_file_and_the_secrets_readme_makes_every_one_it_asks_for() -> None:
    """Passwords and public keys come from the env file (`${NAME:?...}`), seeds from Docker secrets;
    the recipe in deploy/secrets/README.md makes each variable the file asks for."""
    compose = _compose()
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|NKEY|SEED|SECRET|PASSPHRASE", key) and not key.endswith("_FILE"):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (name, key, value)
            if key == "CERTBUS_DATABASE_URL":  # each service logs in as its own role, with its own password
                url = re.fullmatch(r"postgresql://(\w+):\$\{DB_(\w+)_PASSWORD:\?[^}]*\}@postgres:5432/certbus", value)
                assert url is not None and url.group(2) == url.group(1).upper(), (name, value)
            if key.endswith("_FILE") and ("SEED" in key or "PASSPHRASE" in key):
                assert str(value).startswith("/run/secrets/"), (name, key, value)
    readme = SECRETS_README.read_text()
    [loop] = re.findall(r"for name in ([A-Z_ ]+); do", readme)
    made = {f"{name}_PASSWORD" for name in loop.split()} | {i.nkey.removeprefix("$") for i in template_identities()}
    assert set(SECRET_VARS) <= made, set(SECRET_VARS) - made


# --- docker-compose itself (Debian's docker-compose package, installed by `make test`) -----------

SECRET_VARS = sorted(set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text())))


def _docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: `make test` installs it (apt-get install docker-compose)")
    return subprocess.run(
        [binary, "-f", str(COMPOSE), *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        cwd=COMPOSE.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_validates_the_file_and_resolves_cluster_mode() -> None:
    """`docker-compose config` accepts the file once its secrets are given, and what it resolves
    is cluster mode: the three nodes, PostgreSQL, the stream's set-up, five services in two
    replicas that each list every node, the CLI, and only volumes and secrets the file declares."""
    assert SECRET_VARS, "the file asks for no secret from the environment"
    done = _docker_compose("config", env={name: "placeholder" for name in SECRET_VARS})
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    nodes = [n.name for n in deployment_nodes()]
    assert sorted(resolved["services"]) == sorted([*nodes, "postgres", "stream-init", *SERVICES, ACME, "cli"])
    for name in SERVICES:
        service = resolved["services"][name]
        assert service["deploy"]["replicas"] == 2, name
        assert service["environment"]["CERTBUS_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes]
        assert set(service.get("depends_on", {})) >= {"postgres", "stream-init"}, name
    acme = resolved["services"][ACME]
    assert acme["deploy"]["replicas"] == 1 and acme["environment"]["CERTBUS_SERVICE"] == ACME
    assert set(acme["depends_on"]) >= {"postgres", "stream-init"}
    assert acme["environment"]["CERTBUS_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes]
    assert [(p["published"], p["target"]) for p in acme["ports"]] == [(8446, 8446)]
    declared = set(resolved.get("volumes", {}))
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            # Short syntax `source:target[:mode]`; a source that is a path is a bind mount.
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if not source.startswith(("/", ".")):
                assert source in declared, (name, volume)
        for secret in service.get("secrets", []):
            assert secret["source"] in resolved["secrets"], (name, secret)


def test_docker_compose_refuses_the_file_without_its_secrets() -> None:
    """Without the secrets, docker-compose refuses and says where they are described, rather than
    starting a cluster with empty passwords."""
    done = _docker_compose("config", "-q", env={})
    assert done.returncode != 0
    assert "deploy/secrets/README.md" in done.stderr
