"""``l9 agent run SPEC --reload``: touching the agent's module restarts its process, an edit
too (the new code runs), an edit that breaks it is logged with the exit code and the next
one restarts it, and SIGTERM stops the child and the watcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from l9.reload import PACKAGES, ROOT, watched_paths
from tests.conftest import wait_for

AGENT = '''"""An agent of the test's own folder."""

import structlog

from agents import Agent, Context, handles
from envelope import Payload, payload

VERSION = {version}


@payload("l9.reloaded.ping.v1")
class Ping(Payload):
    n: int


class Pinger(Agent):
    name = "pinger"
    consumes = ("reloaded",)

    async def on_start(self) -> None:
        structlog.get_logger("pinger").info("pinger.version", version=VERSION)

    @handles(Ping)
    async def on_ping(self, ctx: Context[Ping]) -> None:
        pass
'''


def l9_process(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m l9 ARGS`` in ``cwd``, its stdout and stderr to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "l9", *args], env=env, cwd=cwd, stdout=out, stderr=out)


def events(log: Path, name: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            found.append(json.loads(line))
    return found


def running(pid: object) -> bool:
    try:
        return psutil.Process(int(str(pid))).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.integration
async def test_an_edit_of_the_module_restarts_the_agent_process(
    l9_env: dict[str, str], tmp_path: Path
) -> None:
    folder = tmp_path / "my-agent"
    folder.mkdir()
    module = folder / "pinger_agent.py"
    module.write_text(AGENT.format(version=1))
    env = {**l9_env, "PYTHONPATH": f"{folder}:{ROOT}"}
    log = tmp_path / "reload.log"
    watcher = l9_process(["agent", "run", "pinger_agent:Pinger", "--reload"], env, folder, log)
    try:
        await wait_for(lambda: len(events(log, "agent.started")) == 1, timeout=120)
        (watching,) = events(log, "reload.watching")
        assert watching["paths"] == [str(folder)]
        assert [e["version"] for e in events(log, "pinger.version")] == [1]
        (first,) = events(log, "reload.started")

        os.utime(module)  # touched
        await wait_for(lambda: len(events(log, "agent.started")) == 2, timeout=120)
        (changed,) = events(log, "reload.changed")
        assert changed["files"] == ["pinger_agent.py"]
        second = events(log, "reload.started")[1]
        assert second["pid"] != first["pid"] and not running(first["pid"]) and running(second["pid"])
        assert events(log, "reload.stopped")[0]["exit_code"] == 0  # it drained, as on SIGTERM
        assert watcher.poll() is None, "the watcher itself was not restarted"

        module.write_text(AGENT.format(version=2))  # the author saves an edit
        await wait_for(lambda: len(events(log, "agent.started")) == 3, timeout=120)
        assert [e["version"] for e in events(log, "pinger.version")] == [1, 1, 2], "the new code runs"

        module.write_text(AGENT.format(version="3 +"))  # an edit that does not compile
        await wait_for(lambda: events(log, "reload.exited"), timeout=120)
        assert events(log, "reload.exited")[0]["exit_code"] != 0  # the agent could not be loaded
        module.write_text(AGENT.format(version=4))  # fixed: started again
        await wait_for(lambda: len(events(log, "agent.started")) == 4, timeout=120)
        last = events(log, "reload.started")[-1]

        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=60) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        for started in events(log, "reload.started"):  # nothing left behind, whatever happened
            if running(started["pid"]):
                psutil.Process(int(str(started["pid"]))).kill()
    assert not running(last["pid"])
    assert events(log, "agent.stopped"), "the agent drained and stopped on the watcher's SIGTERM"


def test_what_is_watched() -> None:
    project = [ROOT / name for name in PACKAGES]
    assert watched_paths("squarer") == project  # a built-in agent: the project's packages
    assert watched_paths("auditor") == project
    assert watched_paths("agents.demo:SquarerAgent") == project
    assert watched_paths("tests.testing_kit.kit_agents:Ponger") == [ROOT / "tests" / "testing_kit"]
    with pytest.raises(ValueError, match="cannot find the module 'no_such_module' of 'no_such_module:X'"):
        watched_paths("no_such_module:X")
