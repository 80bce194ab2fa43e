"""Joins of the rules runtime on the real Redis: a join completes once, to the envelope that
completed it (and its repeats); a late part neither completes nor reopens it; a window that
closes incomplete is reported exactly once however many processes ask at the same moment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from agents.rules import Incomplete, Join, Joined, RuleError
from agents.rules.joins import CLOSED_TTL_S
from bus import Keys, open_client
from bus.connection import RedisClient
from l9.devstack import StackEndpoints

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster

T0 = 1_767_225_600.0
ORDER, PAYMENT, SHIPMENT = "l9.shop.order.v1", "l9.shop.payment.v1", "l9.shop.shipment.v1"
TYPES = [ORDER, PAYMENT, SHIPMENT]


@pytest.fixture
async def other_clients(stack: StackEndpoints) -> AsyncIterator[list[RedisClient]]:
    """Three more clients of the same Redis: three more processes of the agent."""
    clients = [await open_client(stack.redis_url) for _ in range(3)]
    yield clients
    for client in clients:
        await client.aclose()


async def test_a_join_completes_once_with_every_part(redis: RedisClient, keys: Keys) -> None:
    join = Join(redis, keys, "shop", "ready", TYPES, window_s=300)
    assert await join.offer("o-1", ORDER, {"total": 12.5, "items": ["a", "b"]}, "e-order", T0) is None
    assert await join.offer("o-1", PAYMENT, {"paid": True}, "e-pay", T0 + 10) is None
    assert await redis.zscore(join.open_key, "o-1") == T0 + 300
    joined = await join.offer("o-1", SHIPMENT, {"carrier": "x"}, "e-ship", T0 + 299)
    assert isinstance(joined, Joined)
    assert list(joined.parts) == TYPES
    assert joined.parts[ORDER].payload == {"total": 12.5, "items": ["a", "b"]}
    assert joined.parts[PAYMENT].envelope_id == "e-pay" and joined.parts[PAYMENT].at == T0 + 10
    assert (joined.key, joined.opened_at, joined.deadline, joined.closed_by) == (
        "o-1",
        T0,
        T0 + 300,
        "e-ship",
    )
    assert await redis.zscore(join.open_key, "o-1") is None  # no longer open
    ttl = await redis.pttl(join.key_of("o-1"))
    assert CLOSED_TTL_S * 1000 - 60_000 < ttl <= CLOSED_TTL_S * 1000
    # the completing envelope, redelivered to a retried handler, gets the same join again
    assert await join.offer("o-1", SHIPMENT, {"carrier": "x"}, "e-ship", T0 + 299) == joined
    # another envelope of a type, after the join closed: a late repeat, nothing fires
    assert await join.offer("o-1", PAYMENT, {"paid": True}, "e-pay-2", T0 + 20) is None
    assert await join.offer("o-1", ORDER, {"total": 1}, "e-order-2", T0 + 30) is None
    assert await join.expired(T0 + 10_000) == []  # a complete join never times out


async def test_the_first_part_of_each_type_is_kept(redis: RedisClient, keys: Keys) -> None:
    join = Join(redis, keys, "shop", "first", [ORDER, PAYMENT], window_s=60)
    assert await join.offer("o-2", ORDER, {"n": 1}, "e-1", T0) is None
    assert await join.offer("o-2", ORDER, {"n": 2}, "e-2", T0 + 1) is None
    assert await join.offer("o-2", ORDER, {"n": 1}, "e-1", T0) is None  # a repeat
    joined = await join.offer("o-2", PAYMENT, {}, "e-3", T0 + 2)
    assert joined is not None and joined.parts[ORDER].payload == {"n": 1}


async def test_a_window_closed_incomplete_is_reported_once_to_racing_callers(
    redis: RedisClient, keys: Keys, other_clients: list[RedisClient]
) -> None:
    joins = [Join(client, keys, "shop", "race", TYPES, window_s=60) for client in [redis, *other_clients]]
    for i in range(30):
        await joins[0].offer(f"o-{i}", ORDER, {"i": i}, f"e-order-{i}", T0 + i)
        if i % 2:
            await joins[0].offer(f"o-{i}", PAYMENT, {"i": i}, f"e-pay-{i}", T0 + i + 1)
    assert await joins[0].expired(T0 + 60) == []  # no deadline passed yet (o-0's is T0 + 60)
    reports: list[list[Incomplete]] = [[] for _ in joins]

    async def sweep(index: int) -> None:
        for _ in range(5):  # each process sweeps again and again, all at the same moment
            reports[index].extend(await joins[index].expired(T0 + 1000, limit=7))

    async with anyio.create_task_group() as tg:
        for index in range(len(joins)):
            tg.start_soon(sweep, index)
    found = [incomplete for report in reports for incomplete in report]
    assert sorted(f.key for f in found) == sorted(f"o-{i}" for i in range(30))  # each once
    for incomplete in found:
        i = int(incomplete.key[2:])
        assert incomplete.deadline == incomplete.opened_at + 60 == T0 + i + 60
        if i % 2:
            assert list(incomplete.parts) == [ORDER, PAYMENT] and incomplete.missing == (SHIPMENT,)
            assert incomplete.parts[PAYMENT].payload == {"i": i}
        else:
            assert list(incomplete.parts) == [ORDER] and incomplete.missing == (PAYMENT, SHIPMENT)
    assert await joins[1].expired(T0 + 2000) == []
    assert await redis.zcard(joins[0].open_key) == 0


async def test_a_part_after_the_deadline_is_late_and_the_join_closes_incomplete(
    redis: RedisClient, keys: Keys
) -> None:
    join = Join(redis, keys, "shop", "late", [ORDER, PAYMENT], window_s=30)
    await join.offer("o-1", ORDER, {}, "e-1", T0)
    assert await join.offer("o-1", PAYMENT, {}, "e-2", T0 + 30.5) is None  # after the deadline
    assert await join.offer("o-1", PAYMENT, {}, "e-3", T0 - 31) is None  # too long before the first
    [incomplete] = await join.expired(T0 + 31)
    assert incomplete.missing == (PAYMENT,) and list(incomplete.parts) == [ORDER]
    # closed now: a part arriving after the claim fires nothing, and no second report comes
    assert await join.offer("o-1", PAYMENT, {}, "e-4", T0 + 5) is None
    assert await join.expired(T0 + 10_000) == []


async def test_racing_parts_complete_the_join_once(
    redis: RedisClient, keys: Keys, other_clients: list[RedisClient]
) -> None:
    clients = [redis, *other_clients]
    joins = [Join(client, keys, "shop", "parts", TYPES, window_s=60) for client in clients]
    results: list[Joined | None] = []

    async def offer(index: int, type_: str) -> None:
        results.append(await joins[index].offer("o-1", type_, {"t": type_}, f"e-{type_}-{index}", T0 + index))

    async with anyio.create_task_group() as tg:
        for index in range(len(joins)):  # each type offered by every process: 4 envelopes each
            for type_ in TYPES:
                tg.start_soon(offer, index, type_)
    completed = [r for r in results if r is not None]
    assert len(results) == 12 and len(completed) == 1
    assert [p.payload for p in completed[0].parts.values()] == [{"t": t} for t in TYPES]


async def test_bad_joins_and_parts_are_refused(redis: RedisClient, keys: Keys) -> None:
    with pytest.raises(RuleError, match=r"^join one: types must be two or more different envelope types"):
        Join(redis, keys, "shop", "one", [ORDER], window_s=10)
    with pytest.raises(RuleError, match=r"^join dup: types must be two or more different envelope types"):
        Join(redis, keys, "shop", "dup", [ORDER, ORDER], window_s=10)
    with pytest.raises(RuleError, match=r"^join neg: window_s must be a number of seconds > 0, got -1$"):
        Join(redis, keys, "shop", "neg", [ORDER, PAYMENT], window_s=-1)
    with pytest.raises(RuleError, match=r"^join: 'Bad-Name' is not a name"):
        Join(redis, keys, "shop", "Bad-Name", [ORDER, PAYMENT], window_s=10)
    join = Join(redis, keys, "shop", "ok", [ORDER, PAYMENT], window_s=10)
    with pytest.raises(RuleError, match=r"^join ok: type 'l9.shop.other.v1' is not joined here"):
        await join.offer("o", "l9.shop.other.v1", {}, "e-1", T0)
    with pytest.raises(RuleError, match=r"^join ok: the payload of l9.shop.order.v1 is not JSON"):
        await join.offer("o", ORDER, {"x": {1, 2}}, "e-1", T0)
    with pytest.raises(RuleError, match=r"^join ok: the payload of l9.shop.order.v1 is not JSON"):
        await join.offer("o", ORDER, {"x": float("nan")}, "e-1", T0)
    assert await redis.exists(join.key_of("o")) == 0  # nothing was stored
