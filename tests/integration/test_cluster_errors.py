"""Cluster states are transient: a consumer backs off through them and goes on.

A Redis Cluster answers CLUSTERDOWN while a shard has no master, TRYAGAIN while a slot
migrates and READONLY to a write that reached a replica during a failover; redis-py's
cluster client raises ``SlotNotCoveredError`` / ``RedisClusterUnreachableError`` when no
node serves a slot. Some of these are error *replies* (``ResponseError``s): the read loop
must not take them for a lost consumer group, nor crash on them.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from redis.exceptions import (
    ClusterCrossSlotError,
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from structlog.testing import capture_logs

from bus import TRANSIENT, Delivery, Keys, Publisher, StreamConsumer
from bus.connection import RedisClient
from bus.errors import is_no_such_key
from envelope import PacketEnvelope, Signer, Verifier
from tests.conftest import FAST, wait_for
from tests.integration.ledger import Work

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster

CLUSTER_STATES = [
    ClusterDownError("CLUSTERDOWN The cluster is down"),
    MasterDownError("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    ReadOnlyError("READONLY You can't write against a read only replica."),
    SlotNotCoveredError("Slot 1234 is not covered by the cluster."),
    RedisClusterUnreachableError("Redis Cluster cannot be connected."),
]


def test_cluster_states_are_transient_and_a_cross_slot_command_is_not() -> None:
    assert all(isinstance(exc, TRANSIENT) for exc in CLUSTER_STATES)
    # a command whose keys sit in two slots is a bug to fix, not a state to wait out
    assert not isinstance(
        ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"), TRANSIENT
    )


async def test_a_consumer_backs_off_through_cluster_states_and_then_handles_what_waits(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    consumer = StreamConsumer(
        redis,
        keys,
        group="g",
        consumer="c-0",
        streams=["test"],
        handler=handler,
        verifier=verifier,
        policy=FAST,
    )
    read = consumer._xreadgroup
    states = list(CLUSTER_STATES)
    reads_in_trouble = 0

    async def through_a_failover(count: int) -> Any:
        nonlocal reads_in_trouble
        if states:
            reads_in_trouble += 1
            raise states.pop(0)
        return await read(count)

    consumer._xreadgroup = through_a_failover  # type: ignore[method-assign]
    envelope = PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/p", data=Work(n=1).model_dump()
    )
    await Publisher(redis, keys, signer).publish(envelope, "test")
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await wait_for(lambda: handled == [envelope.id], timeout=60)
            consumer.stop()
    unavailable = [e for e in logs if e["event"] == "consumer.redis_unavailable"]
    # one backoff per failed read (no hot loop), each longer than the one before
    assert reads_in_trouble == len(CLUSTER_STATES) == len(unavailable)
    waits = [e["retry_in_s"] for e in unavailable]
    assert waits == sorted(waits) and waits[-1] > waits[0]
    assert not any(e["event"] == "consumer.group_missing" for e in logs)


async def test_only_a_missing_key_reads_as_missing(redis: RedisClient, keys: Keys) -> None:
    with pytest.raises(ResponseError) as missing:
        await redis.xinfo_stream(keys.stream("nothing-here"))
    assert is_no_such_key(missing.value)
    assert not is_no_such_key(ClusterDownError("CLUSTERDOWN The cluster is down"))
