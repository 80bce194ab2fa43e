"""The SymPy service under hostile timing: one deadline per request, builds outside the pool.

Real worker subprocesses (the pool) and real compilers; the cache on fakeredis. Time
bounds here only catch hangs; what is asserted is which error comes and who waits.
"""

from __future__ import annotations

import shutil
import sysconfig
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import fakeredis
import psutil
import pytest

from agents.contracts.sympy.errors import ToolError, ToolTimeout
from agents.contracts.sympy.payloads import REPLY_FOR, Compile, Evaluate, Simplify, SymPyRequest, SymPyResult
from agents.sympy.builds import BuildSlots
from agents.sympy.cache import ResultCache
from agents.sympy.compiled import BuildPlan, KernelStore
from agents.sympy.config import SymPyConfig
from agents.sympy.operations import Job, ToolConfig, execute
from agents.sympy.parser import canonical_hash, parse
from agents.sympy.pool import WorkerPool
from agents.sympy.service import SymPyService
from bus import Keys
from envelope import PacketEnvelope
from tests.unit.test_sympy_compiled import EXPR


def paced(job: Job) -> dict[str, Any]:
    """A pool handler whose phases take as long as the request says: ``expr="<key s> <run s>"``."""
    key_s, run_s = (float(part) for part in str(getattr(job.request, "expr", "0 0")).split())
    time.sleep(key_s if job.phase == "key" else run_s)
    if job.phase == "key":
        return {"expr_hash": "h", "key": f"k{key_s}-{run_s}"}
    return {"expr_hash": "h", "expr": "x", "ops": 0}


def envelope_for(request: SymPyRequest, ttl: timedelta | None = None) -> PacketEnvelope:
    data = request.model_dump(mode="json")
    return PacketEnvelope.new(
        type=f"l9.sympy.{request.op}.v1", source="agent://test/caller", data=data, kind="request", ttl=ttl
    )


@asynccontextmanager
async def service_of(
    handler: Any, config: SymPyConfig, preload: tuple[str, ...] = ("agents.sympy.operations",)
) -> AsyncIterator[SymPyService]:
    redis = fakeredis.FakeAsyncRedis()
    pool = WorkerPool(
        handler, size=config.workers, timeout_s=config.timeout_s, memory_mb=config.memory_mb, preload=preload
    )
    cache = ResultCache(redis, Keys("t"), ttl_s=60, max_bytes=1_000_000)
    async with pool:
        yield SymPyService(pool, cache, config, redis, Keys("t"))


async def ask(service: SymPyService, request: SymPyRequest, ttl: timedelta | None = None) -> Any:
    """The reply (typed as ``Any``: its model depends on the request)."""
    reply: SymPyResult = await service.compute(request, envelope_for(request, ttl))
    assert isinstance(reply, REPLY_FOR[type(request)])
    return reply


async def test_one_deadline_bounds_the_key_parse_and_the_computation_together() -> None:
    """Each phase alone fits in the 4 s budget, both together do not: a timeout, not an answer
    after 5 s (before, each phase had the whole budget: a request could take twice it)."""
    config = SymPyConfig(workers=1, timeout_s=4, memory_mb=512)
    async with service_of(paced, config, preload=()) as service:
        with anyio.fail_after(120):  # only catches a hang
            await _warm(service)
            assert (await ask(service, Simplify(expr="0 2.5"))).expr == "x", "one slow phase fits"
            assert (await ask(service, Simplify(expr="2.5 0"))).expr == "x", "one slow phase fits"
            with pytest.raises(ToolTimeout) as caught:
                await ask(service, Simplify(expr="2.5 2.5"))
            assert (caught.value.kind, caught.value.rule) == ("timeout", "wall_clock")
            assert "parsing and computing together" in caught.value.detail
            await _warm(service)
            assert (await ask(service, Simplify(expr="0 0"))).expr == "x", "the service keeps serving"


async def _warm(service: SymPyService) -> None:
    """A fresh worker imports this module first (seconds on a loaded machine): not the test's time."""
    await service.pool.run(Job("run", Simplify(expr="0 0")), timeout_s=60)


async def test_the_request_s_own_deadline_caps_the_budget() -> None:
    config = SymPyConfig(workers=1, timeout_s=30, memory_mb=512)
    async with service_of(paced, config, preload=()) as service:
        await _warm(service)
        with anyio.fail_after(60), pytest.raises(ToolTimeout):  # only catches a hang
            await ask(service, Simplify(expr="0 5"), ttl=timedelta(seconds=1))


def _compilers_available() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: kernels cannot be built here")
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        pytest.skip("no Python headers: kernels cannot be built here")


