"""docker-compose.yml describes the cluster deploy/cluster.py renders: three NATS nodes, the log
replicated on each, every service in two replicas that know every node. (No Docker engine runs
here: the file is read as data.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
