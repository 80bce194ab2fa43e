"""The result cache on the real Redis: canonical keys, one miss then one hit, TTL, size bound."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from agents.sympy import SymPyTool
from agents.sympy.cache import ResultCache
from agents.sympy.keys import cache_stats_key, result_key
from bus import Keys, Publisher, RpcClient
from bus.connection import RedisClient
from envelope import Signer, Verifier
from tests.conftest import AgentProcess, wait_for

pytestmark = pytest.mark.integration
CACHE_ENV = {"L9_SYMPY_CACHE_TTL_S": "120", "L9_SYMPY_WORKERS": "1"}


@asynccontextmanager
async def sympy_tool(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> AsyncIterator[SymPyTool]:
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        yield SymPyTool(rpc, source="agent://test/caller", deadline_s=30)


async def result_keys(redis: RedisClient, keys: Keys) -> list[str]:
    found = [k.decode() async for k in redis.scan_iter(match=f"{keys.namespace}:sympy:*")]
    return sorted(k for k in found if k != cache_stats_key(keys))


async def test_x_plus_y_then_y_plus_x_is_one_miss_then_one_hit(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    spawn("sympy", env=CACHE_ENV)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        first = await tool.simplify("x+y")
        second = await tool.simplify("y + x")
    assert (first.cached, second.cached) == (False, True)
    assert first.expr == second.expr == "x + y" and first.expr_hash == second.expr_hash
    counted = {"misses": 1, "misses:simplify": 1, "hits": 1, "hits:simplify": 1}
    await wait_for(lambda: _stats_are(redis, keys, counted), timeout=60)
    (key,) = await result_keys(redis, keys)
    prefix, digest, op, backend = key.rsplit(":", 3)
    assert (prefix, op, backend) == (f"{keys.namespace}:sympy", "simplify", "sympy") and len(digest) == 32
    assert 0 < await redis.ttl(key) <= 120


async def _stats_are(redis: RedisClient, keys: Keys, expected: dict[str, int]) -> bool:
    return await ResultCache(redis, keys, ttl_s=1, max_bytes=1).stats() == expected


async def test_parameters_and_backends_get_their_own_entries(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    spawn("sympy", env=CACHE_ENV)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        a = await tool.evaluate("x*y + 1", points={"x": [1, 2], "y": [3, 4]})
        b = await tool.evaluate("1 + y*x", points={"y": [3, 4], "x": [1, 2]})
        c = await tool.evaluate("x*y + 1", points={"x": [1, 2], "y": [3, 5]})
        d = await tool.evaluate("x*y + 1", points={"x": [1, 2], "y": [3, 4]}, backend="numpy")
        e = await tool.diff("x*y", "x")
        f = await tool.diff("x*y", "y")
    assert [r.cached for r in (a, b, c, d, e, f)] == [False, True, False, False, False, False]
    assert a.values == b.values == d.values == [4.0, 9.0] and c.values == [4.0, 11.0]
    assert (e.expr, f.expr) == ("y", "x")
    suffixes = sorted(":".join(k.rsplit(":", 2)[1:]) for k in await result_keys(redis, keys))
    assert suffixes == ["diff:sympy", "diff:sympy", "evaluate:auto", "evaluate:auto", "evaluate:numpy"]


async def test_results_are_shared_through_redis_and_large_ones_are_not_stored(
    redis: RedisClient, keys: Keys
) -> None:
    cache = ResultCache(redis, keys, ttl_s=60, max_bytes=100)
    assert await cache.put("d" * 32, "expand", "sympy", {"expr": "x" * 50, "ops": 0, "expr_hash": "h"})
    assert not await cache.put("e" * 32, "expand", "sympy", {"expr": "x" * 200, "ops": 0, "expr_hash": "h"})
    assert await cache.get("d" * 32, "expand", "sympy") == {"expr": "x" * 50, "ops": 0, "expr_hash": "h"}
    assert await cache.get("e" * 32, "expand", "sympy") is None
    assert not await redis.exists(result_key(keys, "e" * 32, "expand", "sympy"))
    assert await cache.stats() == {}, "hits and misses are counted at the flush (the worker's ack)"
    await cache.flush()
    assert await cache.stats() == {"hits": 1, "hits:expand": 1, "misses": 1, "misses:expand": 1}
    other_process = ResultCache(redis, keys, ttl_s=60, max_bytes=100)
    assert await other_process.get("d" * 32, "expand", "sympy") == {
        "expr": "x" * 50,
        "ops": 0,
        "expr_hash": "h",
    }
    await other_process.flush()
    assert (await other_process.stats())["hits"] == 2
    assert 0 < await redis.ttl(result_key(keys, "d" * 32, "expand", "sympy")) <= 60
