"""Rate limits on the real Redis: exact counts, retry-after, all-or-nothing, two processes racing."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TypedDict

import anyio
import pytest

from bus import Keys
from bus.connection import RedisClient
from governance import RateLimited, RateLimiter, RateLimitSpec, Request
from l9.devstack import StackEndpoints
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration
TYPE = "l9.extract.request.v1"


def limit(id_: str = "extract@1", *, n: int, window_s: float, per: str = "requester") -> RateLimitSpec:
    return RateLimitSpec.model_validate(
        {"id": id_, "types": ["l9.extract.*"], "per": per, "limit": n, "window_s": window_s}
    )


def request(requester: str = "alice", agent: str = "cli") -> Request:
    return Request(type=TYPE, requester=requester, agent=agent)


async def test_admits_exactly_the_limit_then_says_when_to_retry(redis: RedisClient, keys: Keys) -> None:
    limiter = RateLimiter(redis, keys, [limit(n=5, window_s=1.5)])
    decisions = [await limiter.check(request()) for _ in range(7)]
    assert [d.outcome.value for d in decisions] == ["allow"] * 5 + ["deny"] * 2
    refused = decisions[-1]
    assert refused.policy == "extract@1" and refused.retry_after_s is not None
    assert 0 < refused.retry_after_s <= 1.5
    assert refused.reason == (
        "rate limited by extract@1 (5 per 1.5 s per requester 'alice'), "
        f"retry after {-(-int(refused.retry_after_s * 1000) // 1000)} s"
    )
    # someone else has their own budget
    assert (await limiter.check(request("bob"))).allowed
    # after the advertised wait, the requester is admitted again
    await anyio.sleep(refused.retry_after_s + 0.05)
    assert (await limiter.check(request())).allowed
    with pytest.raises(RateLimited, match="retry after") as err:
        for _ in range(6):  # at most 5 slots can be free again
            await limiter.admit(request())
    assert err.value.retry_after_s > 0


async def test_types_without_a_limit_are_not_counted(redis: RedisClient, keys: Keys) -> None:
    limiter = RateLimiter(redis, keys, [limit(n=1, window_s=60)])
    for _ in range(3):
        assert (await limiter.check(Request(type="l9.demo.task.v1", requester="alice"))).allowed
    assert [k async for k in redis.scan_iter(match=f"{keys.namespace}:*")] == []


async def test_several_limits_admit_all_or_nothing(redis: RedisClient, keys: Keys) -> None:
    per_agent = limit("per-agent@1", n=3, window_s=60, per="agent")
    per_requester = limit("per-requester@1", n=10, window_s=60)
    limiter = RateLimiter(redis, keys, [per_requester, per_agent])
    assert all([(await limiter.check(request(f"user{i}", agent="planner"))).allowed for i in range(3)])
    refused = await limiter.check(request("user9", agent="planner"))
    assert refused.denied and refused.policy == "per-agent@1"
    assert "per agent 'planner'" in refused.reason
    # the refused request spent nothing of user9's own budget
    assert await redis.zcard(keys.rate_limit("per-requester@1", "user9")) == 0
    assert await redis.zcard(keys.rate_limit("per-agent@1", "planner")) == 3


HAMMER = """
import asyncio, json, sys, time
from bus import Keys, open_client
from governance import RateLimiter, RateLimitSpec, Request
from l9.logs import configure_logging

configure_logging("warning")

async def main(url, namespace, attempts_max, seconds, n, window_s):
    redis = await open_client(url)
    spec = RateLimitSpec.model_validate(
        {"id": "hammer@1", "types": ["l9.extract.*"], "limit": n, "window_s": window_s}
    )
    limiter = RateLimiter(redis, Keys(namespace), [spec])
    req = Request(type="l9.extract.request.v1", requester="shared")
    await redis.incr(f"{namespace}:hammer:ready")
    while not await redis.exists(f"{namespace}:hammer:go"):  # both start together
        await asyncio.sleep(0.001)
    attempts, admitted, end = 0, [], time.monotonic() + seconds
    while attempts < attempts_max if attempts_max else time.monotonic() < end:
        attempts += 1
        if (await limiter.check(req)).allowed:
            admitted.append(limiter.last_now_ms)
    await redis.aclose()
    print(json.dumps({"attempts": attempts, "admitted": admitted}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
                 float(sys.argv[6])))
"""


class HammerReport(TypedDict):
    """What one hammering process prints: its checks, and the Redis times (ms) of those admitted."""

    attempts: int
    admitted: list[int]


async def hammer(
    stack: StackEndpoints,
    redis: RedisClient,
    keys: Keys,
    *,
    n: int,
    window_s: float,
    attempts: int = 0,
    seconds: float = 0.0,
) -> list[HammerReport]:
    """Two OS processes hitting the same limit, released at the same instant once both are up,
    each for ``attempts`` checks (or, with 0, for ``seconds``); their reports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [stack.redis_url, keys.namespace, str(attempts), str(seconds), str(n), str(window_s)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", HAMMER, *args, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT
        )
        for _ in range(2)
    ]

    async def both_ready() -> bool:
        return int(await redis.get(f"{keys.namespace}:hammer:ready") or 0) == 2

    await wait_for(both_ready, timeout=120)
    await redis.set(f"{keys.namespace}:hammer:go", 1)
    outs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    return [json.loads(out) for out, _ in outs]


async def test_two_processes_never_get_more_than_the_limit(
    stack: StackEndpoints, redis: RedisClient, keys: Keys
) -> None:
    reports = await hammer(stack, redis, keys, attempts=300, n=40, window_s=60)
    admitted = [len(r["admitted"]) for r in reports]
    assert [r["attempts"] for r in reports] == [300, 300]  # 600 checks, far past the limit
    assert sum(admitted) == 40, admitted
    assert await redis.zcard(keys.rate_limit("hammer@1", "shared")) == 40


async def test_two_processes_respect_a_sliding_window(
    stack: StackEndpoints, redis: RedisClient, keys: Keys
) -> None:
    n, window_ms = 15, 400
    reports = await hammer(stack, redis, keys, seconds=2.0, n=n, window_s=window_ms / 1000)
    times = sorted(t for r in reports for t in r["admitted"])
    # in no window of 400 ms (by the Redis clock) were more than 15 admitted ...
    assert all(later - earlier >= window_ms for earlier, later in zip(times, times[n:], strict=False))
    # ... and slots came free as the window slid: more than one window's worth were admitted
    assert len(times) > n, len(times)
