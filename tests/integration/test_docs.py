"""Every command of docs/*.md, run as its reader runs it (conventions: tests/doctools/markdown.py).

* INTEGRATION.md from the checkout, with a fresh HOME: the reader's own folder,
  its own embedded stack (``l9 dev up``), their agent calling the SymPy tool.
* OPERATIONS.md in a copy of the deployment files, ``docker compose`` through
  tests/doctools/compose_shim.py, on the test's stack, with a pending escalation
  and a dead letter waiting, as in a running deployment.
* ARCHITECTURE.md and PERFORMANCE.md in an empty folder (the benchmarks with
  test-size arguments appended: see :data:`BENCH_SIZES`).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from bus import DeadLetters, Keys, Publisher
from bus.connection import RedisClient
from envelope import Ed25519Signer, PacketEnvelope
from governance import Escalations, PolicyEngine, Request
from l9.deploy import read_env
from l9.devstack import StackEndpoints
from tests.conftest import ROOT, run_l9
from tests.doctools.compose_shim import COMPOSE_TOOLS
from tests.doctools.markdown import DOCS, Block, blocks, commands
from tests.doctools.runner import DocRun, base_env, check_outputs, run_doc

pytestmark = pytest.mark.integration
VENV_BIN = str(ROOT / ".venv" / "bin")
#: What each benchmark of PERFORMANCE.md gets appended in the test (argparse: the last value
#: wins), so the documented command runs, prints its JSON, and is quick.
BENCH_SIZES = {
    "benchmarks.bus_throughput": "--n 2000 --reps 1 --warmup 200 --latency-s 0.5",
    # a partitioned run of 1 and 2 chains (not 4: seven auditor processes), a small proof run
    "benchmarks.audit_throughput": "--n 2000 --partitions 1,2 --partitions-n 3000 --proof-n 5000",
    "benchmarks.governance": "--agents 1 --modules 2 --reps 1",
    # the two expressions PERFORMANCE.md cites (the polynomial always runs); no evalf loop for
    # the determinant (its evalf figure is not cited, one point of it costs some 20 s of CPU)
    "benchmarks.sympy_backends": (
        "--points 2000 --reps 1 --roundtrips 20 --evalf-s 0.05 --load-runs 1"
        " --expressions determinant_6x6 --evalf-max-ops 1000"
    ),
    "benchmarks.graph_projection": "--envelopes 500 --lineages 20",
    "benchmarks.validator": "--reps 1",
    # the 5-agent sample as documented (twice); the generated collection: 2 agents, not 50
    "benchmarks.extraction": "--waves 2 --per-wave 1",
    "benchmarks.cluster": "--n 1000 --reps 1 --warmup 100",
}
#: Per command: catches a hang only (each takes well under a minute on a quiet machine).
BENCH_TIMEOUT_S = 600


def assert_ran(doc: Path, run: DocRun) -> None:
    assert run.returncode == 0, (
        f"{doc.name}: {run.failed_command or f'exit {run.returncode}'}\n"
        f"{run.stdout[-4000:]}\n--- stderr ---\n{run.stderr[-4000:]}"
    )
    assert check_outputs(doc, run) == []


def test_integration_md_gives_a_working_agent(tmp_path: Path) -> None:
    doc = DOCS / "INTEGRATION.md"
    env = base_env(tmp_path, "")  # not even the virtualenv: the page activates it
    try:
        run = run_doc(doc, cwd=ROOT, env=env, timeout=300)
    finally:
        stack_home = tmp_path / "area-agent" / ".l9"
        if stack_home.exists():
            subprocess.run(
                [f"{VENV_BIN}/l9", "dev", "down"], env={**env, "L9_HOME": str(stack_home)}, timeout=60
            )
    assert_ran(doc, run)
    agent_file = tmp_path / "area-agent" / "area_agent.py"
    (saved,) = [b for b in blocks(doc) if b.kind == "file"]
    assert agent_file.read_text() == saved.text
    assert "stopped" in run.stdout.splitlines()[-2]  # l9 dev down, after both agents exited
    assert "agent.stopped" in run.stderr and "Traceback" not in run.stderr


def test_architecture_md(tmp_path: Path) -> None:
    doc = DOCS / "ARCHITECTURE.md"
    run = run_doc(doc, cwd=tmp_path, env=base_env(tmp_path, VENV_BIN), timeout=120)
    assert_ran(doc, run)
    assert json.loads((tmp_path / "asyncapi.json").read_text())["asyncapi"] == "3.0.0"


def test_performance_md_commands_print_the_figures_it_cites(tmp_path: Path) -> None:
    doc = DOCS / "PERFORMANCE.md"
    env = base_env(tmp_path, VENV_BIN) | {"PYTHONPATH": str(ROOT)}
    for block in (b for b in blocks(doc) if b.kind == "sh"):
        for command in commands(block):
            module = shlex.split(command.text)[2]
            assert module in BENCH_SIZES, f"{block.where}: {module} has no test size in BENCH_SIZES"
            done = subprocess.run(
                ["bash", "-c", f"{command.text} {BENCH_SIZES[module]}"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=BENCH_TIMEOUT_S,
            )
            assert done.returncode == 0, f"{block.where}: {command.text}\n{done.stderr[-3000:]}"
            printed = printed_json(done.stdout)
            for key in cited_keys(doc, block):
                assert _lookup(printed, key) is not None, f"{block.where}: {module} prints no {key!r}"


def cited_keys(doc: Path, block: Block) -> list[str]:
    """The JSON keys cited in the first column of the table after ``block``: ``a.b`` in
    backquotes; ``.c`` right after one names a sibling (``a.c``)."""
    lines = doc.read_text().splitlines()[block.line + block.text.count("\n") + 1 :]
    keys: list[str] = []
    for line in itertools.dropwhile(lambda x: not x.startswith("|"), lines):
        if not line.startswith("|"):
            break
        for token in re.findall(r"`([^`]+)`", line.split("|")[1]):
            keys.append(keys[-1].rsplit(".", 1)[0] + token if token.startswith(".") else token)
    assert keys, f"{block.where}: no table of figures follows the command"
    return keys


def printed_json(stdout: str) -> Any:
    """The JSON object a benchmark prints (some print the embedded stack's log lines first)."""
    start = stdout.index("{\n") if not stdout.startswith("{") else 0
    return json.loads(stdout[start:])


def _lookup(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


# -- OPERATIONS.md ------------------------------------------------------------------------------
DEPLOYMENT_FILES = (
    "docker-compose.yml",
    "deploy/identity.yaml",
    "deploy/redis-entrypoint.sh",
    "examples/tensoraios_ecosystem.md",
)


def deployment(tmp_path: Path) -> Path:
    project = tmp_path / "deploy-here"
    for name in DEPLOYMENT_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project / name)
    return project


def shim_bin(tmp_path: Path) -> Path:
    """A ``docker`` on PATH that is tests/doctools/compose_shim.py."""
    folder = tmp_path / "shim-bin"
    folder.mkdir()
    docker = folder / "docker"
    docker.write_text(
        f'#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} -m tests.doctools.compose_shim "$@"\n'
    )
    docker.chmod(0o755)
    return folder


def prepare(project: Path, env: dict[str, str]) -> None:
    """What OPERATIONS.md's first two commands do, done first so the given state can be signed."""
    for args in (["acl", "render"], ["deploy", "env"]):
        done = subprocess.run(
            [f"{VENV_BIN}/l9", *args],
            cwd=project,
            env=env | {"L9_POLICY_FILE": "deploy/identity.yaml"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr


async def given_a_running_deployment(project: Path, redis: RedisClient, keys: Keys) -> dict[str, str]:
    """A pending escalation and a dead SymPy request, signed with the deployment's key."""
    agent_keys = project / "secrets" / "agent-keys"
    publisher = Publisher(redis, keys, Ed25519Signer.from_key_file(agent_keys / "enforcer.json"))
    caller = Publisher(redis, keys, Ed25519Signer.from_key_file(agent_keys / "cli.json"))
    engine = PolicyEngine.load(None)
    desk = Escalations(
        redis, publisher, spec=engine.escalation, anchors=engine.anchors, source="agent://enforcer/e-0"
    )
    decision = engine.evaluate(Request(type="l9.sympy.simplify.v1", data={"expr": "eval('1')"}))
    escalation = await desk.escalate(decision)
    request = PacketEnvelope.new(
        type="l9.sympy.simplify.v1",
        source="agent://doc-test/caller",
        data={"expr": "x + x"},
        kind="request",
        reply_to="rpc.doc-test",
    )
    stream = keys.stream("sympy")
    await redis.xgroup_create(stream, "sympy", id="$", mkstream=True)
    entry_id = await caller.publish(request, "sympy")
    read: Any = await redis.xreadgroup("sympy", "sympy-9", {stream: ">"})
    fields = read[0][1][0][1]
    dead = DeadLetters(redis, keys, "sympy", "sympy-9")
    await dead.letter("sympy", entry_id, fields, "delivery_cap", "the pool was restarting", 5)
    return {"escalation": escalation.id, "request": request.id}


async def test_operations_md(
    tmp_path: Path,
    stack: StackEndpoints,
    admin_dsn: str,
    keys: Keys,
    redis: RedisClient,
    agent_env: dict[str, str],
) -> None:
    doc = DOCS / "OPERATIONS.md"
    if not (COMPOSE_TOOLS / "docker-compose").exists():
        pytest.skip(f"docker-compose 1.29 is not in {COMPOSE_TOOLS.parent}: `make test` installs it")
    project = deployment(tmp_path)
    env = base_env(tmp_path, f"{shim_bin(tmp_path)}{os.pathsep}{VENV_BIN}")
    prepare(project, env)
    given = await given_a_running_deployment(project, redis, keys)
    env |= {
        "L9_DOC_STATE": str(tmp_path / "state"),
        "L9_DOC_REDIS_URL": stack.redis_url,
        "L9_DOC_DATABASE_URL": admin_dsn,
        "L9_DOC_NAMESPACE": keys.namespace,
        "L9_DOC_EMULATE": "sympy,auditor,planner,generator,enforcer,validator",
        "L9_DOC_ENV": json.dumps({"L9_SYMPY_WORKERS": "1", "L9_AUDIT_CHECKPOINT_INTERVAL_S": "1"}),
    }
    (tmp_path / "state").mkdir()
    try:
        run = run_doc(doc, cwd=project, env=env, timeout=240)
    finally:
        # the emulated agents are stopped whatever happened; a failing `down` is reported only
        # after the page's own result, so it never hides the command that failed first
        down = await anyio.run_process(["docker", "compose", "down"], cwd=project, env=env, check=False)
        cluster_home = tmp_path / "l9-cluster" / ".l9"  # the page's local cluster (its last section)
        if cluster_home.exists():
            await anyio.run_process(
                [f"{VENV_BIN}/l9", "dev", "down"], env={**env, "L9_HOME": str(cluster_home)}, check=False
            )
    (tmp_path / "doc.stdout").write_text(run.stdout)  # kept for a look when something fails
    assert_ran(doc, run)
    assert down.returncode == 0, down.stderr.decode()
    await _check_operations(project, redis, keys, given, agent_env, admin_dsn)


async def _check_operations(
    project: Path,
    redis: RedisClient,
    keys: Keys,
    given: dict[str, str],
    agent_env: dict[str, str],
    admin_dsn: str,
) -> None:
    raw: Any = await redis.hget(keys.escalations_resolved("governance.resolutions"), given["escalation"])
    resolution = json.loads(raw)
    assert resolution["data"]["approved"] is True and resolution["data"]["by"] == "Igor", resolution
    assert resolution["key_id"].startswith("Igor.k"), resolution  # the anchor's own key signed it
    assert resolution["data"]["signed_by"] == resolution["key_id"]
    assert await redis.xlen(keys.dead("sympy")) == 0
    # the replayed request was answered: its result is in the trail (the reply stream is trimmed later)
    trail = run_l9(
        "tail", "--json", "--correlation", given["request"], env={**agent_env, "DATABASE_URL": admin_dsn}
    )
    entries = [json.loads(line) for line in trail.stdout.splitlines()]
    replies = [e for e in entries if e["causation_id"] == given["request"] and "result" in e["type"]]
    assert [e["type"] for e in replies] == ["l9.sympy.expression_result.v1"], trail.stdout + trail.stderr
    assert "expr=2*x" in replies[0]["summary"]
    env = read_env(project / ".env")
    sympy_keys = [k for k in json.loads(env["L9_PUBLIC_KEYS"]) if k.startswith("sympy.")]
    assert sympy_keys == [json.loads((project / "secrets/agent-keys/sympy.json").read_text())["key_id"]]
    trusted = json.loads(env["L9_AUDIT_TRUSTED_KEYS"])
    assert len(trusted) == 1, "the old audit key stays trusted"
    checkpoints = (project.parent / "state/volumes/audit-checkpoints").glob("*.json")
    signers = {json.loads(p.read_text())["key_id"] for p in checkpoints}
    # checkpoints signed by the retired key, which `audit verify` (signatures checked) still accepted
    assert set(trusted) & signers, (trusted, signers)


# -- TESTING.md ----------------------------------------------------------------------------------


def _servers_of(folder: Path) -> list[str]:
    """Processes (the embedded Redis and PostgreSQL) still running with ``folder`` in their command line."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(folder) in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


def test_testing_md_tests_the_area_agent(tmp_path: Path) -> None:
    doc = DOCS / "TESTING.md"
    folder = tmp_path / "area-agent"  # where docs/INTEGRATION.md leaves its reader
    folder.mkdir()
    (agent,) = [b for b in blocks(DOCS / "INTEGRATION.md") if b.kind == "file"]
    assert agent.file is not None
    (folder / agent.file).write_text(agent.text)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    # not even the virtualenv (the page activates it); the plugin's stack in a folder of the test
    env = base_env(tmp_path, "") | {"TMPDIR": str(temporary)}
    run = run_doc(doc, cwd=ROOT, env=env, timeout=600)
    failed = run.failed_command or f"exit {run.returncode}"
    assert run.returncode == 0, f"{failed}\n{run.stdout[-4000:]}\n--- stderr ---\n{run.stderr[-4000:]}"
    assert check_outputs(doc, run) == []
    (tests,) = [b for b in blocks(doc) if b.kind == "file"]
    assert (folder / "test_area_agent.py").read_text() == tests.text
    # the session's own embedded stack: stopped, its folder removed
    assert [p.name for p in temporary.glob("l9-stack-*")] == []
    assert _servers_of(temporary) == []
