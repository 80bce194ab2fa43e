"""One suite for both graph stores: FalkorDB (in the embedded Redis) always, Neo4j when
NEO4J_URL is set. The same SemanticGraph, the same Cypher, the same answers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.contracts.sympy.graph import expression_graph
from agents.contracts.sympy.payloads import Cse, CseResult
from agents.extraction import load_file, research
from l9.devstack import StackEndpoints
from memory.graph import (
    Dag,
    EnvelopeNode,
    ExpressionGraph,
    ExpressionNode,
    GraphNotFound,
    GraphUnavailable,
    SemanticGraph,
    graph_key,
)
from memory.graph.falkordb import FalkorBackend
from memory.graph.neo4j import Neo4jBackend

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NO_NEO4J = "NEO4J_URL not set: Neo4j cannot run on this machine"
ADAPTERS = [
    "falkordb",
    pytest.param("neo4j", marks=pytest.mark.skipif(not os.environ.get("NEO4J_URL"), reason=NO_NEO4J)),
]


@pytest.fixture(params=ADAPTERS)
async def graph(
    request: pytest.FixtureRequest, stack: StackEndpoints, namespace: str
) -> AsyncIterator[SemanticGraph]:
    if request.param == "neo4j":
        env = os.environ
        backend: FalkorBackend | Neo4jBackend = Neo4jBackend(
            env["NEO4J_URL"], env.get("NEO4J_USER", "neo4j"), env.get("NEO4J_PASSWORD")
        )
    else:
        backend = FalkorBackend.from_url(stack.redis_url, graph_key(namespace))
    store = SemanticGraph(backend, namespace)
    yield store
    await store.clear()
    await store.close()


def chain(run: str = "0190-run") -> list[EnvelopeNode]:
    """request -> research -> locked -> generated -> enforced, in one run."""
    steps = [
        ("l9.extract.request.v1", "cli", "extract", "request"),
        ("l9.plan.research.v1", "planner", "plan", "event"),
        ("l9.plan.locked.v1", "planner", "plan", "event"),
        ("l9.generate.completed.v1", "generator", "generate", "event"),
        ("l9.enforce.completed.v1", "enforcer", "enforce", "event"),
    ]
    nodes, cause = [], None
    for i, (type_, agent, stream, kind) in enumerate(steps):
        node_id = f"{run}-{i}"
        nodes.append(
            EnvelopeNode(
                node_id,
                type_,
                kind,
                agent,
                f"agent://{agent}/1",
                f"2026-01-01T00:00:0{i}",
                stream,
                run,
                cause,
            )
        )
        cause = node_id
    return nodes


async def test_lineage_walks_back_to_the_extraction_request(graph: SemanticGraph) -> None:
    nodes = chain()
    await graph.project_envelopes(nodes[3:])  # effects may be projected before their causes
    await graph.project_envelopes(nodes[:3] + chain("other-run"))
    lineage = await graph.lineage(nodes[-1].id)
    assert [s.type for s in lineage.steps] == [n.type for n in reversed(nodes)]
    assert [s.agent for s in lineage.steps] == ["enforcer", "generator", "planner", "planner", "cli"]
    assert [s.depth for s in lineage.steps] == [0, 1, 2, 3, 4]
    assert {s.run for s in lineage.steps} == {"0190-run"}
    assert lineage.complete and lineage.root.type == "l9.extract.request.v1" and lineage.root.cause is None


async def test_a_cause_not_projected_yet_ends_the_chain_until_it_is(graph: SemanticGraph) -> None:
    nodes = chain()
    await graph.project_envelopes(nodes[2:])
    early = await graph.lineage(nodes[-1].id)
    assert not early.complete and early.root.id == nodes[1].id and early.root.type is None
    await graph.project_envelopes(nodes[:2])
    assert (await graph.lineage(nodes[-1].id)).complete
    with pytest.raises(GraphNotFound, match="envelope nope is not in the graph"):
        await graph.lineage("nope")


async def test_effects_are_what_an_envelope_caused_nearest_first(graph: SemanticGraph) -> None:
    nodes = chain()
    branch = EnvelopeNode(
        "0190-run-b", "l9.plan.rejected.v1", "event", "planner", "agent://planner/1",
        "2026-01-01T00:00:09", "plan", "0190-run", nodes[1].id,
    )  # fmt: skip
    await graph.project_envelopes([*nodes, branch, *chain("other-run")])
    effects = await graph.effects(nodes[1].id)
    assert [(s.depth, s.id, s.cause) for s in effects] == [
        (1, nodes[2].id, nodes[1].id),
        (1, branch.id, nodes[1].id),
        (2, nodes[3].id, nodes[2].id),
        (3, nodes[4].id, nodes[3].id),
    ]
    assert [s.type for s in effects] == [nodes[2].type, branch.type, nodes[3].type, nodes[4].type]
    assert await graph.effects(nodes[-1].id) == ()
    with pytest.raises(GraphNotFound, match="envelope nope is not in the graph"):
        await graph.effects("nope")


def tensoraios_dag(at: int) -> Dag:
    found = research(load_file(EXAMPLES / "tensoraios_ecosystem.md"))
    return Dag(
        "tensoraios_ecosystem",
        at,
        found.agents,
        found.hard_edges,
        found.soft_edges,
        found.waves,
        found.order,
        run="0190-run",
    )


async def test_the_stored_dag_equals_the_planners(graph: SemanticGraph) -> None:
    found = research(load_file(EXAMPLES / "tensoraios_ecosystem.md"))
    await graph.write_dag(tensoraios_dag(1_000))
    view = await graph.dag("tensoraios_ecosystem")
    assert view.agents == found.order and view.waves == found.waves
    assert set(view.hard) == set(found.hard_edges) and len(view.hard) == len(found.hard_edges)
    assert set(view.soft) == set(found.soft_edges) and len(view.soft) == len(found.soft_edges)
    with pytest.raises(GraphNotFound, match="'nothing' has no dependency graph"):
        await graph.dag("nothing")


async def test_a_newer_research_wins_and_a_late_older_one_changes_nothing(graph: SemanticGraph) -> None:
    old = Dag("col", 100, ("a", "b", "gone"), (("b", "a"), ("gone", "a")), (), (("a",), ("b", "gone")))
    new = Dag("col", 200, ("a", "b", "c"), (("c", "b"),), (("b", "a"),), (("a", "b"), ("c",)))
    await graph.write_dag(old)
    await graph.write_dag(new)
    await graph.write_dag(old)  # the projector catching up with an older research
    view = await graph.dag("col")
    assert (view.at, view.agents, view.hard, view.soft) == (
        200,
        ("a", "b", "c"),
        (("c", "b"),),
        (("b", "a"),),
    )
    assert view.waves == (("a", "b"), ("c",))


def cse_graph() -> ExpressionGraph:
    result = CseResult(
        expr_hash="cafe",
        replacements=[("x0", "x + y"), ("x1", "z*sin(x0)")],
        reduced=["x0**2 + x1", "x0*x1"],
        ops_before=12,
        ops_after=6,
    )
    graph = expression_graph(result, Cse(exprs=["(x+y)**2 + sin(x+y)*z", "(x+y)*z*sin(x+y)"]))
    assert graph is not None
    return graph


async def test_an_expression_depends_on_its_subexpressions_and_symbols(graph: SemanticGraph) -> None:
    await graph.write_expressions(cse_graph())
    edges = await graph.expression_edges("cafe/0")
    described = {(e.source_kind, e.label, e.target_kind or e.target, e.target_text) for e in edges}
    assert described == {
        ("expression", "Expression", "subexpression", "x + y"),
        ("expression", "Expression", "subexpression", "z*sin(x0)"),
        ("subexpression", "Expression", "subexpression", "x + y"),
        ("subexpression", "Symbol", "x", None),
        ("subexpression", "Symbol", "y", None),
        ("subexpression", "Symbol", "z", None),
    }
    assert {e.source_text for e in edges if e.source == "cafe/0"} == {"(x+y)**2 + sin(x+y)*z"}


async def test_projecting_everything_again_changes_nothing(graph: SemanticGraph) -> None:
    async def everything() -> None:
        await graph.project_envelopes(chain() + chain("other-run"))
        await graph.write_dag(tensoraios_dag(5))
        await graph.write_expressions(cse_graph())

    await everything()
    before = await graph.counts()
    assert before.nodes["Envelope"] == 10 and before.edges["CAUSED_BY"] == 8
    assert before.nodes["Run"] == 2 and before.edges["EXPRESSION_DEPENDS_ON"] == 8
    await everything()
    assert await graph.counts() == before
    assert (await graph.dag("tensoraios_ecosystem")).at == 5


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=60))
async def test_any_text_travels_as_a_parameter_unchanged(graph: SemanticGraph, text: str) -> None:
    node = ExpressionNode("t", "expression", "t", text=text or "empty")
    await graph.write_expressions(ExpressionGraph((node,), (), (("t", "s"),)))
    (edge,) = await graph.expression_edges("t")
    assert edge.source_text == (text or "empty")


@pytest.mark.parametrize(
    "backend",
    [
        lambda: FalkorBackend.from_url("redis://127.0.0.1:1/0", "g", timeout_s=1),
        lambda: Neo4jBackend("bolt://127.0.0.1:1", "neo4j", "secret", timeout_s=1),
    ],
    ids=["falkordb", "neo4j"],
)
async def test_an_unreachable_store_is_unavailable_at_once(backend: object) -> None:
    store = SemanticGraph(backend(), "t", timeout_s=1)  # type: ignore[operator]
    for attempt in (store.project_envelopes(chain()), store.lineage("x")):
        # refused, or given up at the 1 s bound: an error naming the store, not a wait for it
        with anyio.fail_after(30), pytest.raises(GraphUnavailable, match=r"127\.0\.0\.1:1"):
            await attempt
    await store.close()
