"""Expression graphs of the SymPy worker: expression -> CSE subexpression -> symbol, written by the
worker after its reply, or by the lineage projector from the reply when the worker could not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from agents.sympy import CseResult, SymPyTool
from bus import Keys, Publisher, RpcClient
from bus.connection import RedisClient
from envelope import Signer, Verifier
from memory.graph import ExpressionEdge, SemanticGraph, graph_key
from memory.graph.falkordb import FalkorBackend
from tests.conftest import AgentProcess, run_l9, wait_for

pytestmark = pytest.mark.integration
WORKER = {"L9_SYMPY_WORKERS": "1", "L9_SYMPY_METRICS": "false"}
EXPRS = ("(x+y)**2 + sin(x+y)*z", "(x+y)*z*sin(x+y)")


@asynccontextmanager
async def sympy_tool(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> AsyncIterator[SymPyTool]:
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        yield SymPyTool(rpc, source="agent://test/caller", deadline_s=60)


def described(edges: list[ExpressionEdge]) -> set[tuple[str | None, str, str | None]]:
    """(source kind, target kind or symbol, target text) of every edge."""
    return {(e.source_kind, e.target_kind or f"symbol {e.target}", e.target_text) for e in edges}


EXPECTED = {
    ("expression", "subexpression", "x + y"),
    ("expression", "subexpression", "z*sin(x0)"),
    ("subexpression", "subexpression", "x + y"),
    ("subexpression", "symbol x", None),
    ("subexpression", "symbol y", None),
    ("subexpression", "symbol z", None),
}


async def edges_of(graph: SemanticGraph, root: str) -> list[ExpressionEdge]:
    return await graph.expression_edges(root)


async def written(graph: SemanticGraph, root: str) -> bool:
    """All the edges are there: a graph is written in steps (nodes, their edges, the symbols')."""
    return len(described(await edges_of(graph, root))) >= len(EXPECTED)


async def test_the_worker_writes_the_expression_graph_of_a_cse_request(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    namespace: str,
    agent_env: dict[str, str],
) -> None:
    worker = spawn("sympy", env=WORKER)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        result = await tool.cse(*EXPRS)
    assert isinstance(result, CseResult) and [name for name, _ in result.replacements] == ["x0", "x1"]
    graph = SemanticGraph(FalkorBackend(redis, graph_key(namespace), where="test"), namespace)
    root = f"{result.expr_hash}/0"
    await wait_for(lambda: written(graph, root), timeout=60)
    edges = await graph.expression_edges(root)
    assert described(edges) == EXPECTED
    assert {e.source_text for e in edges if e.source == root} == {EXPRS[0]}  # the worker knows the request
    shown = run_l9("graph", "expr", root, "--json", env=agent_env)
    assert shown.returncode == 0, shown.stderr
    assert {(e["label"], e["target"]) for e in json.loads(shown.stdout)} >= {("Symbol", "x"), ("Symbol", "z")}
    assert worker.terminate() == 0


async def test_with_the_graph_away_the_reply_is_not_held_up_and_the_projector_writes_it(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    namespace: str,
) -> None:
    away = {**WORKER, "L9_GRAPH_URL": "redis://127.0.0.1:1/0", "L9_LOG_LEVEL": "debug"}
    worker = spawn("sympy", env=away)
    async with sympy_tool(redis, keys, signer, verifier) as tool:
        await tool.simplify("x")  # the worker is up
        result = await tool.cse(*EXPRS)  # answered (a hang: the 60 s deadline)
    graph = SemanticGraph(FalkorBackend(redis, graph_key(namespace), where="test"), namespace)
    root = f"{result.expr_hash}/0"
    assert await graph.expression_edges(root) == []
    spawn("lineage")
    await wait_for(lambda: written(graph, root), timeout=60)
    edges = await graph.expression_edges(root)
    assert described(edges) == EXPECTED
    assert worker.terminate() == 0
    events = [(e.get("event"), e.get("op")) for e in worker.log_events()]
    assert ("graph.write_failed", "cse") in events
    assert events.index(("sympy.served", "cse")) < events.index(("graph.write_failed", "cse")), (
        "the reply waited for the graph write"
    )
