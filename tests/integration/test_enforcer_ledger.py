"""The enforcer's ledger on the real Redis: a stage's envelopes are built once and reused with the same
ids; one holder at a time per envelope; a failing holder's error comes out as itself and frees the lock."""

from __future__ import annotations

import anyio
import pytest

from agents.extraction.enforcer import Ledger, ledger_key
from bus import Keys
from bus.connection import RedisClient
from envelope import PacketEnvelope

pytestmark = pytest.mark.integration


def envelopes(n: int) -> list[PacketEnvelope]:
    return [
        PacketEnvelope.new(type="l9.test.thing.v1", source="agent://t/t-0", data={"i": i}) for i in range(n)
    ]


async def test_a_stage_is_built_once_and_marked_published(redis: RedisClient, keys: Keys) -> None:
    ledger = Ledger(redis, ledger_key(keys, "gen-1"))
    built = await ledger.envelopes("decisions", lambda: envelopes(3))
    again = await Ledger(redis, ledger_key(keys, "gen-1")).envelopes("decisions", lambda: envelopes(5))
    assert [e.id for e in again] == [e.id for e in built] and len(again) == 3
    assert not await ledger.published("decisions")
    await ledger.mark_published("decisions")
    assert await ledger.published("decisions") and not await ledger.published("final")
    assert 0 < await redis.ttl(ledger_key(keys, "gen-1")) <= 7 * 86_400


async def test_one_holder_at_a_time_and_errors_come_out_as_themselves(redis: RedisClient, keys: Keys) -> None:
    holders: list[int] = []  # how many held the lock, as each one took it
    inside = 0

    async def work() -> None:
        nonlocal inside
        inside += 1
        holders.append(inside)
        await anyio.sleep(0.3)  # the other one asks meanwhile
        inside -= 1

    with anyio.fail_after(30):  # only catches a hang
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lambda: Ledger(redis, ledger_key(keys, "gen-2")).exclusively(work, poll_s=0.02))
    assert holders == [1, 1], "both held the lock at once"

    async def broken() -> None:
        raise RuntimeError("the folder vanished")

    ledger = Ledger(redis, ledger_key(keys, "gen-3"))
    with pytest.raises(RuntimeError, match="the folder vanished"):
        await ledger.exclusively(broken)
    assert not await redis.exists(f"{ledger_key(keys, 'gen-3')}:lock")  # freed for the retry
