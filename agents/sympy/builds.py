"""Kernel builds in the agent process: the compilers run outside the worker pool, in build slots.

A ``compile`` (or an ``evaluate`` with the compiled backend) of a kernel that is not
on disk yet: a pool worker parses the expression and generates the Cython source,
within the request's compute budget, and answers a :class:`~.compiled.BuildPlan`;
the worker is free again at once. Cython and the C compiler then run here, as
subprocesses of the agent: at most ``slots`` builds at a time (a build waits for a
slot within its own bound: ``build_queue``), each within the build budget
(``L9_SYMPY_COMPILE_TIMEOUT_S``); past it the compiler's whole process group is
killed (``compile_timeout``). So a slow build holds a build slot, never a pool worker:
plain requests keep being served while kernels compile.

Like the pool's workers, a compiler gets an address-space cap (``RLIMIT_AS``) and
dies with the agent (``PR_SET_PDEATHSIG`` on Linux), both set by a small launcher
before it ``exec``s the compiler.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import structlog

from agents.contracts.sympy.errors import ToolTimeout

from .compiled import BuildPlan, Built, build_commands, build_failed, build_timeout, install

log = structlog.get_logger("l9.sympy.builds")
#: Output of a compiler kept for its error message (the tail is what names the problem).
OUTPUT_KEPT = 64 * 1024
#: Runs ``argv[2:]`` with an address-space cap of ``argv[1]`` bytes, dying with its parent.
_LAUNCH = """\
import ctypes, os, resource, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
except (AttributeError, OSError):
    pass
try:
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
except (ValueError, OSError):
    pass
os.execvp(sys.argv[2], sys.argv[2:])
"""


class BuildSlots:
    """``slots`` concurrent kernel builds, each compiler capped at ``memory_mb`` of address space."""

    def __init__(self, slots: int, *, memory_mb: int) -> None:
        self.slots, self.memory_mb = slots, memory_mb
        self._limiter = anyio.CapacityLimiter(slots)

    async def build(self, plan: BuildPlan, bound_s: float) -> Built:
        """The kernel of ``plan``, built within ``bound_s`` (the wait for a slot included)."""
        deadline = time.monotonic() + bound_s
        with anyio.move_on_after(bound_s) as waiting:
            await self._limiter.acquire()
        if waiting.cancelled_caught:
            busy = f"(all {self.slots} busy)"
            raise ToolTimeout(f"no build slot was free within {bound_s:g}s {busy}", "build_queue")
        try:
            found = plan.found()  # a build of the same kernel may have finished meanwhile
            return found if found is not None else await self._build(plan, deadline)
        finally:
            self._limiter.release()

    async def _build(self, plan: BuildPlan, deadline: float) -> Built:
        started = time.perf_counter()
        work = await anyio.to_thread.run_sync(_workdir, plan)
        try:
            for command in await anyio.to_thread.run_sync(build_commands, plan, work):
                await self._run(command, work, deadline)
            built = await anyio.to_thread.run_sync(install, plan, work, time.perf_counter() - started)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, work, True)
        log.info("sympy.kernel_built", kernel_hash=plan.kernel_hash, build_ms=built.build_ms)
        return built

    async def _run(self, command: list[str], cwd: Path, deadline: float) -> None:
        """``command`` in its own process group; the group is killed at ``deadline`` or when cancelled."""
        bound = deadline - time.monotonic()
        if bound <= 0:
            raise build_timeout(command, 0)
        limit = str(self.memory_mb * 1024 * 1024)
        launched = [sys.executable, "-c", _LAUNCH, limit, *command]
        output = bytearray()
        async with await anyio.open_process(
            launched, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        ) as process:  # fmt: skip
            try:
                with anyio.move_on_after(bound) as scope:
                    if process.stdout is not None:
                        async for chunk in process.stdout:
                            output += chunk
                            del output[:-OUTPUT_KEPT]
                    await process.wait()
            finally:
                if process.returncode is None:
                    _kill_group(process.pid)
        if scope.cancelled_caught:
            raise build_timeout(command, bound)
        if process.returncode != 0:
            raise build_failed(command, bytes(output))


def _workdir(plan: BuildPlan) -> Path:
    """A fresh directory beside the kernels (the rename into place stays on one file system)."""
    directory = Path(plan.directory)
    directory.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".build-{plan.kernel_hash}-", dir=directory))


def _kill_group(pgid: int) -> None:
    """The compiler and what it started (``cc1``, ``as``, ``ld``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
