"""The worker pool with real subprocesses: runaways are killed and replaced, the pool keeps serving."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import psutil
import pytest

from agents.sympy.errors import ParseRejected, Position, ToolError, ToolTimeout
from agents.sympy.operations import Job, ToolConfig, execute
from agents.sympy.parser import parse
from agents.sympy.payloads import Expand, Simplify
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
    if kind == "parse":
        return str(parse(arg))
    if kind == "pid":
        return os.getpid()
    if kind == "slow_pid":
        time.sleep(arg)
        return os.getpid()
    raise ValueError(f"unknown job {kind}")


@asynccontextmanager
async def pool_of(size: int, timeout_s: float = 5.0, memory_mb: int = 256) -> AsyncIterator[WorkerPool]:
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
    async with pool_of(2, timeout_s=1.5) as pool:
        before = set(pool.pids)
        answered: list[float] = []
        outcome: dict[str, Any] = {}

        async def runaway() -> None:
            started = time.monotonic()
            try:
                await pool.run(("spin", None))
            except ToolTimeout as exc:
                outcome["error"], outcome["took"] = exc, time.monotonic() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(runaway)
            await anyio.sleep(0.1)
            started = time.monotonic()
            for i in range(20):
                assert await pool.run(("echo", i)) == i
                answered.append(time.monotonic() - started)
        assert answered[-1] < 1.0, "the other worker stopped serving while one was stuck"
        assert isinstance(outcome["error"], ToolTimeout) and outcome["error"].kind == "timeout"
        assert 1.4 <= outcome["took"] < 3.0
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
        started = time.monotonic()
        with pytest.raises(ToolError) as caught:
            await pool.run(("hog", 64))  # 4 GiB
        assert (caught.value.kind, caught.value.rule) == ("limit", "memory")
        assert time.monotonic() - started < 5
        assert await pool.run(("hog", 2)) == 2, "a fresh worker must have its full allowance"
        assert await pool.run(("pid", None)) != before
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
    async with WorkerPool(handler, size=2, timeout_s=2.0, memory_mb=512) as pool:
        errors: dict[str, tuple[ToolError, float]] = {}

        async def doomed(text: str) -> None:
            started = time.monotonic()
            with pytest.raises(ToolError) as caught:
                await pool.run(Job("run", Expand(expr=text)))
            errors[text] = (caught.value, time.monotonic() - started)

        answered = 0
        async with anyio.create_task_group() as tg:
            for text in ("2**10**10**10", "factorial(10**8)", "(a+b+c+d+e+1)**40"):
                tg.start_soon(doomed, text)
            await anyio.sleep(0.3)
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                result = await pool.run(Job("run", Simplify(expr=f"sin(x)**2 + cos(x)**2 + {answered}")))
                assert result["expr"] == str(answered + 1)
                answered += 1
        assert answered >= 5, "requests stopped being answered while one worker was stuck"
        assert errors["2**10**10**10"][0].rule == "max_exponent"
        assert errors["factorial(10**8)"][0].rule == "max_factorial"
        assert all(took < 1.5 for err, took in (errors["2**10**10**10"], errors["factorial(10**8)"]))
        blow_up, took = errors["(a+b+c+d+e+1)**40"]
        assert (blow_up.kind, blow_up.rule) in {("timeout", "wall_clock"), ("limit", "memory")}
        assert took < 4.0, f"the runaway took {took:.1f}s against a 2s bound"
        assert (await pool.run(Job("run", Simplify(expr="x + x"))))["expr"] == "2*x"


async def test_waiting_for_a_free_worker_counts_against_the_bound() -> None:
    async with pool_of(1) as pool:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pool.run, ("sleep", 1.5))
            await anyio.sleep(0.2)
            started = time.monotonic()
            with pytest.raises(ToolTimeout) as caught:
                await pool.run(("echo", 1), timeout_s=0.5)
            assert caught.value.rule == "queue" and 0.45 <= time.monotonic() - started < 1.2
        assert pool.stats.replaced == 0, "nobody's worker is killed for a job that never started"
        assert await pool.run(("echo", 2)) == 2
