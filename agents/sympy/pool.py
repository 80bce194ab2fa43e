"""Worker subprocesses that can be killed: where every parse and every SymPy operation runs.

An in-process alarm does not stop SymPy (long C-level integer arithmetic, a
``MemoryError`` caught somewhere inside), so each job runs in a subprocess
with a wall-clock bound (enforced by the parent: past it the process is
SIGKILLed and replaced) and an address-space cap (``RLIMIT_AS`` set in the
child: SymPy gets a ``MemoryError``, or a C extension a ``SystemError`` "error
return without exception set"; the child reports either as ``limit.memory`` and exits).

Processes come from a ``forkserver`` that preloads SymPy once, so a
replacement is ready in milliseconds instead of the second an import takes.
A child dies with its parent (``PR_SET_PDEATHSIG`` on Linux), so a runaway
never outlives the agent.

    async with WorkerPool(handle, size=2, timeout_s=10, memory_mb=1024) as pool:
        result = await pool.run(job)          # ToolTimeout / ToolError on failure

``handle`` is a module-level function (pickled by reference) taking the job
and returning plain, picklable data. ``on_replace`` hears of every worker replaced, with
the reason: ``timeout`` (its job ran past the bound), ``memory`` (out of memory under the
cap), ``crash`` (the process died during a job), ``dead`` (found dead before one),
``cancelled`` (its caller was cancelled mid-job: its reply must never reach the next job)
or ``error`` (the exchange with it failed otherwise); the agent counts them
(``l9_sympy_pool_restarts_total``, :mod:`.metrics`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import anyio
import psutil
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agents.contracts.sympy.errors import ToolError, ToolTimeout, error_from_wire

log = structlog.get_logger("l9.sympy.pool")
Handler = Callable[[Any], Any]
#: Told the reason each time a worker is replaced (see the module doc).
OnReplace = Callable[[str], None]
_PR_SET_PDEATHSIG = 1
#: Native thread pools would multiply a worker's address space; one thread each is plenty.
_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class PoolStats:
    served: int = 0
    failed: int = 0
    timeouts: int = 0
    replaced: int = 0


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    started: float = field(default_factory=time.monotonic)


class WorkerPool:
    """``size`` worker subprocesses running ``handler``; ``run`` waits for a free one."""

    def __init__(
        self,
        handler: Handler,
        *,
        size: int,
        timeout_s: float,
        memory_mb: int,
        preload: Sequence[str] = ("agents.sympy.operations",),
        on_replace: OnReplace | None = None,
    ) -> None:
        self.handler, self.size, self.timeout_s, self.memory_mb = handler, size, timeout_s, memory_mb
        self.on_replace = on_replace
        self.stats = PoolStats()
        self._preload = list(preload)
        self._idle_send: MemoryObjectSendStream[_Worker]
        self._idle_recv: MemoryObjectReceiveStream[_Worker]
        self._idle_send, self._idle_recv = anyio.create_memory_object_stream[_Worker](size)
        self._workers: list[_Worker] = []

    async def __aenter__(self) -> WorkerPool:
        for name in _THREAD_ENV:
            os.environ.setdefault(name, "1")
        for _ in range(self.size):
            worker = await anyio.to_thread.run_sync(self._spawn)
            self._workers.append(worker)
            self._idle_send.send_nowait(worker)
        log.info("pool.started", size=self.size, timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            for worker in self._workers:
                await anyio.to_thread.run_sync(_stop, worker)
        self._idle_send.close()
        self._idle_recv.close()

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    async def run(self, job: Any, *, timeout_s: float | None = None) -> Any:
        """The handler's result for ``job``; ToolTimeout past the bound (``timeout_s``, else the
        pool's), which covers the wait for a free worker too; ToolError for the handler's errors."""
        bound = timeout_s if timeout_s is not None else self.timeout_s
        deadline = time.monotonic() + bound
        worker = await self._acquire(bound)
        why: str | None = "error"  # why the worker is replaced afterwards; None: it is not
        try:
            if not worker.process.is_alive():
                worker = await self._replace(worker, "dead")
            status, value = await self._exchange(worker, job, max(deadline - time.monotonic(), 0.001))
            why = _unfit(status, value)
        except ToolTimeout:
            why = "timeout"
            raise
        except ToolError:  # _exchange's only other error: the worker died mid-job
            why = "crash"
            raise
        except anyio.get_cancelled_exc_class():
            why = "cancelled"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                if why is not None:
                    worker = await self._replace(worker, why)
                self._idle_send.send_nowait(worker)
        if status == "ok":
            self.stats.served += 1
            return value
        self.stats.failed += 1
        raise error_from_wire(value)

    async def _acquire(self, bound: float) -> _Worker:
        with anyio.move_on_after(bound):
            return await self._idle_recv.receive()
        self.stats.timeouts += 1
        raise ToolTimeout(f"no worker was free within {bound:g}s (all {self.size} busy)", rule="queue")

    async def _exchange(self, worker: _Worker, job: Any, bound: float) -> tuple[str, Any]:
        try:
            worker.conn.send(job)
            with anyio.move_on_after(bound):
                await anyio.wait_readable(worker.conn.fileno())
                reply: tuple[str, Any] = worker.conn.recv()
                return reply
        except (EOFError, OSError) as exc:
            code = worker.process.exitcode
            log.warning("pool.worker_died", pid=worker.process.pid, exitcode=code, error=str(exc))
            raise ToolError("failed", "worker_died", f"the worker process died (exit code {code})") from None
        self.stats.timeouts += 1
        log.warning("pool.timeout", pid=worker.process.pid, timeout_s=bound, job=_describe(job))
        raise ToolTimeout(f"the operation ran past {bound:g}s and was stopped")

    async def _replace(self, worker: _Worker, why: str) -> _Worker:
        await anyio.to_thread.run_sync(_stop, worker)
        fresh = await anyio.to_thread.run_sync(self._spawn)
        self._workers[self._workers.index(worker)] = fresh
        self.stats.replaced += 1
        log.info("pool.replaced", old_pid=worker.process.pid, new_pid=fresh.process.pid, why=why)
        if self.on_replace is not None:
            self.on_replace(why)
        return fresh

    def _spawn(self) -> _Worker:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(self._preload)
        parent, child = ctx.Pipe(duplex=True)
        memory = self.memory_mb * 1024 * 1024
        process = ctx.Process(target=_serve, args=(child, self.handler, memory), daemon=True, name="sympy")
        process.start()
        child.close()
        return _Worker(process, parent)


def _unfit(status: str, value: Any) -> str | None:
    """Why a worker that answered is not trusted with another job (None: it is): a fatal error
    (out of memory, ``limit.memory``: the child exits after its reply)."""
    if status == "ok" or not value.get("fatal", False):
        return None
    return "memory" if value.get("rule") == "memory" else "error"


def _stop(worker: _Worker) -> None:
    with contextlib.suppress(OSError):
        worker.conn.close()
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5)


def _describe(job: Any) -> str:
    text = repr(job)
    return text if len(text) <= 200 else text[:197] + "..."


# -- the child side ------------------------------------------------------------------------
def _serve(conn: Connection, handler: Handler, memory_bytes: int) -> None:
    """A worker subprocess: receive a job, answer ``("ok", result)`` or ``("error", wire)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when workers stop
    _die_with_parent()
    _cap_address_space(memory_bytes)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        reply, fatal = _answer(handler, job, memory_bytes)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result must not kill the worker
            conn.send(("error", ToolError("failed", "bad_result", f"{type(exc).__name__}: {exc}").to_wire()))
        if fatal:
            os._exit(3)


