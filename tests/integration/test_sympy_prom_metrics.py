"""The SymPy worker's Prometheus metrics (``agents/sympy/metrics.py``) move with its traffic: the
agent runs in this process on the real Redis, answers real requests through the tool stream,
and the default registry (what an admin port's ``/metrics`` serves) is read before and after.

The registry is process-global (other tests may have moved the same series): every check is
on a difference. No check is on a speed.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY, generate_latest

from agents.config import GraphConfig
from agents.runtime import Runtime
from agents.sympy import ParseRejected, SymPyTool, ToolError, ToolTimeout
from agents.sympy.agent import SymPyAgent
from agents.sympy.config import SymPyConfig
from agents.sympy.metrics import (
    BACKENDS,
    OPERATIONS,
    RESTART_REASONS,
    UNKNOWN,
    count_lookup,
    count_restart,
    observe_operation,
)
from agents.sympy.pool import WorkerPool
from bus import Keys, Publisher, RpcClient, StreamConsumer
from bus.connection import RedisClient
from envelope import Signer, Verifier
from tests.conftest import FAST

pytestmark = [pytest.mark.integration]
#: The worker's bound: a runaway is stopped (and its worker replaced) this quickly.
TIMEOUT_S = 3.0
#: Only catches a hang (a loaded machine): never a speed check.
HANG_S = 120.0
#: How a runaway ends: at the worker's bound, or at its memory cap.
STOPPED = {("timeout", "wall_clock"), ("limit", "memory")}
SECONDS = "l9_sympy_operation_duration_seconds"
LOOKUPS = "l9_sympy_cache_requests_total"
RESTARTS = "l9_sympy_pool_restarts_total"


def sample(name: str, **labels: str) -> float:
    """A series' value now (0 when it does not exist yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def operations(op: str, backend: str, outcome: str) -> float:
    return sample(f"{SECONDS}_count", operation=op, backend=backend, outcome=outcome)


def lookups(op: str, result: str) -> float:
    return sample(LOOKUPS, operation=op, result=result)


def restarts(reason: str) -> float:
    return sample(RESTARTS, reason=reason)


@asynccontextmanager
async def sympy_agent(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> AsyncIterator[SymPyAgent]:
    """``l9 agent run sympy`` in this process: the agent (one pool worker) and a consumer of
    its tool stream; stopped, its pool with it, when the block ends."""
    runtime = Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent="sympy", instance="s-0")
    config = SymPyConfig(
        workers=1, timeout_s=TIMEOUT_S, memory_mb=768, graph=GraphConfig(namespace=keys.namespace)
    )
    agent = SymPyAgent(runtime, config)
    consumer = StreamConsumer(
        redis,
        keys,
        group=SymPyAgent.name,
        consumer="s-0",
        streams=SymPyAgent.consumes,
        handler=agent.handle,
        verifier=verifier,
        policy=FAST,
    )
    await agent.on_start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await consumer.wait_started()
            try:
                yield agent
            finally:
                consumer.stop()
    finally:
        with anyio.CancelScope(shield=True):
            await agent.on_stop()


