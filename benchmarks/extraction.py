"""How long an extraction run takes end to end, per phase, on 5 and on 50 agents.

    .venv/bin/python -m benchmarks.extraction [--waves 10] [--per-wave 5]

Prints one JSON object on stdout (logs go to stderr and to the agents' log files):

* ``five_agent_s``: ``examples/tensoraios_ecosystem.md``, from publishing the request
  to the auditor's ``l9.report.ready.v1`` (what ``l9 extract`` waits for);
* ``five_agent_again_s`` / ``five_agent_again_phases_s``: the same request once more (the
  SymPy cache and compiled kernels warm, the processes' imports done);
* ``five_agent_phases_s``: phase -> seconds between the envelopes that open and close
  it, from their times in the audit trail (plan: request -> plan locked, generate ->
  generation completed, enforce -> enforcement completed, validate -> run completed,
  report -> report ready);
* ``fifty_agent_s`` / ``fifty_agent_phases_s``: the same for a generated collection of
  50 agents in 10 waves (:func:`fifty_agents`: chains of hard dependencies like the
  sample's, soft ones across waves, expressions on every fifth agent; ``--waves`` and
  ``--per-wave`` size it, for tests: the keys keep their names);
* baseline, in the same run on the same machine: ``planner_alone_s``, the planner
  process alone answering the 5-agent request (publish -> plan locked), in a namespace
  of its own; ``agents_start_s``: how long the seven agent processes took to be up.

Every agent is its own OS process (``l9 agent run``), one each (two SymPy workers), on
the embedded stack (or ``REDIS_URL`` / ``DATABASE_URL``) in a fresh namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import structlog

from agents.extraction import ExtractRequest
from bus import Keys, Publisher, connect
from envelope import PacketEnvelope, Signer, Verifier
from governance import load_policy_file
from l9.devstack import EmbeddedStack, StackEndpoints
from l9.extract_progress import RunProgress, RunWatcher, run_streams
from l9.logs import configure_logging
from l9.settings import Settings
from l9.trail import open_trail

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
#: (agent, instance) of every process.
PIPELINE = (
    ("planner", 0),
    ("generator", 0),
    ("enforcer", 0),
    ("validator", 0),
    ("auditor", 0),
    ("sympy", 0),
    ("sympy", 1),
)
#: Which envelope closes each phase (the request opens the first; each closes the next one's start).
PHASE_ENDS = (
    ("plan", "l9.plan.locked.v1"),
    ("generate", "l9.generate.completed.v1"),
    ("enforce", "l9.enforce.completed.v1"),
    ("validate", "l9.run.completed.v1"),
    ("report", "l9.report.ready.v1"),
)
RUN_TIMEOUT_S = 900.0
log = structlog.get_logger("benchmarks.extraction")


def agent_yaml(i: int, wave: int, per_wave: int) -> str:
    """Agent ``i`` of wave ``wave``: a controller chained to one agent of the wave before."""
    name = f"agent_{i:02d}"
    hard = [f"agent_{(wave - 1) * per_wave + i % per_wave:02d}"] if wave else []
    soft = [f"agent_{(wave - 2) * per_wave + (i + 1) % per_wave:02d}"] if wave > 1 else []
    kernels = i % 5 == 0
    files = ["__init__.py", "config.py", "payloads.py", f"{name}_controller.py", "governance_bridge.py"]
    files += (
        ["kernels.py", "__main__.py", "test_controller.py", "test_kernels.py"] if kernels else ["__main__.py"]
    )
    files += [] if kernels else ["test_controller.py"]
    lines = [
        f"system: Agent {i}",
        "module: fleet",
        f"name: {name}",
        f"role: Stage {wave} worker {i} of the benchmark fleet",
        f"rootpath: L9/fleet/w{wave}/{name}",
        f"depends_on: {{hard: [{', '.join(hard)}], soft: [{', '.join(soft)}]}}",
        "governance:",
        "  anchors: [Igor, Compliance]",
        f"  escalationpolicy: Escalate stage {wave} anomalies to Igor",
        "  auditscope: [decisions]",
        "memorytopology:",
        "  workingmemory: {storagetype: redis}",
        "  episodicmemory: {storagetype: postgres}",
        "cursorinstructions:",
        f"  generatefiles: [{', '.join(files)}]",
        "  generatedocs: [README.md, API.md]",
        "streams:",
        f"  consumes: [l9.fleet{i}.task.v1]",
        f"  produces: [l9.fleet{i}.done.v1]",
    ]
    if kernels:
        lines += [
            "expressions:",
            f'  score_{i}: "1/(1+exp(-(w{i}*x + y**2)))"',
            f'  cost_{i}: "(a - b)**2/(1 + c)"',
        ]
    return "\n".join(lines) + "\n"


def fifty_agents(path: Path, waves: int = 10, per_wave: int = 5) -> Path:
    """Write a collection of ``waves * per_wave`` agents (multi-document YAML) to ``path``."""
    documents = [
        agent_yaml(wave * per_wave + k, wave, per_wave) for wave in range(waves) for k in range(per_wave)
    ]
    path.write_text("---\n".join(documents), encoding="utf-8")
    return path


def spawn(name: str, env: dict[str, str], logs: Path, instance: int = 0) -> subprocess.Popen[bytes]:
    """``l9 agent run NAME --instance N`` (its consumer name fixed: ``NAME-N``), logging to ``logs``."""
    out = (logs / f"{name}-{instance}-{uuid.uuid4().hex[:6]}.log").open("wb")
    command = [sys.executable, "-m", "l9", "agent", "run", name, "--instance", str(instance)]
    return subprocess.Popen(command, env=env, stdout=out, stderr=out)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_up(settings: Settings, endpoints: StackEndpoints, names: list[str]) -> float:
    """Seconds until every consumer in ``names`` has a heartbeat."""
    started = time.perf_counter()
    redis, keys = connect(endpoints.redis_url), Keys(settings.namespace)
    try:
        with anyio.fail_after(180):
            while True:
                if not [n for n in names if not await redis.exists(keys.heartbeat(n))]:
                    break
                await anyio.sleep(0.1)
    finally:
        await redis.aclose()
    return time.perf_counter() - started


async def one_run(settings: Settings, endpoints: StackEndpoints, file: Path, until: str) -> tuple[str, float]:
    """Publish an extraction request of ``file``; (run id, seconds until an envelope of type
    ``until`` of the run arrives)."""
    redis, keys = connect(endpoints.redis_url), Keys(settings.namespace)
    keyring = settings.keyring()
    text = await anyio.Path(file).read_text(encoding="utf-8")
    request = ExtractRequest.of_text(text, file.name, "bench@l9", str(settings.home_dir / "extractions"))
    envelope = PacketEnvelope.new(
        type="l9.extract.request.v1",
        source="agent://bench/0",
        data=request.model_dump(mode="json"),
        kind="request",
    )
    watcher = RunWatcher(redis, keys, Verifier(keyring), run_streams(load_policy_file(settings.policy_file)))
    progress = RunProgress(envelope.correlation_id)
    try:
        await watcher.mark()
        started = time.perf_counter()
        await Publisher(redis, keys, Signer(keyring, settings.signing_key_id)).publish(envelope)
        with anyio.fail_after(RUN_TIMEOUT_S):
            while True:
                for got, payload in await watcher.read(progress.run, block_ms=100):
                    progress.apply(got, payload)
                    if got.type == until:
                        return progress.run, time.perf_counter() - started
    finally:
        await redis.aclose()


async def trail_phases(settings: Settings, endpoints: StackEndpoints, run: str) -> dict[str, Any]:
    """Phase -> seconds from the envelope times in the trail, and the run's figures."""
    store = await open_trail(settings, endpoints, max_size=2)
    try:
        with anyio.fail_after(60):
            while True:
                entries = await store.entries_for_correlation(run)
                types = {e.type: e for e in entries}
                if "l9.report.ready.v1" in types:
                    break
                await anyio.sleep(0.2)
    finally:
        await store.close()
    first = {e.type: e for e in reversed(entries)}
    phases, opened = {}, first["l9.extract.request.v1"].envelope_time
    for phase, closing in PHASE_ENDS:
        closed = first[closing].envelope_time
        phases[phase] = round((closed - opened).total_seconds(), 3)
        opened = closed
    facts = {
        "result": first["l9.run.completed.v1"].envelope().data["result"],
        "files": len(first["l9.generate.completed.v1"].envelope().data["files"]),
        "records": len(entries),
    }
    tests = first.get("l9.validation.tests.v1")
    if tests is not None:
        data = tests.envelope().data
        facts |= {
            "tests": data["tests"],
            "pass_rate": data["pass_rate"],
            "coverage_percent": data["coverage_percent"],
        }
    return {"phases_s": phases, **facts}


