"""``l9 up``: every built-in agent as its own process, as ``l9 demo`` starts them, until Ctrl-C.

The pipeline's processes (:data:`l9.demo_extraction.PIPELINE`: planner, generator,
enforcer, validator, auditor, two SymPy workers), and one process of each agent of one's
own given with ``--with``, each ``l9 agent run NAME --instance N`` in a session of its own
(:mod:`l9.children`). Their output, JSON log lines, is interleaved line by line on stdout,
each line prefixed with the process's label (``planner#0 | {...}``); ``l9 up``'s own lines
are prefixed ``l9 up``. Once every process logged ``agent.started`` (its start-up is over,
it consumes), a line says so.

A process that exits while the others run is reported at once with its exit code, and
the others keep running (``l9 up`` ends when none is left). Ctrl-C or SIGTERM stops them
all: SIGTERM to each (it drains), SIGKILL to one still running after
:data:`STOP_GRACE_S`; a second Ctrl-C kills them at once. Each one's exit code is
printed; ``l9 up`` exits 0 when every process exited 0 once asked to stop.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

import anyio
from anyio.abc import TaskStatus

from l9.children import STOP_GRACE_S, Child, exit_text
from l9.demo_extraction import PIPELINE

LABEL = "l9 up"
#: What a started agent process logs (JSON), after its start-up, as it begins to consume.
STARTED = '"event": "agent.started"'


@dataclass(frozen=True)
class AgentProcess:
    """One process to run: ``l9 agent run SPEC --instance INSTANCE``; ``group``: its consumer group."""

    spec: str
    group: str
    instance: int

    @property
    def label(self) -> str:
        return f"{self.group}#{self.instance}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "l9", "agent", "run", self.spec, "--instance", str(self.instance)]


def processes(own: Sequence[tuple[str, str]] = ()) -> list[AgentProcess]:
    """The pipeline's processes, then one of each of ``own`` (spec, group): a group named twice
    gets two processes (instances 0 and 1)."""
    procs = [AgentProcess(name, name, i) for name, count in PIPELINE for i in range(count)]
    for spec, group in own:
        procs.append(AgentProcess(spec, group, sum(p.group == group for p in procs)))
    return procs


@dataclass
class Up:
    """The running processes and what ``l9 up`` prints about them."""

    procs: list[AgentProcess]
    out: TextIO
    children: dict[str, Child] = field(default_factory=dict)
    #: Processes that exited before being asked to: label -> exit code.
    died: dict[str, int] = field(default_factory=dict)
    stopping: anyio.Event = field(default_factory=anyio.Event)
    #: Labels of the processes that logged ``agent.started``.
    started: set[str] = field(default_factory=set)
    since: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.width = max(len(LABEL), *(len(p.label) for p in self.procs))

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def say(self, message: str) -> None:
        self.write(f"{LABEL:<{self.width}} | {message}")

    async def on_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The first SIGINT/SIGTERM stops every process; a second one kills them."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                if not self.stopping.is_set():
                    self.say(f"{signal.Signals(signum).name}: stopping every agent process")
                    self.stopping.set()
                    continue
                self.say(f"{signal.Signals(signum).name} again: killing every agent process")
                for child in self.children.values():
                    child.kill()

    async def watch(self, child: Child) -> None:
        """Report ``child``'s exit if nobody asked it to stop; stop ``l9 up`` once none is left."""
        code = await child.wait()
        if not child.stopping:
            self.died[child.label] = code
            self.say(f"{child.label} died ({exit_text(code)}); the others keep running")
        if all(c.process.returncode is not None for c in self.children.values()):
            self.stopping.set()

    def relayed(self, label: str, line: str) -> None:
        """A line of process ``label``: written with its prefix; its ``agent.started`` log line
        marks it started, and once every process is, one line says so."""
        self.write(f"{label:<{self.width}} | {line}")
        if STARTED in line and label not in self.started:
            self.started.add(label)
            if len(self.started) == len(self.procs):
                elapsed = time.monotonic() - self.since
                self.say(f"every agent has started ({elapsed:.1f} s); Ctrl-C stops them")

    async def stop_all(self) -> dict[str, int]:
        """Stop every process at once; their exit codes, in start order."""
        codes: dict[str, int] = {}

        async def stop(child: Child) -> None:
            codes[child.label] = await child.stop(STOP_GRACE_S)

        async with anyio.create_task_group() as tg:
            for child in self.children.values():
                tg.start_soon(stop, child)
        for child in self.children.values():  # their last lines first
            with anyio.move_on_after(5):
                await child.relayed.wait()
        return {label: codes[label] for label in self.children}


async def run_up(procs: list[AgentProcess], env: dict[str, str], out: TextIO) -> int:
    """Run ``procs`` until a signal (or until none is left); 0 when each exited 0 once asked to stop."""
    up = Up(procs, out)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(up.on_signals)
            for proc in procs:
                child = await Child.start(proc.label, proc.command(), env, piped=True)
                up.children[proc.label] = child
                up.say(f"started {proc.label} (pid {child.pid}): l9 {' '.join(proc.command()[3:])}")
                tg.start_soon(child.relay, partial(up.relayed, proc.label))
                tg.start_soon(up.watch, child)
            await up.stopping.wait()
            codes = await up.stop_all()
            for label, code in codes.items():
                up.say(f"{label} {'had died' if label in up.died else 'exited'}: {exit_text(code)}")
            tg.cancel_scope.cancel()
    finally:  # whatever ended this (an error starting one), no process is left behind
        for child in up.children.values():
            child.kill()
    clean = not up.died and all(code == 0 for code in codes.values())
    up.say("every agent process stopped" + ("" if clean else " (not all cleanly)"))
    return 0 if clean else 1