async def test_a_build_holds_no_pool_worker_plain_requests_are_served_meanwhile(tmp_path: Path) -> None:
    """One pool worker: while the kernel compiles (seconds), simplifications are answered."""
    _compilers_available()
    tool = ToolConfig(kernel_dir=str(tmp_path / "kernels"), compile_timeout_s=600)
    config = SymPyConfig(tool=tool, workers=1, timeout_s=60, memory_mb=768)
    async with service_of(partial(execute, tool), config) as service:
        pid = service.pool.pids[0]
        assert (await ask(service, Simplify(expr="x + x"))).expr == "2*x"  # the worker is warm
        built: dict[str, Any] = {}
        done = anyio.Event()

        async def compile_kernel() -> None:
            try:
                built["reply"] = await ask(service, Compile(expr=EXPR))
            finally:
                done.set()

        answered_while_building = 0
        with anyio.fail_after(600):  # only catches a hang
            async with anyio.create_task_group() as tg:
                tg.start_soon(compile_kernel)
                n = 0
                while not done.is_set():
                    n += 1
                    reply = await ask(service, Simplify(expr=f"sin(x)**2 + cos(x)**2 + {n}"))
                    assert reply.expr == str(n + 1)
                    answered_while_building += not done.is_set()
                    await anyio.sleep(0.05)
        assert answered_while_building > 0, "no request was answered while the kernel was built"
        reply = built["reply"]
        assert reply.built and await anyio.Path(reply.path).is_file()
        assert service.pool.pids == [pid] and service.pool.stats.replaced == 0
        values = await ask(service, Evaluate(expr=EXPR, points={"x": [0.5], "y": [0.25]}, backend="compiled"))
        assert values.backend == "compiled"


async def test_a_compiled_evaluate_builds_its_kernel_outside_the_pool_then_evaluates(tmp_path: Path) -> None:
    _compilers_available()
    tool = ToolConfig(kernel_dir=str(tmp_path / "kernels"), compile_timeout_s=600)
    config = SymPyConfig(tool=tool, workers=1, timeout_s=60, memory_mb=768)
    async with service_of(partial(execute, tool), config) as service:
        with anyio.fail_after(600):  # only catches a hang
            request = Evaluate(expr="x*y + 1", points={"x": [2.0], "y": [3.0]}, backend="compiled")
            values = await ask(service, request)
        assert (values.backend, values.values) == ("compiled", [7.0])
        assert list((tmp_path / "kernels").glob("*/l9k_*")), "the kernel is on disk"


async def test_a_compile_parses_and_generates_within_the_normal_timeout_not_the_build_budget(
    tmp_path: Path,
) -> None:
    """A 7x7 symbolic determinant takes many seconds to generate code for: that is pool work,
    bounded by the 2 s budget, not by the 120 s build budget."""
    tool = ToolConfig(kernel_dir=str(tmp_path / "kernels"), compile_timeout_s=120)
    config = SymPyConfig(tool=tool, workers=1, timeout_s=2, memory_mb=768)
    rows = ", ".join("[" + ", ".join(f"a{i}{j}" for j in range(7)) + "]" for i in range(7))
    async with service_of(partial(execute, tool), config) as service:
        assert (await ask(service, Simplify(expr="x + x"))).expr == "2*x"  # the worker is warm
        with anyio.fail_after(60), pytest.raises(ToolTimeout) as caught:  # only catches a hang
            await ask(service, Compile(expr=f"det(Matrix([{rows}]))"))
        assert caught.value.rule == "wall_clock"
        assert not list((tmp_path / "kernels").glob("*/l9k_*")), "nothing was built"
        assert (await ask(service, Simplify(expr="y + y"))).expr == "2*y", "the pool serves again"


def _plan(tmp_path: Path, expr: str) -> BuildPlan:
    store = KernelStore(tmp_path / "kernels", 600, defer_builds=True)
    parsed = parse(expr)
    prepared = store.prepare(parsed, sorted(s.name for s in parsed.free_symbols), canonical_hash(parsed))
    assert isinstance(prepared, BuildPlan)
    return prepared


async def test_a_build_past_its_budget_is_killed_with_its_compilers(tmp_path: Path) -> None:
    _compilers_available()
    slots = BuildSlots(1, memory_mb=2048)
    with anyio.fail_after(60), pytest.raises(ToolError) as caught:  # only catches a hang
        await slots.build(_plan(tmp_path, EXPR), 0.5)
    assert (caught.value.kind, caught.value.rule) == ("timeout", "compile_timeout")
    assert not _compilers_running(), "a compiler outlived its build"
    assert not list((tmp_path / "kernels").glob(".build-*")), "a build directory was left behind"


def _compilers_running() -> list[str]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            line = " ".join(child.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if child.name() in {"cc", "gcc", "cc1", "as", "ld", "collect2"} or "cython" in line:
            found.append(line)
    return found


async def test_builds_wait_for_a_slot_within_their_bound(tmp_path: Path) -> None:
    _compilers_available()
    slots = BuildSlots(1, memory_mb=2048)
    outcome: dict[str, Any] = {}

    async def first() -> None:
        outcome["first"] = await slots.build(_plan(tmp_path, EXPR), 600)

    with anyio.fail_after(600):  # only catches a hang
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.sleep(0.2)
            with pytest.raises(ToolTimeout) as caught:
                await slots.build(_plan(tmp_path, "x*y + 3"), 0.3)
    assert caught.value.rule == "build_queue" and not caught.value.violation
    assert outcome["first"].built
    again = await slots.build(_plan(tmp_path, "x*y + 3"), 600)
    assert again.built, "a slot is free again"
