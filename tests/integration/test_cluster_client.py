"""The bus on a Redis Cluster (run with ``L9_TEST_REDIS=cluster``, the second pass of
``make test``): the client and its connections, ``l9 status``'s shards, publishes that wait
for a replica, and a handler's envelopes to streams in other slots than its entry's, which
are published before the entry's MULTI/EXEC (a transaction cannot span slots)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from redis import Redis as SyncRedis
from redis.exceptions import AskError, ResponseError
from structlog.testing import capture_logs

from bus import HiredisPackingConnection, Keys, NotReplicated, Publisher, is_cluster, partition_of
from bus.connection import RedisClient, execute_many, slot_of
from envelope import Signer, Verifier
from l9.status import collect_status
from tests.conftest import wait_for
from tests.integration.test_hot_path import FANNED, FanOut, fan_out, fanned, pending, runtime, work

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


@pytest.fixture(autouse=True)
def on_a_cluster(redis: RedisClient) -> None:
    if not is_cluster(redis):
        pytest.skip("cross-slot emits are a Redis Cluster matter (run with L9_TEST_REDIS=cluster)")


async def test_emits_to_another_slot_are_published_first_and_a_refused_one_leaves_the_entry_pending(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    assert slot_of(keys.stream(FANNED)) != slot_of(keys.stream("test"))
    agent = FanOut(runtime(redis, keys, signer, verifier))
    await Publisher(redis, keys, signer).publish(work(1), "test")
    await redis.set(keys.stream(FANNED), "not a stream")  # the XADDs there are refused (WRONGTYPE)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            consumer = fan_out(redis, keys, verifier, agent)
            tg.start_soon(consumer.run)
            await consumer.wait_started()
            await wait_for(lambda: any(e["event"] == "consumer.emit_failed" for e in logs), timeout=60)
            assert await pending(redis, keys) == 1, "an entry whose emits were refused is not acked"
            await redis.delete(keys.stream(FANNED))

            async def drained() -> bool:
                return await pending(redis, keys) == 0

            await wait_for(drained, timeout=60)
            consumer.stop()
    failed = next(e for e in logs if e["event"] == "consumer.emit_failed")
    assert "WRONGTYPE" in str(failed["error"]) and "handled again" in str(failed["hint"])
    last = str(agent.attempts[-1])
    assert len(agent.attempts) >= 2
    assert sorted((p.text, p.by) for p in await fanned(redis, keys, verifier)) == [
        ("1.0", last),
        ("1.1", last),
    ]


async def test_every_node_of_the_cluster_client_packs_commands_with_hiredis(redis: RedisClient) -> None:
    await Publisher(redis, Keys("x"), None).publish_many([], "test")  # nothing: no round trip
    nodes = redis.get_nodes()  # type: ignore[union-attr]
    assert len(nodes) == 6
    assert all(node.connection_class is HiredisPackingConnection for node in nodes)


async def test_status_lists_the_shards_and_where_each_stream_lives(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    publisher = Publisher(redis, keys, signer)
    for name in ("plan", "generate", "enforce"):
        await publisher.publish(work(1), name)
    status = await collect_status(redis, keys)
    assert status["redis"]["mode"] == "cluster"
    shards = status["redis"]["shards"]
    assert len(shards) == 3 and all(len(s["replicas"]) == 1 for s in shards)
    covered = sorted(slot for s in shards for first, last in s["slots"] for slot in range(first, last + 1))
    assert covered == list(range(16384)) and sum(s["slot_count"] for s in shards) == 16384
    masters = {s["master"] for s in shards}
    for stream in status["streams"]:
        key = keys.stream(stream["name"])
        assert stream["slot"] == slot_of(key) and stream["partition"] == partition_of(stream["name"])
        assert stream["node"] in masters
        owner = next(s for s in shards if any(a <= stream["slot"] <= b for a, b in s["slots"]))
        assert stream["node"] == owner["master"]


async def test_a_publish_asking_for_a_replica_returns_once_the_replica_has_it(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    publisher = Publisher(redis, keys, signer, replicas=1)
    ids = await publisher.publish_many([work(1), work(2)], "test")
    assert len(ids) == 2 and await redis.xlen(keys.stream("test")) == 2
    with pytest.raises(NotReplicated, match="acknowledged by 1 of the 2 replica"):
        await Publisher(redis, keys, signer, replicas=2, replica_timeout_ms=50).publish(work(3), "test")


def _node(address: str) -> SyncRedis:
    host, port = address.split(":")
    return SyncRedis(host=host, port=int(port), socket_timeout=10)


async def test_execute_many_follows_ask_while_a_slot_migrates(redis: RedisClient, keys: Keys) -> None:
    cluster: Any = redis
    key = keys.stream("asked")
    await execute_many(cluster, [("XADD", key, "*", "n", "1")])
    slot = slot_of(key)
    source = cluster.nodes_manager.get_node_from_slot(slot).name
    target = next(n.name for n in cluster.get_primaries() if n.name != source)
    masters = [n.name for n in cluster.get_primaries()]
    with _node(source) as src, _node(target) as dst:
        src_id, dst_id = (n.execute_command("CLUSTER MYID").decode() for n in (src, dst))
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        try:
            host, port = target.split(":")
            while batch := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                src.execute_command("MIGRATE", host, int(port), "", 0, 10_000, "KEYS", *batch)
            # the key is on the target now; the source answers ASK for it until the slot is moved
            with pytest.raises(AskError) as asked:
                src.xadd(key, {"n": "x"})
            assert type(asked.value) is AskError, "ASK, not MOVED: the slot is migrating"
            replies = await execute_many(cluster, [("XADD", key, "*", "n", "2"), ("XLEN", key)])
            assert not any(isinstance(r, ResponseError) for r in replies), replies
            assert replies[1] == 2, "both entries on the target: the second went there after ASKING"
        finally:
            for address in masters:
                with _node(address) as node:
                    node.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    assert await cluster.xlen(key) == 2
