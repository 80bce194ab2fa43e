"""``l9 health``: which heartbeat keys are probed and how the verdict reads (fakeredis)."""

from __future__ import annotations

import anyio
import fakeredis
import pytest

from bus import Keys
from l9.health import CANDIDATES, candidate_names, judge, live_consumers

KEYS = Keys("ns")


def test_candidates_are_the_lowest_names_then_the_named_instances() -> None:
    names = candidate_names("sympy", instances=("blue", "3"))
    assert names[:3] == ["sympy-0", "sympy-1", "sympy-2"]
    assert names[-1] == "sympy-blue" and names.count("sympy-3") == 1
    assert len(names) == CANDIDATES + 1


async def test_only_existing_heartbeat_keys_of_that_agent_count() -> None:
    redis = fakeredis.FakeAsyncRedis()
    await redis.set(KEYS.heartbeat("sympy-0"), "{}", px=5000)
    await redis.set(KEYS.heartbeat("sympy-7"), "{}", px=5000)
    await redis.set(KEYS.heartbeat("sympy-blue"), "{}", px=5000)
    await redis.set(KEYS.heartbeat("planner-1"), "{}", px=5000)  # another agent
    await redis.set(Keys("other").heartbeat("sympy-1"), "{}", px=5000)  # another namespace
    await redis.set(KEYS.heartbeat("sympy-2"), "{}", px=1)  # lapsed
    await anyio.sleep(0.02)
    await redis.set(KEYS.heartbeat("sympy-3"), "{}")
    await redis.delete(KEYS.heartbeat("sympy-3"))  # released on SIGTERM
    live = await live_consumers(redis, KEYS, candidate_names("sympy"))
    assert live == ("sympy-0", "sympy-7")
    assert await live_consumers(redis, KEYS, candidate_names("sympy", ["blue"])) == (*live, "sympy-blue")
    await redis.aclose()


@pytest.mark.parametrize(
    ("live", "minimum", "healthy", "reason"),
    [
        (("sympy-0",), 1, True, "sympy: 1 live consumer(s): sympy-0"),
        (("sympy-0", "sympy-4"), 2, True, "sympy: 2 live consumer(s): sympy-0, sympy-4"),
        ((), 1, False, "sympy: no live consumer (no heartbeat key ns:hb:sympy-*)"),
        (("sympy-0",), 3, False, "sympy: 1 live consumer(s), fewer than 3 (ns:hb:sympy-*)"),
    ],
)
def test_the_verdict_says_why(live: tuple[str, ...], minimum: int, healthy: bool, reason: str) -> None:
    health = judge("sympy", live, minimum, KEYS)
    assert (health.healthy, health.reason, health.live) == (healthy, reason, live)
    assert "\n" not in health.reason


def test_many_consumers_are_summarised_on_one_line() -> None:
    live = tuple(f"auditor-{n}" for n in range(12))
    reason = judge("auditor", live, 1, KEYS).reason
    assert reason.endswith("auditor-7, ... (12 in all)") and "auditor-8" not in reason