async def planner_alone(
    settings: Settings, endpoints: StackEndpoints, env: dict[str, str], logs: Path
) -> float:
    planner = spawn("planner", env, logs)
    try:
        await wait_up(settings, endpoints, ["planner-0"])
        _, seconds = await one_run(settings, endpoints, SAMPLE, "l9.plan.locked.v1")
        return seconds
    finally:
        stop([planner])


async def pipeline(
    settings: Settings, endpoints: StackEndpoints, env: dict[str, str], logs: Path, fleet: tuple[int, int]
) -> dict[str, Any]:
    procs = [spawn(name, env, logs, instance) for name, instance in PIPELINE]
    try:
        names = ["planner-0", "generator-0", "enforcer-0", "validator-0", "auditor-0", "auditor-reporter-0"]
        start_s = await wait_up(settings, endpoints, [*names, "sympy-0", "sympy-1"])
        five, five_s = await one_run(settings, endpoints, SAMPLE, "l9.report.ready.v1")
        five_facts = await trail_phases(settings, endpoints, five)
        again, again_s = await one_run(settings, endpoints, SAMPLE, "l9.report.ready.v1")
        again_facts = await trail_phases(settings, endpoints, again)
        collection = fifty_agents(Path(tempfile.mkdtemp()) / "fleet50.yaml", *fleet)
        fifty, fifty_s = await one_run(settings, endpoints, collection, "l9.report.ready.v1")
        fifty_facts = await trail_phases(settings, endpoints, fifty)
    finally:
        stop(procs)
    return {
        "five_agent_s": round(five_s, 3),
        "five_agent_phases_s": five_facts.pop("phases_s"),
        "five_agent": five_facts,
        "five_agent_again_s": round(again_s, 3),
        "five_agent_again_phases_s": again_facts.pop("phases_s"),
        "fifty_agent_s": round(fifty_s, 3),
        "fifty_agent_phases_s": fifty_facts.pop("phases_s"),
        "fifty_agent": fifty_facts,
        "agents_start_s": round(start_s, 3),
    }


