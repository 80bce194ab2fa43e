"""The `l9` command against the real servers: the bus demo (`l9 demo bus`) and status."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import Signer
from tests.conftest import read_reply, run_l9, stream_entries
from tests.integration.test_agents import work

pytestmark = pytest.mark.integration


l9 = run_l9


def test_demo_runs_two_agent_processes_and_checks_their_work(agent_env: dict[str, str]) -> None:
    env = {**agent_env, "COLUMNS": "400"}  # one line per message, paths unbroken
    done = l9("demo", "bus", "--count", "120", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sum of squares: 583220 (expected 583220)" in done.stdout
    assert "demo passed" in done.stdout
    assert "'squarer#0': 0" in done.stdout and "'summer': 0" in done.stdout and "'auditor': 0" in done.stdout
    # the auditor put the run's 240 envelopes in the trail, the chain verifies, the report checks out
    assert "audit trail: 240 envelopes of the run; trail intact" in done.stdout
    found = re.search(r"evidence report: (\S+\.md)", done.stdout)
    assert found is not None, done.stdout
    checked = l9("report", "verify", found.group(1), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_status_reports_groups_pending_lag_and_dead_letters(
    redis: RedisClient, keys: Keys, signer: Signer, agent_env: dict[str, str]
) -> None:
    publisher = Publisher(redis, keys, signer)
    ids = await publisher.publish_many([work(i) for i in range(10)])
    key = keys.stream("test")
    await redis.xgroup_create(key, "ledger", id="0")
    got = read_reply(await redis.xreadgroup("ledger", "ledger-0", {key: ">"}, count=4))
    await redis.xack(key, "ledger", got[0][1][0][0])
    await redis.xadd(keys.dead("test"), {"dl_reason": "undecodable"})
    assert len(ids) == 10

    done = l9("status", "--json", env=agent_env)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    (stream,) = [s for s in status["streams"] if s["name"] == "test"]
    assert stream["length"] == 10 and stream["dead_letters"] == 1
    (group,) = stream["groups"]
    assert group["name"] == "ledger" and group["pending"] == 3 and group["lag"] == 6
    assert group["consumers"] == [
        {"name": "ledger-0", "pending": 3, "idle_ms": group["consumers"][0]["idle_ms"], "alive": False}
    ]
    table = l9("status", env=agent_env)
    assert table.returncode == 0 and "ledger" in table.stdout and "test" in table.stdout


def test_agent_run_rejects_an_unknown_agent(agent_env: dict[str, str]) -> None:
    done = l9("agent", "run", "no_such_agent", env=agent_env)
    assert done.returncode == 2
    assert "unknown agent 'no_such_agent'" in done.stderr


def test_agent_run_names_where_an_agent_module_does_not_parse(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "broken_agent.py").write_text("from agents import Agent\n\nclass Broken(Agent:\n    pass\n")
    env = {
        **agent_env,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), agent_env.get("PYTHONPATH")])),
    }
    done = l9("agent", "run", "broken_agent:Broken", env=env)
    assert done.returncode == 2
    assert f"broken_agent:Broken: {tmp_path / 'broken_agent.py'}:3:" in done.stderr
    assert "Traceback" not in done.stderr


async def test_trim_command_removes_only_acknowledged_entries(
    redis: RedisClient, keys: Keys, signer: Signer, agent_env: dict[str, str]
) -> None:
    ids = await Publisher(redis, keys, signer).publish_many([work(i) for i in range(6)])
    key = keys.stream("test")
    await redis.xgroup_create(key, "g", id="0")
    got = read_reply(await redis.xreadgroup("g", "c", {key: ">"}, count=4))
    await redis.xack(key, "g", *[i for i, _ in got[0][1][:3]])
    done = l9("trim", env=agent_env)
    assert done.returncode == 0, done.stderr
    assert "test: 3 acknowledged entries removed" in done.stdout
    assert [i.decode() for i, _ in stream_entries(await redis.xrange(key))] == ids[3:]


def test_unreachable_redis_is_a_one_line_error(agent_env: dict[str, str]) -> None:
    env = {**agent_env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    for args in (("agent", "run", "squarer"), ("status",)):
        done = l9(*args, env=env)
        assert done.returncode == 1
        assert "cannot reach Redis (redis://127.0.0.1:1/0)" in done.stderr
        assert "Traceback" not in done.stderr
