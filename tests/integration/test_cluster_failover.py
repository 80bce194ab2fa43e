"""Failover on a real local Redis Cluster (3 masters + 3 replicas), with agents as processes.

* a master is killed (SIGKILL) under steady traffic: its replica takes over; nothing that was
  published (with ``replicas=1``: acknowledged by the replica) is lost, and no effect is
  applied twice, counted by envelope id;
* a whole shard (master and replica) is killed: every agent stays up, backs off without a
  hot loop (its "redis unavailable" log lines are counted), and catches up once the nodes
  are back;
* the slot of a stream is moved to another master (resharding) under traffic: nothing lost.

Each test has its own cluster: killing nodes must not disturb any other test.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bus import TRANSIENT, Keys, NotReplicated, Publisher, as_text, open_client
from bus.connection import RedisClient, slot_of
from envelope import PacketEnvelope, Signer
from l9.devcluster import ClusterEndpoints, LocalCluster
from tests.conftest import AgentProcess, wait_for
from tests.integration.ledger import Work, attempts_key, effects_count_key, effects_key

pytestmark = pytest.mark.integration

#: Only catches a hang: a failover here takes a few seconds (node timeout 2 s), and agents
#: back off up to 5 s between tries.
SETTLE_S = 180


def work(n: int) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/publisher", data=Work(n=n).model_dump()
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LocalCluster, ClusterEndpoints]]:
    local = LocalCluster(tmp_path / "cluster-home")
    try:
        yield local, local.up()
    finally:
        local.down()


@pytest.fixture
async def client(cluster: tuple[LocalCluster, ClusterEndpoints]) -> AsyncIterator[RedisClient]:
    c = await open_client(cluster[1].redis_url)
    yield c
    await c.aclose()


def node_of(client: RedisClient, key: str) -> str:
    """``host:port`` of the master serving ``key`` now."""
    return str(client.nodes_manager.get_node_from_slot(slot_of(key)).name)  # type: ignore[union-attr]


def namespace_apart(client: RedisClient, seed: str) -> Keys:
    """A namespace whose ``test`` stream and ledger keys are on different masters (killing the
    stream's master must not take the ledger's record of effects with it)."""
    for i in range(1000):
        keys = Keys(f"{seed}{i}")
        if node_of(client, keys.stream("test")) != node_of(client, effects_key(keys)):
            return keys
    raise AssertionError("no namespace with the stream and the ledger on different masters")


def pid_of(local: LocalCluster, address: str) -> int:
    nodes: Any = local.status()["nodes"]
    (pid,) = [n["pid"] for n in nodes if f"127.0.0.1:{n['port']}" == address]
    assert isinstance(pid, int)
    return pid


def role_of(address: str) -> str:
    """``master`` or ``slave``, as the node at ``address`` says (``unreachable`` if it is down)."""
    host, port = address.split(":")
    try:
        with redis.Redis(host=host, port=int(port), socket_timeout=5, socket_connect_timeout=5) as node:
            return str(node.info("replication")["role"])
    except redis.RedisError:
        return "unreachable"


def replica_of(local: LocalCluster, master: str) -> str:
    nodes: Any = local.status()["nodes"]
    (replica,) = [f"127.0.0.1:{n['port']}" for n in nodes if n["role"] == "replica" and n["master"] == master]
    return replica


@pytest.fixture
def start_agent(
    agent_env: dict[str, str], tmp_path: Path, cluster: tuple[LocalCluster, ClusterEndpoints]
) -> Iterator[Callable[..., AgentProcess]]:
    procs: list[AgentProcess] = []

    def start(spec: str, keys: Keys, **env: str) -> AgentProcess:
        proc = AgentProcess(
            spec,
            {
                **agent_env,
                "REDIS_URL": cluster[1].redis_url,
                "L9_NAMESPACE": keys.namespace,
                "L9_PUBLISH_REPLICAS": "1",
                **env,
            },
            tmp_path / f"agent-{len(procs)}.log",
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()


def started(agent: AgentProcess) -> bool:
    """Its delivery loop runs (the per-entry or the batch one)."""
    return any(e.get("event") in ("consumer.started", "batch_consumer.started") for e in agent.log_events())


async def publish_until_accepted(publisher: Publisher, envelope: PacketEnvelope) -> int:
    """Publish ``envelope``, again after every failure (the same envelope: the ledger applies
    it once by its id); the number of failed tries."""
    failures = 0
    while True:
        try:
            await publisher.publish(envelope, "test")
            return failures
        except (*TRANSIENT, NotReplicated):
            failures += 1
            await asyncio.sleep(0.1)


async def settled(client: RedisClient, keys: Keys, ids: set[str]) -> bool:
    try:
        return {as_text(k) for k in await client.hkeys(effects_key(keys))} >= ids
    except TRANSIENT:
        return False


async def assert_each_effect_once(client: RedisClient, keys: Keys, ids: set[str]) -> None:
    recorded = {as_text(k) for k in await client.hkeys(effects_key(keys))}
    assert recorded == ids, f"lost: {len(ids - recorded)}, unknown: {len(recorded - ids)}"
    assert int(await client.get(effects_count_key(keys)) or 0) == len(ids)  # applied once each


async def test_a_master_killed_under_traffic_fails_over_and_loses_nothing(
    cluster: tuple[LocalCluster, ClusterEndpoints],
    client: RedisClient,
    start_agent: Callable[..., AgentProcess],
    signer: Signer,
) -> None:
    local, _ = cluster
    keys = namespace_apart(client, "fo")
    ledger = start_agent("tests.integration.ledger:LedgerAgent", keys)
    await wait_for(lambda: started(ledger), timeout=SETTLE_S)
    publisher = Publisher(client, keys, signer, replicas=1)
    master = node_of(client, keys.stream("test"))
    replica = replica_of(local, master)
    envelopes = [work(i) for i in range(240)]

    async def supervisor() -> None:
        """Kill the master, and once its replica took over, start it again (as a process
        supervisor would): it rejoins as the replica a publish with ``replicas=1`` waits for."""
        os.kill(pid_of(local, master), signal.SIGKILL)
        await wait_for(lambda: role_of(replica) == "master", timeout=SETTLE_S)
        await asyncio.to_thread(local.up)

    failures, supervising = 0, None
    for i, envelope in enumerate(envelopes):
        if i == 80:
            supervising = asyncio.create_task(supervisor())
        failures += await publish_until_accepted(publisher, envelope)
        await asyncio.sleep(0.005)  # steady traffic, not one burst
    assert supervising is not None
    await supervising
    ids = {e.id for e in envelopes}
    await wait_for(lambda: settled(client, keys, ids), timeout=SETTLE_S)
    assert node_of(client, keys.stream("test")) == replica, "the replica took over the stream's slot"
    assert failures > 0, "the kill happened under traffic: some publishes had to wait for the failover"
    await assert_each_effect_once(client, keys, ids)
    tries = await client.hgetall(attempts_key(keys))
    assert set(tries) >= {i.encode() for i in ids}
    assert ledger.proc.poll() is None, "the agent stayed up through the failover"
    assert ledger.terminate() == 0


async def test_a_whole_shard_down_keeps_every_agent_up_backing_off_then_catching_up(
    cluster: tuple[LocalCluster, ClusterEndpoints],
    client: RedisClient,
    start_agent: Callable[..., AgentProcess],
    signer: Signer,
    admin_dsn: str,
) -> None:
    local, _ = cluster
    keys = namespace_apart(client, "sd")
    agents = [
        start_agent("tests.integration.ledger:LedgerAgent", keys),
        start_agent("sympy", keys),
        start_agent("auditor", keys, DATABASE_URL=admin_dsn),
    ]
    for agent in agents:
        await wait_for(lambda: started(agent), timeout=SETTLE_S)  # noqa: B023 (awaited at once)
    publisher = Publisher(client, keys, signer, replicas=1)
    before = [work(i) for i in range(30)]
    for envelope in before:
        await publisher.publish(envelope, "test")
    await wait_for(lambda: settled(client, keys, {e.id for e in before}), timeout=SETTLE_S)

    master = node_of(client, keys.stream("test"))
    replica = replica_of(local, master)
    for address in (master, replica):
        os.kill(pid_of(local, address), signal.SIGKILL)
    marks = [len(a.log_events()) for a in agents]
    await asyncio.sleep(12)  # the cluster notices (node timeout 2 s) and stays down meanwhile
    for agent, mark in zip(agents, marks, strict=True):
        assert agent.proc.poll() is None, (
            f"{agent.log_path.name} exited: {agent.log_path.read_text()[-2000:]}"
        )
        lines = [e for e in agent.log_events()[mark:] if "unavailable" in str(e.get("event"))]
        # a few loops per agent, each backing off 0.1 s doubling to 5 s: dozens at most, not a hot loop
        assert 1 <= len(lines) < 80, f"{agent.log_path.name}: {len(lines)} unavailable lines in 12 s"

    local.up()  # the two nodes come back with their data (AOF)
    after = [work(i) for i in range(30, 60)]
    for envelope in after:
        await publish_until_accepted(publisher, envelope)
    ids = {e.id for e in before + after}
    await wait_for(lambda: settled(client, keys, ids), timeout=SETTLE_S)
    await assert_each_effect_once(client, keys, ids)
    for agent in agents:
        assert agent.proc.poll() is None
        assert agent.terminate() == 0


def node_id(address: str) -> str:
    host, port = address.split(":")
    with redis.Redis(host=host, port=int(port), socket_timeout=10) as node:
        return str(node.execute_command("CLUSTER MYID").decode())


def move_slot(slot: int, source: str, target: str, masters: list[str]) -> int:
    """Reshard: move ``slot`` from ``source`` to ``target`` as ``redis-cli --cluster reshard``
    does (IMPORTING / MIGRATING, MIGRATE of every key, SETSLOT NODE on every master); the
    number of keys moved."""
    src_id, dst_id = node_id(source), node_id(target)
    th, tp = target.split(":")
    sh, sp = source.split(":")
    moved = 0
    with (
        redis.Redis(host=th, port=int(tp), socket_timeout=10) as dst,
        redis.Redis(host=sh, port=int(sp), socket_timeout=10) as src,
    ):
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while batch := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10):
            src.execute_command("MIGRATE", th, int(tp), "", 0, 10_000, "KEYS", *batch)
            moved += len(batch)
    for address in masters:
        h, p = address.split(":")
        with redis.Redis(host=h, port=int(p), socket_timeout=10) as node:
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    return moved


async def test_moving_a_streams_slot_to_another_master_under_traffic_loses_nothing(
    cluster: tuple[LocalCluster, ClusterEndpoints],
    client: RedisClient,
    start_agent: Callable[..., AgentProcess],
    signer: Signer,
) -> None:
    local, _ = cluster
    keys = namespace_apart(client, "rs")
    ledger = start_agent("tests.integration.ledger:LedgerAgent", keys)
    publisher = Publisher(client, keys, signer)
    envelopes = [work(i) for i in range(300)]
    slot = slot_of(keys.stream("test"))
    source = node_of(client, keys.stream("test"))
    nodes: Any = local.status()["nodes"]
    masters = [f"127.0.0.1:{n['port']}" for n in nodes if n["role"] == "master"]
    target = next(m for m in masters if m != source)

    async def traffic() -> None:
        for envelope in envelopes:
            await publish_until_accepted(publisher, envelope)
            await asyncio.sleep(0.01)

    publishing = asyncio.create_task(traffic())
    await wait_for(lambda: settled(client, keys, {e.id for e in envelopes[:50]}), timeout=SETTLE_S)
    moved = await asyncio.to_thread(move_slot, slot, source, target, masters)
    await publishing
    ids = {e.id for e in envelopes}
    await wait_for(lambda: settled(client, keys, ids), timeout=SETTLE_S)
    assert moved >= 2, "the stream and its index moved with the slot"
    assert node_of(client, keys.stream("test")) == target
    await assert_each_effect_once(client, keys, ids)
    assert ledger.proc.poll() is None
    assert ledger.terminate() == 0
