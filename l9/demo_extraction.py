"""``l9 demo`` (``make demo``): the extraction pipeline on the embedded stack, end to end.

Starts the planner, generator, enforcer, validator, auditor and two SymPy workers as
their own OS processes, waits until each has a live consumer, runs ``l9 extract`` on
the sample collection (the live table), then checks the result as a user would:
``l9 audit verify`` (the whole hash chain) and ``l9 report verify`` (the run's signed
report against the trail). Prints the extraction folder and the report path and stops
every agent with SIGTERM.

``signing="ed25519"`` runs it as a multi-tenant deployment signs: each agent process holds
its own Ed25519 key (``l9.devkeys``), everyone else only the public keys, and the shipped
policy's signer table decides who may emit what.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from rich.console import Console

from agents.runner import BUILTIN
from bus import Keys, open_client
from l9.demo import spawn_agent, stop_agents
from l9.devkeys import key_path, local_agent_keys, public_keys
from l9.devstack import StackEndpoints
from l9.extract_run import Options, Outcome, build_request, check_file, default_requester, extract
from l9.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
#: The agent processes of the pipeline: (built-in name, how many processes).
PIPELINE: tuple[tuple[str, int], ...] = (
    ("planner", 1),
    ("generator", 1),
    ("enforcer", 1),
    ("validator", 1),
    ("auditor", 1),
    ("sympy", 2),
)
#: How long the agents may take to start (imports, migrations, the SymPy worker pool).
START_TIMEOUT_S = 90.0
#: The key of the demo itself, which publishes the extraction request as ``l9 extract`` does.
CLI_KEY = "cli"


class DemoError(RuntimeError):
    """The demo cannot run (an agent is not built in, or does not start)."""


@dataclass
class ExtractionDemo:
    """What the demo did: the run's outcome, the checks, and the agents' exit codes."""

    outcome: Outcome | None = None
    checks: dict[str, int] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.outcome is not None
            and self.outcome.code == 0
            and set(self.checks) == {"audit verify", "report verify"}
            and all(code == 0 for code in self.checks.values())
            and all(code == 0 for code in self.exit_codes.values())
        )


def agent_env(settings: Settings, endpoints: StackEndpoints) -> dict[str, str]:
    """The agents' environment: this stack, namespace and home."""
    return {
        **os.environ,
        "REDIS_URL": endpoints.redis_url,
        "DATABASE_URL": endpoints.database_url,
        "L9_NAMESPACE": settings.namespace,
        "L9_HOME": str(settings.home_dir),
    }


def consumer_names() -> list[str]:
    """The consumer each agent process claims first (``<group>-<n>``)."""
    names = [f"{name}-{i}" for name, count in PIPELINE for i in range(count)]
    return [*names, "auditor-reporter-0"]


async def wait_started(
    settings: Settings, endpoints: StackEndpoints, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    """Until every agent has a live heartbeat; DemoError naming the ones that did not start."""
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
    keys = Keys(settings.namespace)
    waiting = consumer_names()
    try:
        with anyio.move_on_after(START_TIMEOUT_S):
            while waiting:
                exited = [n for n, p in procs.items() if p.poll() is not None]
                if exited:
                    raise DemoError(f"agent process(es) exited at start: {', '.join(exited)} (see the logs)")
                waiting = [n for n in waiting if not await redis.exists(keys.heartbeat(n))]
                await anyio.sleep(0.2)
    finally:
        await redis.aclose()
    if waiting:
        raise DemoError(f"no heartbeat after {START_TIMEOUT_S:g} s from: {', '.join(waiting)}")


def start_agents(
    env: dict[str, str], log_dir: Path, key_files: dict[str, Path] | None = None
) -> dict[str, subprocess.Popen[bytes]]:
    """Every agent process of the pipeline; with ``key_files``, each with its own signing key."""
    missing = [name for name, _ in PIPELINE if name != "auditor" and name not in BUILTIN]
    if missing:
        raise DemoError(f"agent(s) not built in: {', '.join(missing)} (agents/runner.py BUILTIN)")

    def env_of(name: str) -> dict[str, str]:
        return env if key_files is None else {**env, "L9_SIGNING_KEY_FILE": str(key_files[name])}

    # Each process is given its consumer name (--instance): two processes of one agent starting
    # at once never end up with the same name, however slowly either one starts.
    return {
        f"{name}#{i}": spawn_agent(name, env_of(name), log_dir, "--instance", str(i))
        for name, count in PIPELINE
        for i in range(count)
    }


def with_agent_keys(settings: Settings, env: dict[str, str]) -> tuple[Settings, dict[str, Path]]:
    """Per-agent Ed25519 keys for the demo: the settings it signs with itself (as ``cli``) and
    each agent's key file; ``env`` gets the scheme and the public keys."""
    home = settings.home_dir
    public = public_keys(local_agent_keys(home, [*(name for name, _ in PIPELINE), CLI_KEY]))
    env.pop("L9_SIGNING_KEYS", None)
    env["L9_SIGNING_SCHEME"], env["L9_PUBLIC_KEYS"] = "ed25519", json.dumps(public, sort_keys=True)
    env["L9_SIGNING_KEY_FILE"] = str(key_path(home, CLI_KEY))  # the checks run as the operator
    own = settings.model_copy(
        update={
            "signing_scheme": "ed25519",
            "signing_keys": {},
            "signing_key_file": key_path(home, CLI_KEY),
            "public_keys": public,
        }
    )
    return own, {name: key_path(home, name) for name, _ in PIPELINE}


def check(command: list[str], env: dict[str, str], console: Console) -> int:
    """Run ``l9 COMMAND`` as a user would (warnings only in its log), its output shown; its exit code."""
    console.print(f"\n[bold]$ l9 {' '.join(command)}[/bold]")
    quiet = {**env, "L9_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, "-m", "l9", *command], env=quiet, check=False).returncode


async def run_extraction_demo(
    settings: Settings,
    endpoints: StackEndpoints,
    console: Console,
    *,
    file: Path,
    timeout_s: float,
    signing: str = "hmac",
) -> ExtractionDemo:
    result = ExtractionDemo()
    env = agent_env(settings, endpoints)
    key_files = None
    if signing == "ed25519":
        settings, key_files = with_agent_keys(settings, env)
        console.print(f"signing: Ed25519, one key per agent ({settings.home_dir / 'agent-keys'})")
    log_dir = settings.home_dir / "logs"
    text = check_file(file)
    procs = start_agents(env, log_dir, key_files)
    console.print(
        f"started {len(procs)} agent processes: "
        + ", ".join(f"{n} (pid {p.pid})" for n, p in procs.items())
        + f"; logs in {log_dir}"
    )
    try:
        started = time.monotonic()
        await wait_started(settings, endpoints, procs)
        console.print(f"every agent is consuming ({time.monotonic() - started:.1f} s)\n")
        console.print(f"[bold]$ l9 extract {_shown(file)}[/bold]")
        options = Options(file, None, True, False, timeout_s, default_requester(), True)
        result.outcome = await extract(options, settings, build_request(options, settings, text), console)
        report = result.outcome.progress.ready
        result.checks["audit verify"] = check(["audit", "verify"], env, console)
        if report is not None:
            result.checks["report verify"] = check(["report", "verify", report.path], env, console)
    finally:
        result.exit_codes = stop_agents(procs)
    return result


def _shown(file: Path) -> str:
    try:
        return str(file.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(file)