@asynccontextmanager
async def sympy_tool(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> AsyncIterator[SymPyTool]:
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        yield SymPyTool(rpc, source="agent://test/caller", deadline_s=HANG_S)


async def test_durations_cache_lookups_and_a_restart_move_with_the_traffic(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    simplified = operations("simplify", "sympy", "ok")
    simplify_sum = sample(f"{SECONDS}_sum", operation="simplify", backend="sympy", outcome="ok")
    hits, misses = lookups("simplify", "hit"), lookups("simplify", "miss")
    evaluated = operations("evaluate", "numpy", "ok"), operations("evaluate", "symengine", "ok")
    refused = operations("simplify", "sympy", "forbidden"), operations("diff", "sympy", "invalid")
    diff_misses = lookups("diff", "miss")
    restarted = {reason: restarts(reason) for reason in RESTART_REASONS}
    expand_misses = lookups("expand", "miss")
    runaways = {o: operations("expand", "sympy", o) for o in ("timeout", "limit")}

    with anyio.fail_after(4 * HANG_S):  # only catches a hang
        async with (
            sympy_agent(redis, keys, signer, verifier),
            sympy_tool(redis, keys, signer, verifier) as tool,
        ):
            # three texts, three misses; the first again (another spelling of it): a hit
            answers = [await tool.simplify(f"sin(x)**2 + cos(x)**2 + {n}") for n in range(3)]
            again = await tool.simplify("cos(x)**2 + 0 + sin(x)**2")
            assert [a.cached for a in answers] == [False] * 3 and again.cached and again.expr == "1"
            # the backend label is the one that computed: named, or the one auto picked
            assert (await tool.evaluate("x**2 + 1", points={"x": [1, 2]}, backend="numpy")).backend == "numpy"
            assert (await tool.evaluate("x**2 + 2", points={"x": [1, 2]})).backend == "symengine"
            # refusals: before the cache (the key's parse), and after a miss (the computation)
            with pytest.raises(ParseRejected) as forbidden:
                await tool.simplify("x + ().__class__.__bases__[0].__subclasses__()")
            assert forbidden.value.kind == "forbidden"
            with pytest.raises(ToolError) as invalid:
                await tool.diff("x*y")
            assert invalid.value.kind == "invalid"
            # a runaway: stopped at the worker's bound (or its memory cap), its worker replaced
            with pytest.raises(ToolError) as runaway:
                await tool.expand("(a+b+c+d+e+1)**40")
            assert (runaway.value.kind, runaway.value.rule) in STOPPED
            assert (await tool.simplify("x + x")).expr == "2*x", "the fresh worker serves"

    assert operations("simplify", "sympy", "ok") - simplified == 5  # 3 misses, 1 hit, x + x
    assert sample(f"{SECONDS}_sum", operation="simplify", backend="sympy", outcome="ok") > simplify_sum
    assert (lookups("simplify", "miss") - misses, lookups("simplify", "hit") - hits) == (4, 1)
    assert (operations("evaluate", "numpy", "ok"), operations("evaluate", "symengine", "ok")) == (
        evaluated[0] + 1,
        evaluated[1] + 1,
    )
    assert operations("simplify", "sympy", "forbidden") == refused[0] + 1
    assert operations("diff", "sympy", "invalid") == refused[1] + 1
    assert lookups("diff", "miss") == diff_misses + 1, "the invalid diff was looked up, then refused"
    assert lookups("expand", "miss") == expand_misses + 1
    kind, reason = ("timeout", "timeout") if runaway.value.kind == "timeout" else ("limit", "memory")
    assert {o: operations("expand", "sympy", o) - runaways[o] for o in runaways} == {
        o: float(o == kind) for o in runaways
    }
    moved = {r: restarts(r) - restarted[r] for r in RESTART_REASONS}
    assert moved == {r: float(r == reason) for r in RESTART_REASONS}, moved

    exposed = generate_latest(REGISTRY).decode()  # what /metrics serves
    for line in (
        f'{SECONDS}_bucket{{backend="sympy",le="60.0",operation="simplify",outcome="ok"}}',
        f'{LOOKUPS}{{operation="simplify",result="hit"}}',
        f'{RESTARTS}{{reason="{reason}"}}',
        f"# TYPE {SECONDS} histogram",
    ):
        assert line in exposed, line


# -- the pool's reasons, one each ----------------------------------------------------------
def work(job: tuple[str, Any]) -> Any:
    """What the pool's child processes run (imported there by reference)."""
    kind, arg = job
    if kind == "pid":
        return os.getpid()
    if kind == "sleep":
        time.sleep(arg)
        return "slept"
    if kind == "hog":  # far past the memory cap
        return len([bytearray(64 * 1024 * 1024) for _ in range(arg)])
    if kind == "die":
        os._exit(9)
    raise ValueError(f"unknown job {kind}")


@dataclass
class Heard:
    reasons: list[str] = field(default_factory=list)

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        count_restart(reason)


@contextmanager
def restarts_moved() -> Iterator[dict[str, float]]:
    """How much each reason's counter moved in the block (filled in when it ends)."""
    before = {r: restarts(r) for r in RESTART_REASONS}
    moved: dict[str, float] = {}
    yield moved
    moved.update({r: restarts(r) - before[r] for r in RESTART_REASONS})


async def test_each_replacement_of_a_pool_worker_counts_its_reason() -> None:
    heard = Heard()
    pool = WorkerPool(work, size=1, timeout_s=30, memory_mb=256, preload=[], on_replace=heard)
    with anyio.fail_after(HANG_S), restarts_moved() as moved:  # only catches a hang
        async with pool:
            with pytest.raises(ToolTimeout):
                await pool.run(("sleep", 60), timeout_s=0.5)
            with pytest.raises(ToolError) as memory:
                await pool.run(("hog", 64))  # 4 GiB under a 256 MB cap
            assert (memory.value.kind, memory.value.rule) == ("limit", "memory")
            with pytest.raises(ToolError) as crash:
                await pool.run(("die", None))
            assert crash.value.rule == "worker_died"
            with anyio.move_on_after(0.3):  # the caller gives up mid-job
                await pool.run(("sleep", 60))
            idle = await pool.run(("pid", None))
            os.kill(idle, 9)  # killed while idle: found dead by the next job
            while pool._workers[0].process.is_alive():
                await anyio.sleep(0.01)
            assert await pool.run(("pid", None)) != idle
            with pytest.raises(ToolError):  # an error the handler answers costs no worker
                await pool.run(("nonsense", None))
    assert heard.reasons == ["timeout", "memory", "crash", "cancelled", "dead"]
    assert moved == {r: float(r in heard.reasons) for r in RESTART_REASONS}
    assert pool.stats.replaced == 5


def test_label_values_outside_their_lists_are_a_dash() -> None:
    assert {"simplify", "evaluate", "generate_code", "compile"} <= OPERATIONS
    assert {"sympy", "auto", "numpy", "symengine", "evalf", "compiled", "c", "cython"} <= BACKENDS
    before = operations(UNKNOWN, UNKNOWN, UNKNOWN), lookups(UNKNOWN, "miss"), restarts(UNKNOWN)
    observe_operation("rm -rf", "gpu", "weird", 0.01)
    count_lookup("no such op", False)
    count_restart("solar flare")
    assert operations(UNKNOWN, UNKNOWN, UNKNOWN) == before[0] + 1
    assert (lookups(UNKNOWN, "miss"), restarts(UNKNOWN)) == (before[1] + 1, before[2] + 1)
    assert sample(f"{SECONDS}_count", operation="rm -rf", backend="gpu", outcome="weird") == 0
