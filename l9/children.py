"""Agent processes started and stopped by this one: ``l9 up`` and ``l9 agent run --reload``.

A child runs in a session of its own, so Ctrl-C in the terminal reaches the parent alone,
which then stops each child once: SIGTERM (the agent stops reading and drains), SIGKILL
if it still runs after the grace period. An agent that got SIGINT from the terminal and
SIGTERM from its parent would take the second signal as "abort" (``l9.start``). Its
output is either the parent's own (inherited) or relayed line by line (:meth:`Child.relay`),
so the lines of several children interleave whole.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Callable, Sequence

import anyio
from anyio.abc import Process

#: How long a child may drain after SIGTERM before it is killed.
STOP_GRACE_S = 30.0


class Child:
    """One child process; ``stopping`` once this process asked it to stop."""

    def __init__(self, label: str, process: Process) -> None:
        self.label, self.process = label, process
        self.stopping = False
        #: Set once :meth:`relay` saw the end of its output.
        self.relayed = anyio.Event()

    @classmethod
    async def start(cls, label: str, command: Sequence[str], env: dict[str, str], *, piped: bool) -> Child:
        """Start ``command``; ``piped``: its stdout and stderr to :meth:`relay`, else inherited."""
        process = await anyio.open_process(
            list(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None,
            start_new_session=True,
        )
        return cls(label, process)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def relay(self, write: Callable[[str], None]) -> None:
        """Each line the child prints (piped), to ``write``, until its output closes."""
        stream = self.process.stdout
        try:
            if stream is None:
                return
            pending = b""
            async for chunk in stream:
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    write(line.decode(errors="replace"))
            if pending:
                write(pending.decode(errors="replace"))
        finally:
            self.relayed.set()

    async def wait(self) -> int:
        return await self.process.wait()

    async def stop(self, grace_s: float) -> int:
        """SIGTERM, then SIGKILL if it still runs after ``grace_s``; its exit code."""
        self.stopping = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            with anyio.move_on_after(grace_s):
                return await self.process.wait()
            self.kill()
        return await self.process.wait()

    def kill(self) -> None:
        self.stopping = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def exit_text(code: int) -> str:
    """``exit code 1``, or ``killed by SIGKILL`` for a negative (signal) code."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
