"""``l9 up`` as a user runs it: every built-in agent as its own process, their logs prefixed,
a process killed reported with how it died, then SIGINT (Ctrl-C) and every process gone."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import psutil
import pytest

from bus import Keys, open_client
from l9.demo_extraction import PIPELINE
from l9.settings import Settings
from l9.up import processes
from tests.conftest import ROOT, run_l9, wait_for
from tests.testing_kit.test_reload import l9_process

pytestmark = pytest.mark.integration
LABELS = {f"{name}#{i}" for name, count in PIPELINE for i in range(count)}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process]) -> list[str]:
    """The pids of those of ``procs`` still running."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid}: {' '.join(proc.cmdline())}")
        except psutil.NoSuchProcess:
            continue
    return alive


async def test_up_runs_every_builtin_agent_until_ctrl_c(
    l9_env: dict[str, str], l9_settings: Settings, kit_database: str, tmp_path: Path
) -> None:
    env = {**l9_env, "DATABASE_URL": kit_database, "L9_SYMPY_WORKERS": "1", "COLUMNS": "400"}
    log = tmp_path / "up.log"
    up = l9_process(["up"], env, ROOT, log)
    try:
        await wait_for(lambda: "every agent has started" in log.read_text(), timeout=300)
        text = log.read_text()
        pids = {label: int(pid) for label, pid in re.findall(r"started (\S+) \(pid (\d+)\)", text)}
        assert set(pids) == LABELS, text
        for label in LABELS:  # each agent's own log lines, relayed under its label
            started = [line for line in text.splitlines() if line.startswith(f"{label} ")]
            assert any('"event": "agent.started"' in line.split(" | ", 1)[1] for line in started), started
        redis = await open_client(l9_settings.redis_url or "")
        try:
            keys = Keys(l9_settings.namespace)
            for label in LABELS:  # consuming: each one's heartbeat, under its own consumer name
                assert await redis.exists(keys.heartbeat(label.replace("#", "-"))), label
        finally:
            await redis.aclose()

        os.kill(pids["sympy#1"], signal.SIGKILL)  # a process dies: said at once, the others go on
        await wait_for(lambda: "sympy#1 died (killed by SIGKILL); the others keep running" in log.read_text())
        assert up.poll() is None
        running = [p for p in _descendants(up.pid) if p.pid != pids["sympy#1"]]
        assert {pids[label] for label in LABELS - {"sympy#1"}} <= {p.pid for p in running}

        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(timeout=180)
    finally:
        if up.poll() is None:  # the test failed: nothing it started is left behind
            children = _descendants(up.pid)
            up.kill()
            up.wait()
            for child in children:
                child.kill()
    text = log.read_text()
    assert code == 1, "one process had died: not a clean run\n" + text[-3000:]
    assert "SIGINT: stopping every agent process" in text
    for label in LABELS - {"sympy#1"}:
        assert re.search(rf"^l9 up\s+\| {re.escape(label)} exited: exit code 0$", text, re.M), text[-3000:]
        stopped = [line.split(" | ", 1)[1] for line in text.splitlines() if line.startswith(f"{label} ")]
        assert any(
            json.loads(line).get("event") == "agent.stopped" for line in stopped if line.startswith("{")
        )
    assert re.search(r"^l9 up\s+\| sympy#1 had died: killed by SIGKILL$", text, re.M)
    assert _gone(running) == [], "every process l9 up started is gone"


def test_the_processes_of_up_and_with() -> None:
    own = [("my_agents:Area", "area"), ("my_agents:Area", "area")]
    assert [p.label for p in processes(own)] == [
        *("planner#0", "generator#0", "enforcer#0", "validator#0", "auditor#0", "sympy#0", "sympy#1"),
        *("area#0", "area#1"),
    ]
    assert processes(own)[-1].command()[3:] == ["agent", "run", "my_agents:Area", "--instance", "1"]


def test_a_with_agent_that_does_not_load_is_one_line_exit_2(l9_env: dict[str, str]) -> None:
    done = run_l9("up", "--with", "no_such_module:Agent", env=l9_env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: --with no_such_module:Agent: No module named 'no_such_module'\n"
