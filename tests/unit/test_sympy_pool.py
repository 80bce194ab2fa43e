"""The worker pool with real subprocesses: runaways are killed and replaced, the pool keeps serving."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from agents.contracts.sympy.errors import ParseRejected, Position, ToolError, ToolTimeout
from agents.contracts.sympy.payloads import Expand, Simplify
from agents.sympy.operations import Job, ToolConfig, execute
from agents.sympy.parser import parse
from agents.sympy.pool import WorkerPool


def work(job: tuple[str, Any]) -> Any:
    """The handler the child processes run (imported there by reference)."""
    kind, arg = job
    if kind == "echo":
        return arg
    if kind == "sleep":
        time.sleep(arg)
        return "slept"
    if kind == "spin":
        while True:
            pass
    if kind == "hog":
        blocks = [bytearray(64 * 1024 * 1024) for _ in range(arg)]
        return len(blocks)
    if kind == "die":
        os._exit(9)
    if kind == "c_null":  # what a C extension that could not allocate under the cap raises
        raise SystemError("error return without exception set")
    if kind == "parse":
        return str(parse(arg))
    if kind == "pid":
        return os.getpid()
    if kind == "slow_pid":
        time.sleep(arg)
        return os.getpid()
    if kind == "hold":  # busy until the test says so: writes <arg>/held, waits for <arg>/release
        Path(arg, "held").touch()
        while not Path(arg, "release").exists():
            time.sleep(0.01)
        return "released"
    raise ValueError(f"unknown job {kind}")


@asynccontextmanager
async def pool_of(size: int, timeout_s: float = 30.0, memory_mb: int = 256) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(
        work, size=size, timeout_s=timeout_s, memory_mb=memory_mb, preload=["agents.sympy.parser"]
    )
    async with pool:
        yield pool


async def test_results_and_typed_errors_cross_the_process_boundary() -> None:
    async with pool_of(1) as pool:
        assert await pool.run(("echo", {"a": [1, 2]})) == {"a": [1, 2]}
        assert await pool.run(("parse", "y + x")) == "x + y"
        assert await pool.run(("pid", None)) != os.getpid()
        with pytest.raises(ParseRejected) as caught:
            await pool.run(("parse", "x + __import__('os')"))
        assert (caught.value.kind, caught.value.rule, caught.value.position) == (
            "forbidden",
            "forbidden_name",
            Position(1, 5, 4),
        )
        with pytest.raises(ToolError) as failed:
            await pool.run(("nonsense", None))
        assert (failed.value.kind, failed.value.rule) == ("failed", "operation_error")
        assert "unknown job nonsense" in failed.value.detail
        assert pool.stats.replaced == 0, "an error answered by the handler must not cost a worker"


async def test_a_runaway_is_killed_and_replaced_while_other_jobs_are_served() -> None:
    async with pool_of(2) as pool:
        before = set(pool.pids)
        # both workers are up (a new one imports this module first: seconds on a loaded machine)
        assert sorted(await _answering_pids(pool)) == sorted(before)
        answered_while_stuck = 0
        outcome: dict[str, Any] = {}
        stopped = anyio.Event()

        async def runaway() -> None:
            started = time.monotonic()
            try:
                await pool.run(("spin", None), timeout_s=1.5)
            except ToolTimeout as exc:
                outcome["error"], outcome["took"] = exc, time.monotonic() - started
            finally:
                stopped.set()

        with anyio.fail_after(60):  # only catches a hang
            async with anyio.create_task_group() as tg:
                tg.start_soon(runaway)
                await anyio.sleep(0.1)
                for i in range(20):
                    assert await pool.run(("echo", i)) == i
                    answered_while_stuck += not stopped.is_set()
        assert answered_while_stuck > 0, "no job was answered until the runaway was stopped"
        assert isinstance(outcome["error"], ToolTimeout) and outcome["error"].kind == "timeout"
        assert outcome["took"] >= 1.4, "stopped before its bound"
        assert pool.stats.timeouts == 1 and pool.stats.replaced == 1
        after = set(pool.pids)
        assert len(after) == 2 and len(before & after) == 1
        assert all(_gone(pid) for pid in before - after), "the runaway is still running"
        assert sorted(await _answering_pids(pool)) == sorted(after)


async def _answering_pids(pool: WorkerPool) -> list[int]:
    """The pids answering jobs when every worker is asked at once."""
    pids: list[int] = []

    async def ask() -> None:
        pids.append(await pool.run(("slow_pid", 0.3)))

    async with anyio.create_task_group() as tg:
        for _ in range(pool.size):
            tg.start_soon(ask)
    return pids


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_the_memory_cap_is_a_limit_error_and_the_worker_is_replaced() -> None:
    async with pool_of(1, memory_mb=256) as pool:
        before = await pool.run(("pid", None))
        with pytest.raises(ToolError) as caught:
            await pool.run(("hog", 64))  # 4 GiB
        assert (caught.value.kind, caught.value.rule) == ("limit", "memory"), "not the wall-clock bound"
        assert await pool.run(("hog", 2)) == 2, "a fresh worker must have its full allowance"
        assert await pool.run(("pid", None)) != before
        assert _gone(before)


async def test_a_c_level_memory_failure_is_a_memory_limit_and_the_worker_is_replaced() -> None:
    """``SystemError: error return without exception set`` under the cap is a MemoryError in
    all but name: the same typed error, and the process is not trusted with another job."""
    async with pool_of(1) as pool:
        before = await pool.run(("pid", None))
        with pytest.raises(ToolError) as caught:
            await pool.run(("c_null", None))
        assert (caught.value.kind, caught.value.rule) == ("limit", "memory")
        assert "SystemError: error return without exception set" in caught.value.detail
        assert caught.value.violation
        assert await pool.run(("pid", None)) != before and pool.stats.replaced == 1
        assert _gone(before)


async def test_a_crashed_worker_is_reported_and_replaced() -> None:
    async with pool_of(1) as pool:
        with pytest.raises(ToolError) as caught:
            await pool.run(("die", None))
        assert (caught.value.kind, caught.value.rule) == ("failed", "worker_died")
        assert await pool.run(("echo", "still here")) == "still here"
        assert pool.stats.replaced == 1


async def test_a_cancelled_caller_never_leaves_its_reply_for_the_next_job() -> None:
    async with pool_of(1) as pool:
        with anyio.move_on_after(0.2):
            await pool.run(("sleep", 0.6))
        assert await pool.run(("echo", "mine")) == "mine"
        await anyio.sleep(0.6)
        assert await pool.run(("echo", "still mine")) == "still mine"


async def test_blow_up_inputs_end_in_limit_or_timeout_errors_while_others_are_answered() -> None:
    handler = partial(execute, ToolConfig())
    blow_up = "(a+b+c+d+e+1)**40"  # runs on (no MemoryError within a minute at 512 MB) until stopped
    async with WorkerPool(handler, size=2, timeout_s=30, memory_mb=512) as pool:
        errors: dict[str, ToolError] = {}
        stopped = anyio.Event()

        async def simplify(n: int) -> str:
            result = await pool.run(Job("run", Simplify(expr=f"sin(x)**2 + cos(x)**2 + {n}")))
            return str(result["expr"])

        async def doomed(text: str, bound: float | None = None) -> None:
            try:
                with pytest.raises(ToolError) as caught:
                    await pool.run(Job("run", Expand(expr=text)), timeout_s=bound)
                errors[text] = caught.value
            finally:
                if text == blow_up:
                    stopped.set()

        answered_while_stuck = 0
        with anyio.fail_after(120):  # only catches a hang
            async with anyio.create_task_group() as tg:  # a first simplify in each worker
                for _ in range(pool.size):
                    tg.start_soon(simplify, 0)
            async with anyio.create_task_group() as tg:
                tg.start_soon(doomed, blow_up, 2.0)
                for text in ("2**10**10**10", "factorial(10**8)"):
                    tg.start_soon(doomed, text)
                await anyio.sleep(0.3)
                while not stopped.is_set():
                    assert await simplify(answered_while_stuck) == str(answered_while_stuck + 1)
                    answered_while_stuck += not stopped.is_set()
        assert answered_while_stuck > 0, "no request was answered while one worker was stuck"
        assert errors["2**10**10**10"].rule == "max_exponent"
        assert errors["factorial(10**8)"].rule == "max_factorial"
        stuck = errors[blow_up]
        assert (stuck.kind, stuck.rule) in {("timeout", "wall_clock"), ("limit", "memory")}
        assert (await pool.run(Job("run", Simplify(expr="x + x"))))["expr"] == "2*x"


async def test_waiting_for_a_free_worker_counts_against_the_bound(tmp_path: Path) -> None:
    async with pool_of(1) as pool:
        with anyio.fail_after(60):  # only catches a hang: the echo waiting for the held worker
            async with anyio.create_task_group() as tg:
                tg.start_soon(pool.run, ("hold", str(tmp_path)))
                while not (tmp_path / "held").exists():
                    await anyio.sleep(0.01)
                started = time.monotonic()
                with pytest.raises(ToolTimeout) as caught:  # the only worker is still held
                    await pool.run(("echo", 1), timeout_s=0.5)
                assert caught.value.rule == "queue" and time.monotonic() - started >= 0.45
                (tmp_path / "release").touch()
        assert pool.stats.replaced == 0, "nobody's worker is killed for a job that never started"
        assert await pool.run(("echo", 2)) == 2
