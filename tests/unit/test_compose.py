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
from deploy.local.devstack import SERVICES

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


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
    assert sorted(resolved["services"]) == sorted([*nodes, "postgres", "stream-init", *SERVICES, "cli"])
    for name in SERVICES:
        service = resolved["services"][name]
        assert service["deploy"]["replicas"] == 2, name
        assert service["environment"]["CERTBUS_NATS_URL"].split(",") == [f"nats://{n}:4222" for n in nodes]
        assert set(service.get("depends_on", {})) >= {"postgres", "stream-init"}, name
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
