"""``l9 agent run sympy`` as a real process on the real Redis: RPC answers, refusals, runaways."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psutil
import pytest

from agents.sympy import ParseRejected, SymPyTool, ToolError, ToolTimeout
from agents.sympy.keys import compiled_key
from bus import Keys, Publisher, RpcClient
from bus.connection import RedisClient
from bus.topology import SYMPY_STREAM as TOOL_STREAM
from envelope import PacketEnvelope, Signer, Verifier, decode
from governance import DecisionMade, EscalationRequested, Escalations, PolicyEngine
from tests.conftest import AgentProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster
SLOW = {"L9_SYMPY_TIMEOUT_S": "2", "L9_SYMPY_WORKERS": "2", "L9_SYMPY_MEMORY_MB": "768"}


@asynccontextmanager
async def sympy_tool(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, session: str | None = None
) -> AsyncIterator[SymPyTool]:
    """A caller's SymPyTool (an RpcClient's task group must live in the test's own task)."""
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        # only catches a hang: a first request also waits for the agent to start (slow when loaded)
        yield SymPyTool(rpc, source="agent://test/caller", deadline_s=60, session=session)


async def test_the_worker_answers_typed_requests(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    worker = spawn("sympy")
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        await _answers(tool)
    assert worker.terminate() == 0


async def _answers(tool: SymPyTool) -> None:
    evaluated = await tool.evaluate("x**2 + 1", points={"x": [1, 2, 3]})
    assert evaluated.values == [2.0, 5.0, 10.0] and evaluated.backend == "symengine"
    assert (await tool.simplify("sin(x)**2 + cos(x)**2")).expr == "1"
    assert (await tool.diff("x**3", order=2)).expr == "6*x"
    assert (await tool.solve("x**2 == 4")).solutions == [{"x": "-2"}, {"x": "2"}]
    code = await tool.generate_code("sin(x)**2 + sin(x)*y", "c", name="energy")
    assert code.params == ["x", "y"] and "double energy(double x, double y)" in code.source
    assert code.ops_after < code.ops_before


async def test_injections_are_typed_errors_and_governance_decisions_caused_by_the_request(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Forbidden input and limit breaches: the caller's error at once, and, already when it
    arrives, the policy's decision (escalate to Igor by default), caused by the offending
    request, and the escalation: opened by the first, caused by it, and the second counted on
    it (one caller, one policy). An invalid request is no governance event."""
    spawn("sympy")
    async with sympy_tool(redis, keys, signer, verifier, session="refusals") as tool:
        await _refusals(tool)
        requests = await _envelopes(redis, keys, verifier, TOOL_STREAM)
        decisions = await _envelopes(redis, keys, verifier, "governance.compliance", "governance.decisions")
        escalations = await _envelopes(redis, keys, verifier, "governance.escalations")
    forbidden, limit, invalid = (r for r in requests if r.correlation_id == "refusals")
    made = {d.causation_id: DecisionMade.model_validate(d.data).decision for d in decisions}
    counted_on = {d.causation_id: DecisionMade.model_validate(d.data).escalation_id for d in decisions}
    assert set(made) == {forbidden.id, limit.id}, "one decision per violation, none for the invalid request"
    for request in (forbidden, limit):
        decision = made[request.id]
        assert decision.escalated and decision.anchors == ("Igor",)
        assert decision.policy == "sympy-dangerous-functions@1" and request.id in decision.subject
    assert "forbidden.forbidden_name at 1:8" in made[forbidden.id].reason
    assert "limit.max_factorial at 1:1" in made[limit.id].reason
    raised = {e.causation_id: EscalationRequested.model_validate(e.data) for e in escalations}
    assert set(raised) == {forbidden.id} and invalid.id not in made
    assert counted_on == {forbidden.id: escalations[0].id, limit.id: escalations[0].id}
    engine = PolicyEngine.load()
    desk = Escalations(redis, Publisher(redis, keys, signer), spec=engine.escalation, anchors=engine.anchors,
                       source="agent://test/igor")  # fmt: skip
    pending = {p.id: p for p in await desk.pending(expire=False)}
    assert {e.id for e in escalations} == set(pending) and all(
        p.anchors == ("Igor",) for p in pending.values()
    )
    assert [(p.count, p.latest) for p in pending.values()] == [(2, (forbidden.id, limit.id))]


async def _envelopes(
    redis: RedisClient, keys: Keys, verifier: Verifier, *streams: str
) -> list[PacketEnvelope]:
    out: list[PacketEnvelope] = []
    for stream in streams:
        entries: Any = await redis.xrange(keys.stream(stream))
        out.extend(decode(fields, verifier)[0] for _, fields in entries)
    return out


async def _refusals(tool: SymPyTool) -> None:
    with pytest.raises(ParseRejected) as caught:
        await tool.simplify("x + ().__class__.__bases__[0].__subclasses__()")
    assert (caught.value.kind, caught.value.rule, str(caught.value.position)) == (
        "forbidden",
        "forbidden_name",
        "1:8",
    )
    with pytest.raises(ParseRejected) as limit:
        await tool.expand("factorial(10**8)")
    assert (limit.value.kind, limit.value.rule) == ("limit", "max_factorial")
    with pytest.raises(ToolError) as invalid:
        await tool.diff("x*y")
    assert (invalid.value.kind, invalid.value.rule) == ("invalid", "ambiguous_variable")


async def test_a_runaway_times_out_while_another_request_is_served(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    worker = spawn("sympy", env=SLOW)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        await _runaway_and_neighbour(tool, worker)
        children = _sympy_children(worker.pid)
    assert worker.terminate() == 0
    await wait_for(lambda: not any(_alive(pid) for pid in children), timeout=60)


async def test_workers_die_with_a_killed_agent_even_mid_runaway(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    worker = spawn("sympy", env={**SLOW, "L9_SYMPY_TIMEOUT_S": "60"})
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        assert (await tool.simplify("x + x")).expr == "2*x"
        children = _sympy_children(worker.pid)
        assert len(children) == 2
        spent = {pid: _cpu_s(pid) for pid in children}
        async with anyio.create_task_group() as tg:
            tg.start_soon(tool.expand, "(a+b+c+d+e+f+1)**60")
            # mid-runaway: a worker has burnt half a second of CPU on it (however long that takes)
            await wait_for(lambda: any(_cpu_s(pid) > spent[pid] + 0.5 for pid in children), timeout=60)
            worker.kill9()
            tg.cancel_scope.cancel()
    await wait_for(lambda: not any(_alive(pid) for pid in children), timeout=60)


def _cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def _runaway_and_neighbour(tool: SymPyTool, worker: AgentProcess) -> None:
    assert (await tool.expand("(x + 1)**2")).expr == "x**2 + 2*x + 1"  # the worker is up
    children = _sympy_children(worker.pid)
    outcome: dict[str, Any] = {}
    stopped = anyio.Event()

    async def runaway() -> None:
        try:
            await tool.expand("(a+b+c+d+e+1)**40")  # runs on (no MemoryError within a minute)
        except ToolError as exc:
            outcome["error"] = exc
        finally:
            stopped.set()

    with anyio.fail_after(60):  # only catches a hang: the runaway's bound is 2 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(runaway)
            await anyio.sleep(0.3)
            assert (await tool.factor("x**2 - 1")).expr == "(x - 1)*(x + 1)"
            assert not stopped.is_set(), "the second request was answered only once the runaway stopped"
    error = outcome["error"]
    assert isinstance(error, ToolTimeout) or (error.kind, error.rule) == ("limit", "memory")
    # a cheap first job for the fresh worker: a first simplify can take seconds on a loaded machine
    assert (await tool.expand("(x + 2)**2")).expr == "x**2 + 4*x + 4", "no serving after the runaway"
    assert len(_sympy_children(worker.pid)) == 2 and _sympy_children(worker.pid) != children


def _sympy_children(pid: int) -> set[int]:
    """The worker subprocesses: the live children of the forkserver the agent started."""
    for child in psutil.Process(pid).children():
        if "forkserver" in " ".join(child.cmdline()):
            return {p.pid for p in child.children() if p.status() != psutil.STATUS_ZOMBIE}
    return set()


async def test_a_compiled_kernel_is_built_once_indexed_in_redis_and_evaluated(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: compiled kernels cannot be built here")
    spawn("sympy")
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        built = await tool.compile("sin(x)*y + x**2")
        again = await tool.compile("x**2 + y*sin(x)")
        points = {"x": [0.5, 2.0], "y": [3.0, -1.0]}
        values = await tool.evaluate("y*sin(x) + x**2", points=points, backend="compiled")
    assert built.built and built.build_ms > 0 and built.args == ["x", "y"]
    assert not again.built and again.kernel_hash == built.kernel_hash and again.path == built.path
    entry = json.loads(await redis.get(compiled_key(keys, built.kernel_hash)) or "{}")
    assert entry["path"] == built.path and entry["params"] == ["x", "y"]
    assert await anyio.Path(entry["path"]).is_file()
    assert values.backend == "compiled"
    assert values.values == pytest.approx([math.sin(0.5) * 3 + 0.25, -math.sin(2.0) + 4.0], rel=1e-14)
