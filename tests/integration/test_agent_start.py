"""Start-up (l9.start): an agent needing no database, given REDIS_URL, starts no PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bus import Keys
from bus.connection import RedisClient
from tests.conftest import AgentProcess, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def no_database_env(agent_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in agent_env.items() if k not in ("DATABASE_URL", "L9_DATABASE_URL")}
    env["L9_SYMPY_METRICS"] = "false"
    env["L9_SYMPY_WORKERS"] = "1"
    return env


@pytest.fixture
def procs() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for proc in started:
        proc.close()


def postgres_under(home: Path) -> list[str]:
    """Command lines of running processes that name ``home`` and look like PostgreSQL."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "postgres" in cmdline and str(home) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.parametrize("name", ["planner", "sympy", "lineage"])
async def test_an_agent_with_redis_url_and_no_database_url_starts_no_postgres(
    name: str,
    redis: RedisClient,
    keys: Keys,
    no_database_env: dict[str, str],
    procs: list[AgentProcess],
    tmp_path: Path,
) -> None:
    home = Path(no_database_env["L9_HOME"])
    proc = AgentProcess(name, no_database_env, tmp_path / f"{name}.log")
    procs.append(proc)

    async def started() -> bool:
        assert proc.proc.poll() is None, proc.log_path.read_text()
        return any(e.get("event") == "agent.started" for e in proc.log_events())

    await wait_for(started)
    assert await redis.exists(keys.heartbeat(f"{name}-0"))
    assert not (home / "pg").exists()
    assert not (home / "stack.json").exists()
    assert postgres_under(home) == []
    assert proc.terminate() == 0
    assert not (home / "pg").exists()
