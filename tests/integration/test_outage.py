"""Redis going away under a running agent: it backs off, survives, and catches up."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from bus import Delivery, Keys, Publisher, StreamConsumer, connect
from bus.connection import RedisClient
from envelope import Signer, Verifier
from tests.conftest import FAST, AgentProcess, wait_for
from tests.integration.own_redis import OwnRedis
from tests.integration.test_agents import effects, work

pytestmark = pytest.mark.integration


async def test_agent_survives_redis_outage_and_catches_up(
    own_redis: OwnRedis, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    proc = spawn("tests.integration.ledger:LedgerAgent", env={"REDIS_URL": own_redis.url})
    client: RedisClient = connect(own_redis.url)
    try:
        publisher = Publisher(client, keys, signer)
        await publisher.publish_many([work(i) for i in range(10)])
        await wait_for(lambda: _at_least(client, keys, 10))
        own_redis.stop()
        await anyio.sleep(2.0)  # the agent keeps trying, with backoff
        assert proc.proc.poll() is None, "the agent died while Redis was away"
        own_redis.start()
        await client.aclose()
        client = connect(own_redis.url)
        publisher = Publisher(client, keys, signer)
        await publisher.publish_many([work(i) for i in range(10, 20)])
        await wait_for(lambda: _at_least(client, keys, 20), timeout=120)
        outages = [e for e in proc.log_events() if e.get("event") == "consumer.redis_unavailable"]
        assert 1 <= len(outages) <= 30, f"{len(outages)} retries in ~2 s: not backing off"
        assert proc.terminate() == 0
    finally:
        await client.aclose()


async def _at_least(client: RedisClient, keys: Keys, n: int) -> bool:
    return await effects(client, keys) >= n


async def test_a_consumer_started_while_redis_is_away_waits_for_it_then_consumes(
    own_redis: OwnRedis, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    own_redis.stop()
    client: RedisClient = connect(own_redis.url)
    consumer = StreamConsumer(
        client,
        keys,
        group="g",
        consumer="c-0",
        streams=["test"],
        handler=handler,
        verifier=verifier,
        policy=FAST,
    )
    try:
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer.run)
                await wait_for(
                    lambda: any(e["event"] == "consumer.redis_unavailable" for e in logs), timeout=60
                )
                own_redis.start()
                await consumer.wait_started()
                envelope = work(1)
                await Publisher(client, keys, signer).publish(envelope, "test")
                await wait_for(lambda: handled == [envelope.id], timeout=60)
                consumer.stop()
        waits = [e for e in logs if e["event"] == "consumer.redis_unavailable"]
        events = [e["event"] for e in logs]
        assert waits[0]["error"]
        assert events.index("consumer.redis_unavailable") < events.index("consumer.started")
        assert 1 <= len(waits) <= 30, f"{len(waits)} tries while Redis was away: not backing off"
    finally:
        await client.aclose()


def waited(logs: Sequence[Mapping[str, Any]]) -> bool:
    return any(e["event"] == "consumer.redis_unavailable" for e in logs)
