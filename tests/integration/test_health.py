"""``l9 health AGENT`` against real agent processes: the exit code compose health checks read."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from bus import Keys
from bus.connection import RedisClient
from tests.conftest import AgentProcess, run_l9, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster


async def test_health_follows_the_agents_heartbeats(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, agent_env: dict[str, str]
) -> None:
    down = run_l9("health", "squarer", env=agent_env)
    assert down.returncode == 1
    pattern = f"{keys.namespace}:hb:squarer-*"
    assert down.stderr.strip() == f"squarer: no live consumer (no heartbeat key {pattern})"
    first, second = spawn("squarer"), spawn("squarer", "--instance", "blue")

    async def both_beat() -> bool:
        return await redis.exists(keys.heartbeat("squarer-0"), keys.heartbeat("squarer-blue")) == 2

    await wait_for(both_beat)

    up = run_l9("health", "squarer", "--min", "2", "--instance", "blue", "--json", env=agent_env)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout) == {
        "agent": "squarer",
        "healthy": True,
        "live": ["squarer-0", "squarer-blue"],
        "reason": "squarer: 2 live consumer(s): squarer-0, squarer-blue",
    }
    assert run_l9("health", "summer", env=agent_env).returncode == 1  # another agent: nobody beats for it

    assert second.terminate() == 0  # SIGTERM releases the name at once
    fewer = run_l9("health", "squarer", "--min", "2", "--instance", "blue", env=agent_env)
    assert fewer.returncode == 1 and "1 live consumer(s), fewer than 2" in fewer.stderr
    first.kill9()  # no release: the heartbeat lapses after three beats (L9_HEARTBEAT_MS=200)
    await wait_for(lambda: run_l9("health", "squarer", env=agent_env).returncode == 1, timeout=60)


def test_an_unreachable_redis_is_unhealthy_at_once(agent_env: dict[str, str]) -> None:
    # no retry loop against a closed port: it answers (run_l9's timeout would catch a hang)
    done = run_l9("health", "sympy", env={**agent_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 1
    assert done.stderr.startswith("sympy: cannot read heartbeats from Redis:")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_bad_agent_name_is_a_usage_error(agent_env: dict[str, str]) -> None:
    done = run_l9("health", "sym*", env=agent_env)
    assert done.returncode == 2 and "'sym*' is not an agent name" in done.stderr
