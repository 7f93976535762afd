"""deploy.cluster: the docker-compose nodes and `make run CLUSTER=3`'s come from one definition."""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from deploy.cluster import NATS_DIR, Node, deployment_nodes, local_nodes, render_node
from deploy.local.devstack import nats_server_binary
from shared.base.settings import CommonSettings
from shared.trust.accounts import Identity, Names, render, template_identities
from shared.trust.identities import new_seed, public_key


@pytest.mark.parametrize("node", deployment_nodes(), ids=lambda n: n.name)
def test_the_committed_node_configurations_are_what_the_code_renders(node: Node) -> None:
    committed = (NATS_DIR / f"{node.name}.conf").read_text()
    assert committed == render_node(node), "run `python -m deploy.cluster`"


def test_every_node_routes_to_every_node_and_has_a_store_of_its_own(tmp_path: Path) -> None:
    nodes = local_nodes(tmp_path, [1001, 1002, 1003], [2001, 2002, 2003], "pw")
    assert [n.name for n in nodes] == ["nats-1", "nats-2", "nats-3"]
    assert len({n.store_dir for n in nodes}) == 3
    for node in nodes:
        text = render_node(node)
        assert re.findall(r"@127\.0\.0\.1:(\d+)", text) == ["2001", "2002", "2003"]
        assert f"server_name: {node.name}\n" in text


def test_local_and_deployment_nodes_differ_only_in_addresses_stores_and_secrets(tmp_path: Path) -> None:
    local = local_nodes(tmp_path, [1001, 1002, 1003], [2001, 2002, 2003], "pw")
    placed = {"client_listen", "cluster_listen", "store_dir", "routes", "route_password", "monitor_listen", "where"}
    for mine, theirs in zip(local, deployment_nodes(), strict=True):
        a, b = asdict(mine), asdict(theirs)
        differing = {k for k in a if a[k] != b[k]}
        # sync_always: the deployment's nodes share one Docker host OS and fsync every write.
        assert differing <= placed | {"sync_always"}, differing


def test_nats_server_accepts_the_local_cluster_nodes(tmp_path: Path) -> None:
    identities = [Identity(i.name, i.role, public_key(new_seed())) for i in template_identities()]
    (tmp_path / "accounts.conf").write_text(render(identities, Names.of(CommonSettings())))
    for node in local_nodes(tmp_path / "stores", [1001, 1002, 1003], [2001, 2002, 2003], "route-secret"):
        conf = tmp_path / f"{node.name}.conf"
        conf.write_text(render_node(node))
        result = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