def _answer(handler: Handler, job: Any, memory_bytes: int) -> tuple[tuple[str, Any], bool]:
    """``(reply, fatal)``: after running out of memory the process is not trusted with another job.

    Out of memory is a ``MemoryError``, or a ``SystemError`` ("error return without exception
    set"): a C extension (gmpy2, symengine, numpy) whose allocation failed under the cap and
    returned NULL without setting the MemoryError. Either is the ``limit.memory`` error and the
    end of this process.
    """
    try:
        return ("ok", handler(job)), False
    except ToolError as exc:
        return ("error", exc.to_wire()), False
    except (MemoryError, SystemError) as exc:
        mb = memory_bytes // (1024 * 1024)
        how = "" if isinstance(exc, MemoryError) else f" (in C: {type(exc).__name__}: {exc})"
        error = ToolError("limit", "memory", f"the operation needed more than the worker's {mb} MB{how}")
        return ("error", {**error.to_wire(), "fatal": True}), True
    except RecursionError:
        error = ToolError("limit", "recursion", "the operation recursed too deeply")
        return ("error", error.to_wire()), False
    except Exception as exc:
        error = ToolError("failed", "operation_error", f"{type(exc).__name__}: {exc}")
        return ("error", error.to_wire()), False


def _die_with_parent() -> None:
    """SIGKILL when the forkserver exits, and let it exit when the agent dies.

    The forkserver stops when the last holder of its "alive" pipe goes, and
    every child it forks inherits that pipe (so it could start processes of its
    own). A busy worker would keep the forkserver, and so itself, alive after
    the agent died: the worker closes its copy.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[attr-defined]
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _cap_address_space(extra_bytes: int) -> None:
    """Allow ``extra_bytes`` on top of what the process maps at start (the preloaded libraries)."""
    limit = psutil.Process().memory_info().vms + extra_bytes
    with contextlib.suppress(ValueError, OSError):  # platforms without RLIMIT_AS
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
