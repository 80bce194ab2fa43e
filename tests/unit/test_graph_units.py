"""The semantic graph's pure parts: FalkorDB's wire format, projections, expression graphs,
the best-effort writer, the store choice and the CLI's renderings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from agents.contracts.sympy.graph import expression_graph, names_in
from agents.contracts.sympy.payloads import Cse, CseResult, GenerateCode, GenerateCodeResult
from agents.extraction import PlanResearch, load_file, research
from agents.lineage import Projection, agent_of, dag_of, envelope_node, micros
from envelope import PacketEnvelope
from l9.cli.graph import dag_json, lineage_json, render_dag, render_lineage, render_mermaid
from l9.settings import Settings
from memory.graph import (
    BestEffort,
    DagView,
    GraphError,
    GraphQueryError,
    GraphUnavailable,
    Lineage,
    LineageStep,
    SemanticGraph,
    open_graph,
)
from memory.graph.falkordb import cypher_literal, decode_rows, with_params

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# -- FalkorDB's wire format ---------------------------------------------------------------------
def test_parameters_are_quoted_cypher_literals() -> None:
    assert cypher_literal('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    assert cypher_literal([1, 2.5, True, None, {"id": "a"}]) == '[1,2.5,true,null,{id:"a"}]'
    assert with_params("RETURN $x", {"x": "a", "n": 3}) == 'CYPHER x="a" n=3 RETURN $x'
    assert with_params("RETURN 1", {}) == "RETURN 1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a\x00b", "NUL"),
        (float("nan"), "non-finite"),
        ({"not an id": 1}, "not an identifier"),
        (object(), "cannot send a object"),
    ],
)
def test_values_falkordb_cannot_hold_are_refused_by_name(value: object, message: str) -> None:
    with pytest.raises(GraphQueryError, match=message):
        cypher_literal(value)


def test_compact_replies_decode_to_rows_by_column_name() -> None:
    reply = [
        [[1, b"depth"], [1, b"id"], [1, b"type"], [1, b"extra"]],
        [
            [[3, 0], [2, b"a"], [1, None], [6, [[3, 1], [5, b"2.5"], [4, b"true"]]]],
            [[3, 1], [2, b"b"], [2, b"l9.x.v1"], [10, [b"k", [4, b"false"]]]],
        ],
        [b"Cached execution: 0"],
    ]
    assert decode_rows(reply) == [
        {"depth": 0, "id": "a", "type": None, "extra": [1, 2.5, True]},
        {"depth": 1, "id": "b", "type": "l9.x.v1", "extra": {"k": False}},
    ]
    assert decode_rows([[b"Nodes created: 1"]]) == []  # a write without RETURN
    with pytest.raises(GraphQueryError, match="type 8"):
        decode_rows([[[1, b"n"]], [[[8, [1, [], []]]]], []])


# -- projections ----------------------------------------------------------------------------------
def _envelope(type_: str, data: dict[str, object], **fields: object) -> PacketEnvelope:
    return PacketEnvelope.new(type=type_, source="agent://planner/2", data=data, **fields)  # type: ignore[arg-type]


def test_an_envelope_becomes_a_node_with_its_run_agent_and_cause() -> None:
    cause = _envelope("l9.extract.request.v1", {})
    envelope = _envelope("l9.demo.task.v1", {}, correlation_id=cause.id, causation_id=cause.id)
    node = envelope_node(envelope, "plan")
    assert (node.id, node.agent, node.run, node.cause, node.stream) == (
        envelope.id,
        "planner",
        cause.id,
        cause.id,
        "plan",
    )
    assert node.time.endswith("+00:00") and len(node.time) == len("2026-01-01T00:00:00.000000+00:00")
    assert agent_of("agent://sympy/worker-1") == "sympy" and agent_of("odd") == "odd"
    assert micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


def test_a_research_envelope_carries_the_planners_dag() -> None:
    collection = load_file(EXAMPLES / "tensoraios_ecosystem.md")
    found = research(collection)
    envelope = _envelope(
        "l9.plan.research.v1", PlanResearch.of(collection.name, found).model_dump(mode="json")
    )
    dag = dag_of(envelope)
    assert dag is not None
    assert (dag.collection, dag.agents, dag.hard, dag.soft) == (
        "tensoraios_ecosystem",
        found.agents,
        found.hard_edges,
        found.soft_edges,
    )
    assert dag.at == micros(envelope.time) and dag.run == envelope.correlation_id
    rows = {row["name"]: row for row in dag.agent_rows()}
    assert all(rows[name]["wave"] == i for i, wave in enumerate(found.waves) for name in wave)
    assert [e["kind"] for e in dag.edge_rows()].count("soft") == len(found.soft_edges)
    assert dag_of(_envelope("l9.plan.baseline.v1", {})) is None


def test_a_bad_payload_still_projects_its_envelope() -> None:
    projection = Projection()
    projection.add(_envelope("l9.plan.research.v1", {"collection": "c"}), "plan")
    assert len(projection.envelopes) == 1 and projection.dags == []


# -- expression graphs ------------------------------------------------------------------------------
def test_names_are_symbols_not_functions_or_constants() -> None:
    assert names_in("x0*sin(y) + pi*z**2 + f(w) + Derivative(g(t), t) + I*E") == {"x0", "y", "z", "w", "t"}
    assert names_in("not python (") == set()


def test_cse_results_give_expression_subexpression_symbol_edges() -> None:
    result = CseResult(
        expr_hash="h",
        replacements=[("x0", "x + y"), ("x1", "z*sin(x0)")],
        reduced=["x0**2 + x1", "x0*x1"],
        ops_before=12,
        ops_after=6,
    )
    request = Cse(exprs=["(x+y)**2 + sin(x+y)*z", "(x+y)*z*sin(x+y)"])
    graph = expression_graph(result, request)
    assert graph is not None
    subs = {n.name: n.id for n in graph.nodes if n.kind == "subexpression"}
    assert graph.roots == ("h/0", "h/1")
    assert [n.text for n in graph.nodes if n.kind == "expression"] == request.exprs
    assert set(graph.depends) == {
        ("h/0", subs["x0"]),
        ("h/0", subs["x1"]),
        ("h/1", subs["x0"]),
        ("h/1", subs["x1"]),
        (subs["x1"], subs["x0"]),
    }
    assert set(graph.symbols) == {(subs["x0"], "x"), (subs["x0"], "y"), (subs["x1"], "z")}
    alone = expression_graph(result)  # the projector's view: the reply only
    assert alone is not None and {n.id for n in alone.nodes} == {n.id for n in graph.nodes}
    assert (alone.depends, alone.symbols) == (graph.depends, graph.symbols)


def test_a_single_expression_shares_its_node_with_its_kernel() -> None:
    cse = expression_graph(
        CseResult(expr_hash="k", replacements=[], reduced=["x*y"], ops_before=1, ops_after=1)
    )
    args = {"args": ["x", "y"], "params": ["x", "y"], "source": "", "ops_before": 1, "ops_after": 1}
    code = GenerateCodeResult(expr_hash="k", language="c", name="f", **args)
    kernel = expression_graph(code, GenerateCode(expr="x*y", language="c"))
    assert cse is not None and kernel is not None
    assert cse.roots == kernel.roots == ("k",)
    assert set(kernel.symbols) == set(cse.symbols) == {("k", "x"), ("k", "y")}
    assert kernel.nodes[0].text == "x*y"


# -- the best-effort writer ---------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_failed_write_pauses_the_writer_and_never_raises() -> None:
    clock, calls = _Clock(), []

    async def failing(store: SemanticGraph) -> None:
        calls.append("fail")
        raise GraphUnavailable("down")

    async def working(store: SemanticGraph) -> None:
        calls.append("ok")

    writes = BestEffort(open_graph(Settings(), "redis://127.0.0.1:1"), pause_s=30, clock=clock)
    assert await writes("x", failing) is False
    assert await writes("x", working) is False  # paused: not even tried
    clock.now += 31
    assert await writes("x", working) is True
    assert calls == ["fail", "ok"] and writes.stats == {"written": 1, "failed": 1, "skipped": 1}


async def test_a_hanging_write_is_cut_at_its_bound() -> None:
    async def hangs(store: SemanticGraph) -> None:
        await anyio.sleep(60)

    writes = BestEffort(open_graph(Settings(), "redis://127.0.0.1:1"), timeout_s=0.05)
    with anyio.fail_after(30):  # catches a hang only: the write sleeps 60 s
        assert await writes("x", hangs) is False
    assert await BestEffort(None)("x", hangs) is False


# -- choosing the store ----------------------------------------------------------------------------------
def test_neo4j_is_chosen_when_its_url_is_set_else_falkordb() -> None:
    neo = open_graph(Settings(neo4j_url="bolt://db.example:7687", namespace="prod"))
    assert (neo.kind, neo.where, neo.namespace) == ("neo4j", "bolt://db.example:7687", "prod")
    falkor = open_graph(Settings(namespace="t1"), "redis://127.0.0.1:6379/0")
    assert falkor.kind == "falkordb" and falkor.where.endswith("(graph t1:graph)")
    apart = open_graph(Settings(graph_url="redis://:secret@graph:6380", graph_name="g"), "redis://x")
    assert "graph:6380" in apart.where and "secret" not in apart.where and "(graph g)" in apart.where
    with pytest.raises(GraphError, match="NEO4J_URL or L9_GRAPH_URL"):
        open_graph(Settings())
    with pytest.raises(GraphError, match="cannot be used"):
        open_graph(Settings(neo4j_url="ftp://nowhere"))


# -- the CLI's renderings -------------------------------------------------------------------------------
def _step(depth: int, id_: str, type_: str | None, cause: str | None) -> LineageStep:
    return LineageStep(
        depth, id_, type_, "event", "planner" if type_ else None, None, None, "plan", "r", cause
    )


def test_lineage_renders_the_chain_and_says_where_it_stops() -> None:
    full = Lineage("c", (_step(0, "c", "l9.b.v1", "a"), _step(1, "a", "l9.extract.request.v1", None)))
    assert full.complete and "the run starts with l9.extract.request.v1" in render_lineage(full)
    assert [s["type"] for s in lineage_json(full)["chain"]] == ["l9.b.v1", "l9.extract.request.v1"]
    partial = Lineage("c", (_step(0, "c", "l9.b.v1", "a"), _step(1, "a", None, None)))
    assert not partial.complete and "stops at a: it is not projected yet" in render_lineage(partial)


def test_a_dag_renders_as_text_mermaid_and_json() -> None:
    view = DagView("col", 0, ("a", "b", "c"), (("a",), ("b", "c")), (("b", "a"),), (("c", "a"),))
    assert render_mermaid(view).splitlines() == [
        "flowchart LR",
        '  a0["a"]',
        '  a1["b"]',
        '  a2["c"]',
        "  a1 --> a0",
        "  a2 -.-> a0",
    ]
    assert "  1: b, c" in render_dag(view) and "  c -> a  (soft)" in render_dag(view)
    assert json.loads(json.dumps(dag_json(view)))["hard_edges"] == [["b", "a"]]
