"""The compose profile ``cluster`` of docker-compose.yml: six Redis Cluster nodes, the job that forms
the cluster (deploy/redis-cluster-init.sh) and every agent again, on the cluster.

Checked here against the file itself, against docker-compose 1.29 (``config``, and which services
its ``up`` and ``run`` start, by its own code), and by running deploy/redis-entrypoint.sh and
deploy/redis-cluster-init.sh with stand-ins for redis-server and redis-cli. The same scripts with
real nodes and a real redis-cli: tests/integration/test_compose_cluster.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.doctools.compose_shim import COMPOSE_TOOLS
from tests.doctools.markdown import DOCS, blocks, commands
from tests.unit.test_specs import _compose, _l9, agent_services

DOCKER_COMPOSE = COMPOSE_TOOLS / "docker-compose"
needs_compose = pytest.mark.skipif(
    not DOCKER_COMPOSE.exists(),
    reason=f"docker-compose 1.29 is not in {DOCKER_COMPOSE.parent}: `make test` installs it",
)
NODES = [f"redis-node-{i}" for i in range(1, 7)]
AGENTS = {"planner", "generator", "enforcer", "validator", "auditor", "sympy", "lineage"}
ENTRYPOINT = ROOT / "deploy" / "redis-entrypoint.sh"
INIT = ROOT / "deploy" / "redis-cluster-init.sh"


def _pairs(command: list[str]) -> dict[str, str]:
    """``["--opt", "value", ...]`` as a mapping (every option of a node's command takes one value)."""
    assert len(command) % 2 == 0 and all(c.startswith("--") for c in command[::2]), command
    return dict(zip(command[::2], command[1::2], strict=True))


def test_without_the_profile_the_deployment_is_the_standalone_one() -> None:
    services = _compose()["services"]
    default = {name for name, svc in services.items() if not svc.get("profiles")}
    assert default == {"redis", "postgres", "neo4j"} | AGENTS
    for name in default:
        text = json.dumps(services[name])
        assert "redis-node" not in text and "L9_REDIS_CLUSTER" not in text, name
    cluster = {name for name, svc in services.items() if svc.get("profiles") == ["cluster"]}
    assert cluster == {*NODES, "redis-cluster-init"} | {f"{a}-cluster" for a in AGENTS}
    assert services["l9-cluster"]["profiles"] == ["tools"]  # like `l9`: never started by `up`


def test_every_node_is_the_standalone_redis_in_cluster_mode_with_the_same_acl_file() -> None:
    compose = _compose()
    services, redis = compose["services"], compose["services"]["redis"]
    volumes = []
    for name in NODES:
        node = services[name]
        assert node["image"] == redis["image"] == "redis:8"
        assert node["entrypoint"] == redis["entrypoint"]  # deploy/redis-entrypoint.sh: ACL file + `default`
        assert node["secrets"] == redis["secrets"] == ["redis_users"]  # the one rendered ACL file
        assert node["environment"] == redis["environment"]  # REDIS_ADMIN_PASSWORD, REDISCLI_AUTH
        assert node["healthcheck"] == redis["healthcheck"]
        data, mount = node["volumes"]
        assert mount == "./deploy/redis-entrypoint.sh:/etc/l9/redis-entrypoint.sh:ro" in redis["volumes"]
        assert data == f"{name}:/data" and name in compose["volumes"]
        volumes.append(data)
        command = node["command"]
        assert command[: len(redis["command"])] == redis["command"]  # the same AOF as standalone
        options = _pairs(command)
        assert options["--cluster-enabled"] == "yes" and options["--cluster-config-file"] == "nodes.conf"
        assert options["--appendonly"] == "yes"
        # clients are sent to the service name, which Compose's DNS resolves, not to an IP
        assert options["--cluster-announce-hostname"] == name
        assert options["--cluster-preferred-endpoint-type"] == "hostname"
        assert int(options["--cluster-node-timeout"]) <= 15000
    assert len(set(volumes)) == 6, "every node keeps its own data and nodes.conf"


def test_the_init_job_forms_one_cluster_of_the_six_nodes_with_a_replica_each() -> None:
    compose = _compose()
    init, redis = compose["services"]["redis-cluster-init"], compose["services"]["redis"]
    assert init["image"] == "redis:8" and init.get("restart", "no") == "no"  # one-shot
    assert init["entrypoint"] == ["sh", "/etc/l9/redis-cluster-init.sh"]
    assert init["volumes"] == ["./deploy/redis-cluster-init.sh:/etc/l9/redis-cluster-init.sh:ro"]
    assert (ROOT / "deploy/redis-cluster-init.sh").exists()
    assert init["command"] == ["--cluster-replicas", "1", *(f"{n}:6379" for n in NODES)]
    assert init["depends_on"] == {n: {"condition": "service_healthy"} for n in NODES}
    assert init["environment"]["REDISCLI_AUTH"] == redis["environment"]["REDISCLI_AUTH"]  # as `default`


SAME_IN_BOTH = (
    "command",
    "image",
    "restart",
    "stop_grace_period",
    "volumes",
    "secrets",
    "deploy",
    "healthcheck",
)


def _on_node_1(url: str) -> str:
    """A standalone agent's REDIS_URL, at the cluster's first node instead."""
    assert "@redis:6379/" in url, url
    return url.replace("@redis:6379/", "@redis-node-1:6379/")


def test_every_agent_has_a_twin_on_the_cluster_that_differs_only_in_its_redis() -> None:
    compose = _compose()
    standalone, twins = agent_services(compose), agent_services(compose, "cluster")
    assert set(standalone) == set(twins) == AGENTS
    for name, twin in twins.items():
        alone = standalone[name]
        assert [k for k in compose["services"] if compose["services"][k] is twin] == [f"{name}-cluster"]
        env, alone_env = dict(twin["environment"]), dict(alone["environment"])
        assert env.pop("L9_REDIS_CLUSTER") == "yes", name
        assert env.pop("REDIS_URL") == alone_env.pop("REDIS_URL").replace(
            "@redis:6379/", "@redis-node-1:6379/"
        )
        assert env == alone_env, name
        for key in (
            "command",
            "image",
            "restart",
            "stop_grace_period",
            "volumes",
            "secrets",
            "deploy",
            "healthcheck",
        ):
            assert twin.get(key) == alone.get(key), (name, key)
        depends = dict(alone["depends_on"])
        assert depends.pop("redis") == {"condition": "service_healthy"}
        depends = {f"{k}-cluster" if k in AGENTS else k: v for k, v in depends.items()}
        depends["redis-cluster-init"] = {"condition": "service_completed_successfully"}
        assert twin["depends_on"] == depends, name
    tools, l9 = compose["services"]["l9-cluster"], compose["services"]["l9"]
    env = dict(tools["environment"])
    assert env.pop("L9_REDIS_CLUSTER") == "yes"
    assert env.pop("REDIS_URL") == l9["environment"]["REDIS_URL"].replace(
        "@redis:6379/", "@redis-node-1:6379/"
    )
    assert env == {k: v for k, v in l9["environment"].items() if k != "REDIS_URL"}
    assert tools["volumes"] == l9["volumes"] and tools["secrets"] == l9["secrets"]


def _deployed(tmp_path: Path) -> Path:
    """A folder as after OPERATIONS.md's first commands: ACL file, .env, audit key, the compose file."""
    assert _l9(tmp_path, "acl", "render").returncode == 0
    deployed = _l9(tmp_path, "deploy", "env")
    assert deployed.returncode == 0, deployed.stderr
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    (tmp_path / "deploy").mkdir()
    for script in ("redis-entrypoint.sh", "redis-cluster-init.sh"):
        shutil.copy(ROOT / "deploy" / script, tmp_path / "deploy")
    return tmp_path


@needs_compose
def test_docker_compose_config_resolves_the_cluster_profile(tmp_path: Path) -> None:
    project = _deployed(tmp_path)
    done = subprocess.run(
        [str(DOCKER_COMPOSE), "--profile", "cluster", "config"],
        cwd=project,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    for name in NODES:
        node = services[name]
        mounts = {v.split(":")[1]: v.split(":")[0] for v in node["volumes"]}
        assert Path(mounts["/etc/l9/redis-entrypoint.sh"]) == project / "deploy/redis-entrypoint.sh"
        assert node["secrets"] == [{"source": "redis_users"}]
        assert "--cluster-enabled" in node["command"]
    init = services["redis-cluster-init"]
    assert f"{project}/deploy/redis-cluster-init.sh:/etc/l9/redis-cluster-init.sh:ro" in init["volumes"]
    password = json.loads((project / ".l9/redis-passwords.json").read_text())["sympy"]
    sympy = services["sympy-cluster"]["environment"]
    assert sympy["REDIS_URL"] == f"redis://l9-sympy:{password}@redis-node-1:6379/0"
    for agent in AGENTS:
        assert services[f"{agent}-cluster"]["environment"]["L9_REDIS_CLUSTER"] == "yes"  # a string


#: Which services docker-compose 1.29 starts for ``[--profile P]... up|run [SERVICE...]``: its own
#: Project.get_services, as its ``up`` calls it (with the dependencies), on a fake engine.
STARTED = """
import json, sys
import docker.errors
from compose.config import config
from compose.config.environment import Environment
from compose.project import Project

class NoEngine:
    def __getattr__(self, name):
        def missing(*args, **kwargs):
            raise docker.errors.NotFound(f"no Docker engine here ({name})")
        return missing

profiles, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
environment = Environment.from_env_file(".")
data = config.load(config.find(".", None, environment))
project = Project.from_config("l9", data, NoEngine(), enabled_profiles=profiles)
try:
    print(json.dumps(sorted(s.name for s in project.get_services(names, include_deps=True))))
except Exception as exc:
    print(json.dumps(f"{type(exc).__name__}: {exc}"))
"""


def _started(project: Path, profiles: list[str], names: list[str]) -> Any:
    done = subprocess.run(
        [str(COMPOSE_TOOLS / "python"), "-c", STARTED, json.dumps(profiles), json.dumps(names)],
        cwd=project,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _documented_cluster_up() -> tuple[list[str], list[str]]:
    """The profiles and services of OPERATIONS.md's ``docker compose --profile cluster up``."""
    found = [
        shlex.split(c.text)
        for b in blocks(DOCS / "OPERATIONS.md")
        if b.kind == "sh"
        for c in commands(b)
        if c.text.startswith("docker compose --profile cluster up")
    ]
    assert len(found) == 1, found
    words = found[0][2:]
    profiles = [words[i + 1] for i, w in enumerate(words) if w == "--profile"]
    after_up = words[words.index("up") + 1 :]
    return profiles, [w for w in after_up if not w.startswith("-")]


@needs_compose
def test_the_documented_commands_start_the_cluster_deployment_and_nothing_else(tmp_path: Path) -> None:
    project = _deployed(tmp_path)
    standalone = sorted({"redis", "postgres", "neo4j"} | AGENTS)
    assert _started(project, [], []) == standalone  # `docker compose up`: as before
    profiles, names = _documented_cluster_up()
    assert profiles == ["cluster"] and sorted(names) == sorted(f"{a}-cluster" for a in AGENTS)
    cluster = sorted([*NODES, "redis-cluster-init", "postgres", "neo4j", *names])
    assert _started(project, profiles, names) == cluster  # no standalone redis, no standalone agent
    # ... which a bare `--profile cluster up` would not give: it adds the services of no profile
    assert set(_started(project, ["cluster"], [])) == set(cluster) | set(standalone)
    tools = _started(project, ["cluster"], ["l9-cluster"])
    assert tools == sorted(["l9-cluster", *NODES, "redis-cluster-init", "postgres"])
    assert "not enabled by the active profiles" in _started(project, [], ["l9-cluster"])


# -- deploy/redis-entrypoint.sh, with stand-ins ------------------------------------------------
def _stub(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _entrypoint(tmp_path: Path, *args: str, password: str = "pw", **extra: str) -> list[str]:
    """Run the entrypoint with a redis-server that records its arguments; return them."""
    users = tmp_path / "redis-users.acl"
    if not users.exists():
        users.write_text("user l9-x on #ab ~l9:* +ping\n")
    record = tmp_path / "args"
    record.unlink(missing_ok=True)
    server = _stub(tmp_path, "redis-server", f'for a in "$@"; do echo "$a"; done > {record}')
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "L9_REDIS_START": str(server),
        "L9_ACL_SOURCE": str(users),
        "L9_ACL_EFFECTIVE": str(data / "users.acl"),
        "REDIS_ADMIN_PASSWORD": password,
        **extra,
    }
    done = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return record.read_text().splitlines() if record.exists() else []


def test_a_cluster_node_gets_the_admin_password_for_replication_in_a_private_file(tmp_path: Path) -> None:
    command = _compose()["services"]["redis-node-3"]["command"]
    password = 'p"w\\x'
    args = _entrypoint(tmp_path, *command, password=password)
    conf = tmp_path / "data" / "replication.conf"
    # the config file first (as redis-server wants it), the compose command, then the ACL file
    assert args == [str(conf), *command, "--aclfile", str(tmp_path / "data" / "users.acl")]
    assert conf.read_text() == 'masterauth "p\\"w\\\\x"\n'  # redis' quoting: \" and \\
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert password not in " ".join(args)  # never on a command line


def test_the_standalone_redis_starts_as_before(tmp_path: Path) -> None:
    command = _compose()["services"]["redis"]["command"]
    assert _entrypoint(tmp_path, *command) == [*command, "--aclfile", str(tmp_path / "data" / "users.acl")]
    assert not (tmp_path / "data" / "replication.conf").exists()


def test_reload_acl_writes_the_file_again_from_the_secret_then_loads_it(tmp_path: Path) -> None:
    _entrypoint(tmp_path, *_compose()["services"]["redis-node-1"]["command"])
    (tmp_path / "redis-users.acl").write_text("user l9-new on #cd ~l9:* +ping\n")  # rendered again
    record = tmp_path / "cli-args"
    cli = _stub(tmp_path, "redis-cli", f'echo "$@" > {record}; echo OK')
    assert _entrypoint(tmp_path, "reload-acl", "-p", "7001", L9_REDIS_CLI=str(cli)) == []  # no server start
    assert record.read_text().split() == ["-p", "7001", "ACL", "LOAD"]
    effective = (tmp_path / "data" / "users.acl").read_text().splitlines()
    assert effective[0] == "user l9-new on #cd ~l9:* +ping" and effective[1].startswith("user default on #")


# -- deploy/redis-cluster-init.sh, with a stand-in redis-cli -------------------------------------
#: A redis-cli that answers from a JSON state of the nodes (``FAKE_CLUSTER``) and records every
#: call: ``down`` (PINGs refused before it answers; -1: never), ``known``, ``slots``, ``ok``,
#: ``linked`` (its links up), ``unknown_endpoints`` (CLUSTER SLOTS calls that still show "?").
#: ``--cluster create`` forms the nodes; once every node has met every other, they are linked.
FAKE_CLI = """
import json, os, sys
path = os.environ["FAKE_CLUSTER"]
state = json.load(open(path))
args = sys.argv[1:]
state["calls"].append(args)
nodes = state["nodes"]

def done(text="", code=0):
    json.dump(state, open(path, "w"))
    sys.stdout.write(text)
    sys.exit(code)

if args[:2] == ["--cluster", "create"]:
    for name in [a for a in args[2:] if ":" in a]:
        nodes[name].update(known=len(nodes), slots=5461, ok=True, linked=True)
    done(">>> Performing hash slots allocation on 6 nodes...\\n")
if args[:2] == ["--cluster", "check"]:
    good = all(n["ok"] and n["linked"] for n in nodes.values())
    done("[OK] All 16384 slots covered.\\n" if good else "[ERR] Not all slots covered\\n", 1 - good)
assert args[0] == "-h" and args[2] == "-p", args
node, command = nodes[args[1] + ":" + args[3]], args[4:]
if node["down"]:
    node["down"] -= node["down"] > 0
    done("", 1)
if command == ["PING"]:
    done("PONG\\n")
if command == ["CLUSTER", "INFO"]:
    state_ = "ok" if node["ok"] else "fail"
    done(f"cluster_state:{state_}\\r\\ncluster_slots_assigned:{node['slots']}\\r\\n"
         f"cluster_known_nodes:{node['known']}\\r\\n")
if command == ["CLUSTER", "NODES"]:
    lines = [
        f"id{i} 127.0.0.1:{7000 + i}@{17000 + i} {'myself,' * (i == 0)}master - 0 0 1 "
        f"{'connected' if node['linked'] or i == 0 else 'disconnected'}\\r\\n"
        for i in range(node["known"])
    ]
    done("".join(lines))
if command == ["CLUSTER", "SLOTS"]:
    unknown = node["unknown_endpoints"] > 0
    node["unknown_endpoints"] -= unknown
    done("0\\n16383\\n" + ("?" if unknown else "localhost") + "\\n6379\\nid0\\n")
if command[:2] == ["CLUSTER", "MEET"]:
    node.setdefault("met", []).append(command[2] + ":" + command[3])
    if all(len(n.get("met", [])) == len(nodes) - 1 for n in nodes.values()):
        for n in nodes.values():
            n.update(linked=True, ok=True)
    done("OK\\n")
done("ERR unknown command\\n", 1)
"""


def _node(**state: Any) -> dict[str, Any]:
    base = {"down": 0, "known": 1, "slots": 0, "ok": False, "linked": False, "unknown_endpoints": 0}
    return base | state


class FakeCluster:
    def __init__(self, folder: Path, nodes: dict[str, dict[str, Any]]) -> None:
        self.state = folder / "cluster.json"
        self.state.write_text(json.dumps({"nodes": nodes, "calls": []}))
        self.bin = folder / "bin"
        self.bin.mkdir(exist_ok=True)
        cli = self.bin / "redis-cli"
        cli.write_text(f"#!{sys.executable}\n{FAKE_CLI}")
        cli.chmod(0o755)

    def init(self, *args: str, wait_s: int = 20) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "FAKE_CLUSTER": str(self.state),
            "REDISCLI_AUTH": "pw",
            "L9_CLUSTER_WAIT_S": str(wait_s),
        }
        return subprocess.run(["sh", str(INIT), *args], env=env, capture_output=True, text=True, timeout=120)

    @property
    def data(self) -> dict[str, Any]:
        return dict(json.loads(self.state.read_text()))

    def calls(self, *prefix: str) -> list[list[str]]:
        found = self.data["calls"]
        return [
            c for c in found if c[: len(prefix)] == list(prefix) or c[4 : 4 + len(prefix)] == list(prefix)
        ]


def test_the_init_job_waits_for_every_node_then_creates_the_cluster_once(tmp_path: Path) -> None:
    args = _compose()["services"]["redis-cluster-init"]["command"]  # as the service runs it
    nodes = {f"{n}:6379": _node() for n in NODES}
    nodes["redis-node-2:6379"]["down"] = 2
    nodes["redis-node-5:6379"]["down"] = 4
    nodes["redis-node-4:6379"]["unknown_endpoints"] = 3  # a hostname not gossiped there yet
    fake = FakeCluster(tmp_path, nodes)
    first = fake.init(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert fake.calls("--cluster", "create") == [
        ["--cluster", "create", *(f"{n}:6379" for n in NODES), "--cluster-replicas", "1", "--cluster-yes"]
    ]
    pings = [c for c in fake.calls("PING") if c[1] == "redis-node-5"]
    assert len(pings) == 5  # refused 4 times, then answered
    assert fake.data["nodes"]["redis-node-4:6379"]["unknown_endpoints"] == 0  # waited until known
    assert "cluster ok" in first.stdout and "[OK] All 16384 slots covered." in first.stdout

    again = fake.init(*args)
    assert again.returncode == 0, again.stderr
    assert "formed already: nothing to do" in again.stdout
    assert len(fake.calls("--cluster", "create")) == 1 and fake.calls("CLUSTER", "MEET") == []


def test_nodes_that_lost_each_other_meet_again_at_their_addresses(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{7001 + i}" for i in range(6)]
    formed_before = _node(known=6, slots=5461, ok=True, linked=False)  # ok, yet reaching nobody
    fake = FakeCluster(tmp_path, {a: dict(formed_before) for a in addresses})
    done = fake.init("--cluster-replicas", "1", *addresses)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "introducing them again" in done.stdout
    assert fake.calls("--cluster", "create") == []
    met = {(c[3], c[7]) for c in fake.calls("CLUSTER", "MEET")}  # (node asked, port it met)
    assert met == {(a.split(":")[1], b.split(":")[1]) for a in addresses for b in addresses if a != b}


def test_new_nodes_among_formed_ones_are_left_to_the_operator(tmp_path: Path) -> None:
    nodes = {f"{n}:6379": _node(known=6, slots=5461, ok=True, linked=True) for n in NODES}
    nodes["redis-node-6:6379"] = _node()  # its volume lost: a new node
    fake = FakeCluster(tmp_path, nodes)
    done = fake.init("--cluster-replicas", "1", *nodes)
    assert done.returncode == 1
    assert "1 of 6 nodes are new, the others are in a cluster" in done.stderr
    assert fake.calls("--cluster", "create") == [] and fake.calls("CLUSTER", "MEET") == []


def test_the_init_job_gives_up_on_a_node_that_never_answers(tmp_path: Path) -> None:
    nodes = {f"{n}:6379": _node() for n in NODES}
    nodes["redis-node-3:6379"]["down"] = -1
    fake = FakeCluster(tmp_path, nodes)
    started = time.monotonic()
    done = fake.init("--cluster-replicas", "1", *nodes, wait_s=2)
    assert done.returncode == 1
    assert "redis-node-3:6379 does not answer PING" in done.stderr
    assert time.monotonic() - started < 60 and fake.calls("--cluster", "create") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a:1", "b:1", "c:1"], "usage: redis-cluster-init.sh --cluster-replicas N"),
        (["--cluster-replicas", "x", "a:1", "b:1", "c:1"], "usage"),
        (["--cluster-replicas", "1", "a:1", "b:1"], "a cluster needs at least 3 nodes, got 2"),
    ],
)
def test_the_init_job_refuses_a_wrong_command(tmp_path: Path, args: list[str], message: str) -> None:
    done = FakeCluster(tmp_path, {}).init(*args)
    assert done.returncode == 1 and message in done.stderr
