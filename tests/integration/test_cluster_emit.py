"""On a cluster, a handler's envelopes to streams in other slots than its entry's are
published before the entry's MULTI/EXEC (a transaction cannot span slots); one of them
refused leaves the entry pending, handled again, its envelopes published once it succeeds."""

from __future__ import annotations

import anyio
import pytest
from structlog.testing import capture_logs

from bus import Keys, Publisher, is_cluster
from bus.connection import RedisClient, slot_of
from envelope import Signer, Verifier
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
