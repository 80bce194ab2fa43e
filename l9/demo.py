"""``l9 demo bus``: the stack, agents in their own processes, envelopes between them, the trail.

Publishes N tasks; ``squarer`` processes square them and emit results;
``summer`` stores them; the ``auditor`` appends every envelope to the Postgres
trail. The demo checks the sum, shows who did what, waits for the trail to
hold all 2N envelopes of the run, verifies the whole chain, writes the run's
signed evidence report, and stops every process with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from rich.console import Console
from rich.progress import Progress

from agents.auditor.report import render, report_from_trail
from agents.demo import Task, handled_key, results_key
from bus import Keys, Publisher, as_text, open_client
from bus.connection import RedisClient
from envelope import PacketEnvelope, new_id
from l9.devstack import StackEndpoints
from l9.settings import Settings
from l9.trail import open_trail

from .status import collect_status, render_status


@dataclass
class DemoResult:
    run: str
    published: int
    collected: int
    total: int
    expected: int
    handled_by: dict[str, int]
    audited: int = 0
    trail: str = ""
    trail_ok: bool = False
    report: Path | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.collected == self.published
            and self.total == self.expected
            and self.audited == 2 * self.published
            and self.trail_ok
            and self.report is not None
            and all(code == 0 for code in self.exit_codes.values())
        )


def spawn_agent(name: str, env: dict[str, str], log_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """``l9 agent run NAME ARGS`` as its own process, its output in a log file under ``log_dir``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    out = (log_dir / f"{name}-{time.time_ns()}.log").open("wb")
    command = [sys.executable, "-m", "l9", "agent", "run", name, *args]
    return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


async def run_demo(
    settings: Settings, endpoints: StackEndpoints, console: Console, *, count: int, squarers: int
) -> DemoResult:
    env = {
        **os.environ,
        "REDIS_URL": endpoints.redis_url,
        "DATABASE_URL": endpoints.database_url,
        "L9_NAMESPACE": settings.namespace,
        "L9_HOME": str(settings.home_dir),
    }
    # Small read batches, so the squarer processes visibly share the work.
    env.setdefault("L9_BATCH_SIZE", "10")
    env.setdefault("L9_CONCURRENCY", "4")
    log_dir = settings.home_dir / "logs"
    procs = {f"squarer#{i}": spawn_agent("squarer", env, log_dir) for i in range(squarers)}
    procs["summer"] = spawn_agent("summer", env, log_dir)
    procs["auditor"] = spawn_agent("auditor", env, log_dir)
    console.print(
        f"started {len(procs)} agent processes: "
        + ", ".join(f"{n} (pid {p.pid})" for n, p in procs.items())
        + f"; logs in {log_dir}"
    )
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
    keys = Keys(settings.namespace)
    try:
        result = await _exchange(redis, keys, settings, console, count)
        await _audit(settings, endpoints, console, result)
        render_status(await collect_status(redis, keys), console)
    finally:
        await redis.aclose()
        result_codes = stop_agents(procs)
    result.exit_codes = result_codes
    return result


async def _exchange(
    redis: RedisClient, keys: Keys, settings: Settings, console: Console, count: int
) -> DemoResult:
    run = new_id()
    publisher = Publisher(redis, keys, settings.signer())
    tasks = [
        PacketEnvelope.new(
            type="l9.demo.task.v1", source="agent://cli/demo", data=Task(n=i).model_dump(), correlation_id=run
        )
        for i in range(1, count + 1)
    ]
    await publisher.publish_many(tasks)
    console.print(f"run {run}: published {count} tasks on stream demo.tasks")
    collected = 0
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("results collected", total=count)
        with anyio.move_on_after(60):
            while collected < count:
                collected = int(await redis.hlen(results_key(keys, run)))
                progress.update(bar, completed=collected)
                await anyio.sleep(0.1)
    squares = await redis.hvals(results_key(keys, run))
    handled = await redis.hgetall(handled_key(keys, run))
    return DemoResult(
        run=run,
        published=count,
        collected=collected,
        total=sum(int(v) for v in squares),
        expected=sum(i * i for i in range(1, count + 1)),
        handled_by={as_text(k): int(v) for k, v in handled.items()},
    )


async def _audit(settings: Settings, endpoints: StackEndpoints, console: Console, result: DemoResult) -> None:
    """Wait for the trail to hold the run (tasks and results), verify it, write the report."""
    store = await open_trail(settings, endpoints, max_size=2)
    try:
        want = 2 * result.published
        with Progress(console=console, transient=True) as progress:
            bar = progress.add_task("envelopes in the audit trail", total=want)
            with anyio.move_on_after(60):
                while result.audited < want:
                    result.audited = len(await store.entries_for_correlation(result.run))
                    progress.update(bar, completed=result.audited)
                    await anyio.sleep(0.2)
        verified = await store.verify(trusted_keys=settings.audit_trusted())
        result.trail, result.trail_ok = verified.summary(), verified.ok
        report = await report_from_trail(store, result.run, settings.audit_signing_key())
    finally:
        await store.close()
    path = settings.home_dir / "reports" / f"{result.run}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(report, "md"), encoding="utf-8")
    result.report = path


def stop_agents(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, int | None]:
    """SIGTERM to every agent process still running, then their exit codes (None: killed after 30 s)."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes: dict[str, int | None] = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = None
    return codes
