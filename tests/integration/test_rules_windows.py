"""Windows of the rules runtime on the real Redis: the aggregates over the last seconds and the
last entries, each checked against the same aggregate computed here from the values the test
added; repeats of an envelope add nothing; both keys of a window get their TTL."""

from __future__ import annotations

import math
import random
import uuid

import anyio
import pytest

from agents.rules import RuleError, Window
from agents.rules.windows import LAST_N_TTL_S, TTL_MARGIN_S
from bus import Keys
from bus.connection import RedisClient

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster

T0 = 1_767_225_600.0  # 2026-01-01, the inputs' own clock


def expected(values: list[float]) -> dict[str, float | None]:
    """The five aggregates of ``values``, computed without the window."""
    if not values:
        return {"count": 0.0, "sum": 0.0, "mean": None, "min": None, "max": None}
    return {
        "count": float(len(values)),
        "sum": math.fsum(values),
        "mean": math.fsum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def assert_aggregates(got: dict[str, float | None], want: dict[str, float | None]) -> None:
    assert got.keys() == want.keys()
    for fn, value in want.items():
        assert (got[fn] is None) == (value is None), fn
        if value is not None:
            assert got[fn] == pytest.approx(value, rel=1e-12, abs=1e-12), fn


async def test_the_last_seconds_hold_what_the_newest_input_says_and_drop_the_older(
    redis: RedisClient, keys: Keys
) -> None:
    window = Window(redis, keys, "fraud", "amounts", last_s=60)
    rng = random.Random(18)
    added: list[tuple[float, float]] = []  # (at, value), as the test sent them
    for i in range(120):
        at = T0 + i * 7.5 + rng.uniform(-20, 20)  # out of order now and then
        value = round(rng.uniform(-500, 500), 3)
        await window.add("acct-1", value, f"e{i}", at)
        added.append((at, value))
        newest = max(a for a, _ in added)
        # the window of the newest input: every value with at in (newest - 60, newest]
        inside = [v for a, v in sorted(added) if newest - 60 < a <= newest]
        got = await window.aggregates("acct-1", ["count", "sum", "mean", "min", "max"])
        assert_aggregates(got, expected(inside))
    assert await window.values("acct-2") == []
    assert_aggregates(await window.aggregates("acct-2", ["count", "sum", "mean", "min", "max"]), expected([]))


async def test_the_boundary_of_the_last_seconds_is_open_on_the_old_side(
    redis: RedisClient, keys: Keys
) -> None:
    window = Window(redis, keys, "fraud", "edge", last_s=10)
    assert await window.add("k", 1.0, "a", T0)
    assert await window.add("k", 2.0, "b", T0 + 5)
    assert await window.add("k", 4.0, "c", T0 + 10)  # T0 is now exactly 10 s old: out
    assert await window.values("k") == [2.0, 4.0]
    assert not await window.add("k", 8.0, "d", T0 - 1)  # older than the window: dropped at once
    assert await window.aggregate("k", "sum") == 6.0


async def test_the_last_entries_keep_the_latest_n_by_time(redis: RedisClient, keys: Keys) -> None:
    window = Window(redis, keys, "sensors", "readings", last_n=5)
    rng = random.Random(7)
    added: list[tuple[float, str, float]] = []
    for i in range(60):
        at, value = T0 + rng.uniform(0, 600), rng.uniform(-1e6, 1e6)
        envelope_id = f"e{i:03d}"
        await window.add("s1", value, envelope_id, at)
        added.append((at, envelope_id, value))
        latest = [v for _, _, v in sorted(added)[-5:]]  # by time, then envelope id
        assert await window.values("s1") == latest
        got = await window.aggregates("s1", ["count", "sum", "mean", "min", "max"])
        assert_aggregates(got, expected(latest))


async def test_a_repeated_envelope_adds_nothing_even_with_another_value(
    redis: RedisClient, keys: Keys
) -> None:
    seconds = Window(redis, keys, "fraud", "repeats", last_s=300)
    entries = Window(redis, keys, "fraud", "repeats_n", last_n=3)
    for window in (seconds, entries):
        assert await window.add("k", 10.0, "env-1", T0)
        assert await window.add("k", 20.0, "env-2", T0 + 1)
        assert not await window.add("k", 10.0, "env-1", T0)  # the handler, retried
        assert not await window.add("k", 99.0, "env-1", T0 + 2)  # a retry that computed otherwise
        assert await window.values("k") == [10.0, 20.0]
        assert await window.aggregate("k", "count") == 2.0


async def test_a_repeat_of_a_trimmed_envelope_stays_out(redis: RedisClient, keys: Keys) -> None:
    seconds = Window(redis, keys, "fraud", "trimmed", last_s=10)
    entries = Window(redis, keys, "fraud", "trimmed_n", last_n=2)
    for window in (seconds, entries):
        for i in range(4):
            await window.add("k", float(i), f"env-{i}", T0 + 6 * i)
        kept = await window.values("k")
        assert not await window.add("k", 0.0, "env-0", T0)  # trimmed long ago, redelivered
        assert await window.values("k") == kept == [2.0, 3.0]


async def test_racing_handlers_count_each_envelope_once(redis: RedisClient, keys: Keys) -> None:
    window = Window(redis, keys, "fraud", "race", last_s=3600)
    ids = [f"env-{i}" for i in range(40)]
    outcomes: list[bool] = []
    limiter = anyio.CapacityLimiter(12)  # the test client's connection pool holds 16

    async def add(envelope_id: str) -> None:
        async with limiter:
            outcomes.append(await window.add("k", 1.5, envelope_id, T0 + int(envelope_id[4:])))

    async with anyio.create_task_group() as tg:
        for envelope_id in ids * 3:  # every envelope three times, at once
            tg.start_soon(add, envelope_id)
    assert sum(outcomes) == 40
    assert await window.aggregate("k", "count") == 40.0
    assert await window.aggregate("k", "sum") == 60.0


async def test_both_keys_of_a_window_expire_when_idle(redis: RedisClient, keys: Keys) -> None:
    seconds = Window(redis, keys, "fraud", "ttl_s", last_s=30)
    entries = Window(redis, keys, "fraud", "ttl_n", last_n=4)
    short = Window(redis, keys, "fraud", "ttl_short", last_n=4, ttl_s=90)
    for window, ttl in ((seconds, 30 + TTL_MARGIN_S), (entries, LAST_N_TTL_S), (short, 90.0)):
        await window.add("k", 1.0, "env-1", T0)
        for key in window.keys_of("k"):
            remaining = await redis.pttl(key)
            assert 0 < remaining <= ttl * 1000, key
            assert remaining > (ttl - 30) * 1000, key  # set by this add, not some default


async def test_keys_of_any_text_are_kept_apart(redis: RedisClient, keys: Keys) -> None:
    window = Window(redis, keys, "fraud", "texts", last_n=10)
    odd = ["a:b", "a}b{", "a b", "ключ", "a%3Ab", str(uuid.uuid4())]
    for i, key in enumerate(odd):
        await window.add(key, float(i), f"env-{i}", T0)
    for i, key in enumerate(odd):
        assert await window.values(key) == [float(i)]


async def test_bad_input_is_refused_with_where_and_what(redis: RedisClient, keys: Keys) -> None:
    window = Window(redis, keys, "fraud", "bad", last_s=10)
    with pytest.raises(RuleError, match=r"^window bad: value must be a finite number, got nan$"):
        await window.add("k", math.nan, "env-1", T0)
    with pytest.raises(RuleError, match=r"^window bad: the key must be text, got int 7$"):
        await window.add(7, 1.0, "env-1", T0)  # type: ignore[arg-type]
    with pytest.raises(RuleError, match=r"^window bad: unknown aggregate 'median'"):
        await window.aggregate("k", "median")
    assert await window.values("k") == []
