"""``l9 agent run NAME --reload``: the agent in a child process, restarted when its code changes.

This process only watches (``watchfiles``): the folder of the agent's module, recursively,
for Python files; for a built-in agent, the project's packages (:data:`PACKAGES`). Changes
close together are one restart (``watchfiles`` debounces them for :data:`DEBOUNCE_MS`).
On a change the child is stopped as ``l9 agent run`` expects (SIGTERM: it drains; SIGKILL
after the grace period) and started again, with the same arguments; its consumer name
is released on a clean stop, so the new one takes the same name. A child that exits by
itself (an import error after an edit, say) is logged with its exit code and started
again at the next change. Ctrl-C or SIGTERM stops the child the same way; this process
then exits with the child's exit code. Logged: ``reload.watching``, ``reload.started``
(pid), ``reload.changed`` (the files), ``reload.stopped`` and ``reload.exited`` (exit code).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

import anyio
import structlog
from anyio.abc import TaskStatus
from watchfiles import PythonFilter, awatch

from agents.runner import BUILTIN
from l9.children import Child

log = structlog.get_logger("l9.reload")
ROOT = Path(__file__).resolve().parents[1]
#: The project's packages: what a built-in agent's process runs.
PACKAGES = ("agents", "bus", "envelope", "governance", "memory", "l9")
#: Changes within this many milliseconds are one restart.
DEBOUNCE_MS = 800
#: Agents started by name that are not ``BUILTIN`` classes (``l9.start``'s batch loops).
BATCH_AGENTS = ("auditor", "lineage")


def watched_paths(spec: str) -> list[Path]:
    """What to watch for ``l9 agent run SPEC``: the agent module's folder, or the project's
    packages for a built-in agent; ValueError when its module cannot be found."""
    project = [ROOT / name for name in PACKAGES]
    if spec in BUILTIN or spec in BATCH_AGENTS:
        return project
    module = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot find the module of {spec!r} to watch: {exc}") from None
    if found is None or found.origin is None:
        raise ValueError(f"cannot find the module {module!r} of {spec!r} to watch (is it on PYTHONPATH?)")
    folder = Path(found.origin).resolve().parent
    if any(folder.is_relative_to(p) for p in project):
        return project
    return [folder]


class Reloader:
    """The child ``command`` and what restarts it (see the module doc)."""

    def __init__(self, command: list[str], paths: list[Path], grace_s: float) -> None:
        self.command, self.paths, self.grace_s = command, paths, grace_s
        self.stopping = anyio.Event()
        self.child: Child | None = None

    async def run(self) -> int:
        log.info("reload.watching", paths=[str(p) for p in self.paths], debounce_ms=DEBOUNCE_MS)
        async with anyio.create_task_group() as tg:
            await tg.start(self._on_signals)
            await self._start(tg)
            watcher = awatch(
                *self.paths, watch_filter=PythonFilter(), debounce=DEBOUNCE_MS, stop_event=self.stopping
            )
            async for changes in watcher:
                log.info("reload.changed", files=shown(path for _, path in changes))
                await self._stop()
                await self._start(tg)
            code = await self._stop()
            tg.cancel_scope.cancel()
        return code

    async def _start(self, tg: anyio.abc.TaskGroup) -> None:
        child = await Child.start("agent", self.command, dict(os.environ), piped=False)
        self.child = child
        log.info("reload.started", pid=child.pid, command=self.command[3:])
        tg.start_soon(self._watch, child)

    async def _stop(self) -> int:
        assert self.child is not None
        code = await self.child.stop(self.grace_s)
        log.info("reload.stopped", pid=self.child.pid, exit_code=code)
        return code

    async def _watch(self, child: Child) -> None:
        code = await child.wait()
        if not child.stopping:
            log.warning("reload.exited", pid=child.pid, exit_code=code, restart="at the next change")

    async def _on_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The first SIGINT/SIGTERM stops the child and this process; a second one kills it."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if not self.stopping.is_set():
                    log.info("reload.stopping", signal=signal.Signals(signum).name)
                    self.stopping.set()
                elif self.child is not None:
                    self.child.kill()


def shown(paths: Iterable[str]) -> list[str]:
    """The changed files, relative to the current folder, sorted."""
    return sorted({os.path.relpath(path) for path in paths})


def agent_command(name: str, concurrency: int | None, instance: str | None) -> list[str]:
    """``l9 agent run NAME`` with these options, without ``--reload``: the child's command."""
    command = [sys.executable, "-m", "l9", "agent", "run", name]
    if concurrency is not None:
        command += ["--concurrency", str(concurrency)]
    if instance is not None:
        command += ["--instance", instance]
    return command