def settings_for(home: Path, endpoints: StackEndpoints, namespace: str) -> tuple[Settings, dict[str, str]]:
    """This process's settings and the agents' environment: one stack, home and namespace."""
    env = {
        **os.environ,
        "REDIS_URL": endpoints.redis_url,
        "DATABASE_URL": endpoints.database_url,
        "L9_HOME": str(home),
        "L9_NAMESPACE": namespace,
        "L9_LOG_LEVEL": "warning",
    }
    fields = {"REDIS_URL": endpoints.redis_url, "DATABASE_URL": endpoints.database_url}
    return Settings.model_validate({**fields, "home": home, "namespace": namespace}), env


async def main(waves: int = 10, per_wave: int = 5) -> dict[str, Any]:
    """The figures; the generated collection has ``waves * per_wave`` agents."""
    configure_logging("warning")  # stderr; stdout is the JSON figures only
    home = Path(tempfile.mkdtemp(prefix="l9-bench-extraction-"))
    external = os.environ.get("REDIS_URL") and os.environ.get("DATABASE_URL")
    stack = None if external else EmbeddedStack(home / "stack")
    endpoints = (
        StackEndpoints(os.environ["REDIS_URL"], os.environ["DATABASE_URL"]) if stack is None else stack.up()
    )
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        run_id = uuid.uuid4().hex[:8]
        base_settings, base_env = settings_for(home / "baseline", endpoints, f"benchbase{run_id}")
        alone_s = await planner_alone(base_settings, endpoints, base_env, logs)
        settings, env = settings_for(home / "pipeline", endpoints, f"bench{run_id}")
        figures = await pipeline(settings, endpoints, env, logs, (waves, per_wave))
    finally:
        if stack is not None:
            stack.down()
    return {
        **figures,
        "planner_alone_s": round(alone_s, 3),
        "method": (
            "every agent its own OS process on the embedded stack; wall time from publishing the request "
            "to the report-ready envelope as l9 extract sees it; phases from envelope times in the trail; "
            "baseline: the planner process alone answering the same 5-agent request"
        ),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "logs": str(logs)},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=10, help="waves of the generated collection")
    parser.add_argument("--per-wave", type=int, default=5, help="agents per wave of it")
    return parser.parse_args(argv)


if __name__ == "__main__":
    cli = parse_args()
    print(json.dumps(anyio.run(main, cli.waves, cli.per_wave), indent=2, sort_keys=True))
