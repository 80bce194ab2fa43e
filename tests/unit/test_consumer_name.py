"""Consumer names: a claim is the heartbeat key, and it is held while the agent starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import fakeredis
import pytest

from agents import Agent, Runtime
from bus import ConsumerNameTaken, DeliveryPolicy, Keys, claim_consumer_name, hold_consumer_name
from bus.connection import RedisClient
from envelope import Signer, Verifier
from l9.start import _serve

#: Long enough for a heartbeat every third of it to land on a loaded machine (two busy loops
#: beside the suite delayed one past 300 ms).
TTL_MS = 1500
KEYRING = {"k": b"consumer-name-test-key-0123456789"}


@pytest.fixture
async def redis() -> AsyncIterator[RedisClient]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


async def test_a_claim_lapses_without_a_holder_and_the_name_is_given_again(redis: RedisClient) -> None:
    keys = Keys("t")
    assert await claim_consumer_name(redis, keys, "slow", TTL_MS) == "slow-0"
    assert await claim_consumer_name(redis, keys, "slow", TTL_MS) == "slow-1"
    with pytest.raises(ConsumerNameTaken, match="'slow-0' is held by a live process"):
        await claim_consumer_name(redis, keys, "slow", TTL_MS, instance="0")
    await anyio.sleep(TTL_MS / 1000 * 2)
    assert await claim_consumer_name(redis, keys, "slow", TTL_MS) == "slow-0"


async def test_a_held_name_outlives_its_ttl_and_is_not_given_to_another_process(
    redis: RedisClient,
) -> None:
    keys = Keys("t")
    name = await claim_consumer_name(redis, keys, "slow", TTL_MS)
    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_consumer_name, redis, keys, name, TTL_MS)
        await anyio.sleep(TTL_MS / 1000 * 4)
        assert await claim_consumer_name(redis, keys, "slow", TTL_MS) == "slow-1"
        tg.cancel_scope.cancel()


class SlowStart(Agent):
    name = "slow"
    consumes = ("s",)

    async def on_start(self) -> None:
        await anyio.sleep(TTL_MS / 1000 * 4)


class FirstBeat:
    """What _serve needs of a consumer; ``run`` records whether the name was still claimed."""

    def __init__(self, redis: RedisClient, keys: Keys, name: str) -> None:
        self.redis, self.keys, self.consumer = redis, keys, name
        self.policy = DeliveryPolicy(heartbeat_ms=TTL_MS // 3)
        self.in_flight: dict[Any, float] = {}
        self.stopping = False
        self.streams = ("s",)
        self.claimed_at_run: bool | None = None

    async def run(self) -> None:
        self.claimed_at_run = bool(await self.redis.exists(self.keys.heartbeat(self.consumer)))

    def stop(self) -> None:
        self.stopping = True


async def test_the_runner_holds_the_name_through_a_slow_on_start(redis: RedisClient) -> None:
    keys = Keys("t")
    name = await claim_consumer_name(redis, keys, "slow", TTL_MS)
    runtime = Runtime(
        redis=redis,
        keys=keys,
        signer=Signer(KEYRING, "k"),
        verifier=Verifier(KEYRING),
        agent="slow",
        instance=name,
    )
    consumer = FirstBeat(redis, keys, name)
    await _serve(SlowStart(runtime), consumer)  # type: ignore[arg-type]
    assert consumer.claimed_at_run is True
