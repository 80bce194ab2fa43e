"""The ``l9`` console script answers ``l9 health`` itself (l9.entry), before the CLI loads: the same
output and exit codes as the full CLI's ``health`` command (``python -m l9``), against real agents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bus import Keys
from bus.connection import RedisClient
from tests.conftest import ROOT, AgentProcess, run_l9, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster

#: The console script of the interpreter running the tests (the venv's ``l9``).
L9 = Path(sys.executable).with_name("l9")


def console(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``l9 ARGS`` through the console script; its wall time is printed (``pytest -s``)."""
    started = time.perf_counter()
    done = subprocess.run([str(L9), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    print(f"l9 {' '.join(args)}: exit {done.returncode} in {time.perf_counter() - started:.3f} s")
    return done


def same(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script's answer, checked equal to the full CLI's."""
    fast, full = console(*args, env=env), run_l9(*args, env=env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr)
    return fast


async def test_the_console_scripts_health_answers_as_the_cli_does(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, agent_env: dict[str, str]
) -> None:
    assert L9.exists(), f"no console script at {L9}: make .venv/.installed"
    pattern = f"{keys.namespace}:hb:squarer-*"
    down = same(("health", "squarer"), agent_env)
    assert down.returncode == 1 and down.stdout == ""
    assert down.stderr == f"squarer: no live consumer (no heartbeat key {pattern})\n"
    spawn("squarer", "--instance", "blue")
    await wait_for(lambda: redis.exists(keys.heartbeat("squarer-blue")))

    up = same(("health", "squarer", "--instance", "blue", "--json"), agent_env)
    assert up.returncode == 0 and up.stderr == ""
    assert json.loads(up.stdout) == {
        "agent": "squarer",
        "healthy": True,
        "live": ["squarer-blue"],
        "reason": "squarer: 1 live consumer(s): squarer-blue",
    }
    line = same(("health", "--min=1", "squarer", "--instance=blue"), agent_env)
    assert (line.returncode, line.stdout) == (0, "squarer: 1 live consumer(s): squarer-blue\n")
    fewer = same(("health", "squarer", "--min", "2", "--instance", "blue"), agent_env)
    assert fewer.returncode == 1 and "1 live consumer(s), fewer than 2" in fewer.stderr


def test_what_the_console_script_leaves_to_the_cli_still_answers(agent_env: dict[str, str]) -> None:
    bad_name = console("health", "sym*", env=agent_env)
    assert bad_name.returncode == 2 and "'sym*' is not an agent name" in bad_name.stderr
    assert console("health", "sympy", "--min", "0", env=agent_env).returncode == 2  # a usage error
    bad_setting = console("health", "sympy", env={**agent_env, "L9_NAMESPACE": "not a namespace"})
    assert bad_setting.returncode == 2 and "invalid settings" in bad_setting.stderr
    helped = console("health", "--help", env=agent_env)
    assert helped.returncode == 0 and "--instance" in helped.stdout
    unreachable = same(("health", "sympy"), {**agent_env, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("sympy: cannot read heartbeats from Redis:")
