"""The local Redis Cluster against real servers: 3 masters + 3 replicas from the redis-server wheel."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from l9.devcluster import ClusterEndpoints, LocalCluster
from l9.devstack import EmbeddedStack, StackError
from tests.conftest import run_l9

pytestmark = pytest.mark.integration


def _node(address: str) -> redis.Redis:
    host, port = address.split(":")
    return redis.Redis(host=host, port=int(port), socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def _client(ep: ClusterEndpoints) -> RedisCluster:
    return RedisCluster.from_url(ep.redis_url, socket_connect_timeout=5)


def _running(pid: object) -> bool:
    try:
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _nodes(cluster: LocalCluster) -> list[dict[str, Any]]:
    nodes = cluster.status()["nodes"]
    assert isinstance(nodes, list)
    return nodes


def _keys_on_every_master(client: RedisCluster) -> dict[str, str]:
    """Key -> the master (``host:port``) holding it: one key per master at least."""
    owners: dict[str, str] = {}
    for i in range(200):
        key = f"devcluster:{i}"
        owners.setdefault(client.get_node_from_key(key).name, key)  # type: ignore[no-untyped-call]
    return {key: node for node, key in owners.items()}


def _graph(client: RedisCluster, query: str) -> Any:
    return client.execute_command("GRAPH.QUERY", "devcluster:graph", query)  # type: ignore[no-untyped-call]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "home")
    try:
        yield c
    finally:
        c.down()


def test_cluster_lifecycle_reuse_and_persistence(cluster: LocalCluster) -> None:
    ep = cluster.up()
    status = cluster.status()
    assert status["state_ok"] is True and status["running"] is True
    assert ep.redis_url == f"redis://{ep.nodes[0]}/0" and len(ep.nodes) == 6
    nodes = _nodes(cluster)
    masters = [n for n in nodes if n["role"] == "master"]
    replicas = [n for n in nodes if n["role"] == "replica"]
    assert len(masters) == 3 and len(replicas) == 3
    assert sorted(r["master"] for r in replicas) == sorted(f"127.0.0.1:{m['port']}" for m in masters)
    slots = [s for m in masters for first, last in m["slots"] for s in range(first, last + 1)]
    assert sorted(slots) == list(range(16384))  # every slot, each on one master
    assert all(n["cluster_state"] == "ok" and n["running"] for n in nodes)

    for address in ep.nodes:  # the graph module on every node, asked directly
        node = _node(address)
        assert any(m[b"name"] == b"graph" for m in node.module_list()), address
        node.close()

    client = _client(ep)
    owners = _keys_on_every_master(client)
    assert sorted(owners.values()) == sorted(f"127.0.0.1:{m['port']}" for m in masters)
    for key in owners:
        assert client.set(key, f"value of {key}")
    assert [client.get(key) for key in owners] == [f"value of {key}".encode() for key in owners]
    assert _graph(client, "CREATE (:N {v: 7}) RETURN 1")[1] == [[1]]  # routed to the key's master
    # the replicas are visible to cluster clients (redis lists them once they replicated a byte)
    assert len(client.get_replicas()) == 3  # type: ignore[no-untyped-call]
    client.close()

    # A second up() reuses the running nodes: same ports, same processes.
    assert cluster.up() == ep
    assert [(n["port"], n["pid"]) for n in _nodes(cluster)] == [(n["port"], n["pid"]) for n in nodes]
    state = json.loads((cluster.home / "cluster" / "cluster.json").read_text())
    assert state["ports"] == [int(a.split(":")[1]) for a in ep.nodes]

    assert cluster.down() is True
    assert not any(_running(n["pid"]) for n in nodes)
    after = cluster.status()
    assert after["running"] is False and after["state_ok"] is False
    assert cluster.down() is False

    # Back up: the same nodes on the same ports re-form the cluster from nodes.conf, data kept.
    assert cluster.up() == ep
    again = _nodes(cluster)
    assert [n["port"] for n in again] == [n["port"] for n in nodes]
    assert not {n["pid"] for n in again} & {n["pid"] for n in nodes}  # new processes
    assert sorted((n["role"], n["master"], n["slots"]) for n in again) == sorted(
        (n["role"], n["master"], n["slots"]) for n in nodes
    )
    client = _client(ep)
    assert [client.get(key) for key in owners] == [f"value of {key}".encode() for key in owners]
    assert _graph(client, "MATCH (n:N) RETURN n.v")[1] == [[7]]
    client.close()


def test_concurrent_up_forms_one_cluster(cluster: LocalCluster) -> None:
    script = (
        "import json, sys; from pathlib import Path; from l9.devcluster import LocalCluster; "
        "c = LocalCluster(Path(sys.argv[1])); ep = c.up(); "
        "print(json.dumps([ep.nodes, [n['pid'] for n in c.status()['nodes']]]))"
    )
    cmd = [sys.executable, "-c", script, str(cluster.home)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out in outputs)
    assert first == second and None not in first[1] and len(first[1]) == 6


def test_another_shape_in_the_same_home_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    cluster._ports()  # remembers the ports of a 3 x 1 cluster, starts nothing
    with pytest.raises(StackError, match=r"3 masters x 1 replicas, not 3 x 2"):
        LocalCluster(cluster.home, replicas=2).up()
    assert cluster.down() is False


def _sql(url: str, sql: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def test_dev_cli_with_cluster(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("L9_")}
    env.update(L9_HOME=str(home), L9_LOG_LEVEL="warning", COLUMNS="400")
    try:
        before = run_l9("dev", "status", env=env)
        assert before.returncode == 0, before.stderr
        assert "cluster" not in json.loads(before.stdout)  # no cluster: today's output

        up = run_l9("dev", "up", "--cluster", env=env, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        urls = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
        client = RedisCluster.from_url(urls["REDIS_URL"])
        assert client.ping() is True
        client.close()
        assert _sql(urls["DATABASE_URL"], "SELECT current_database()") == "l9"

        shown = run_l9("dev", "status", env=env)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["postgres"]["running"] is True and status["redis"]["running"] is False
        assert status["cluster"]["state_ok"] is True and status["cluster"]["redis_url"] == urls["REDIS_URL"]
        pids = [n["pid"] for n in status["cluster"]["nodes"]]
        assert len(pids) == 6 and all(_running(pid) for pid in pids)

        down = run_l9("dev", "down", env=env)
        assert down.returncode == 0, down.stderr
        assert "stopped" in down.stdout
        assert not any(_running(pid) for pid in pids)
        gone = json.loads(run_l9("dev", "status", env=env).stdout)
        assert gone["cluster"]["running"] is False and gone["postgres"]["running"] is False
    finally:
        LocalCluster(home).down()
        EmbeddedStack(home).down()
