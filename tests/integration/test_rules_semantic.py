"""Semantic memory of the rules runtime: entities an agent links, read back, on FalkorDB (the
embedded Redis) always and on Neo4j when NEO4J_URL is set; links are idempotent, each agent
has its own space, and labels that could change a query are refused before any is sent."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from agents.rules import RuleError, check_link, link, neighbours
from l9.devstack import StackEndpoints
from memory.graph import GraphQueryError, Neighbour, SemanticGraph, graph_key
from memory.graph.falkordb import FalkorBackend
from memory.graph.neo4j import Neo4jBackend

pytestmark = pytest.mark.integration
ADAPTERS = [
    "falkordb",
    pytest.param(
        "neo4j", marks=pytest.mark.skipif(not os.environ.get("NEO4J_URL"), reason="NEO4J_URL not set")
    ),
]


def backend_of(kind: str, stack: StackEndpoints, namespace: str) -> FalkorBackend | Neo4jBackend:
    if kind == "neo4j":
        env = os.environ
        return Neo4jBackend(env["NEO4J_URL"], env.get("NEO4J_USER", "neo4j"), env.get("NEO4J_PASSWORD"))
    return FalkorBackend.from_url(stack.redis_url, graph_key(namespace))


@pytest.fixture(params=ADAPTERS)
async def graph(
    request: pytest.FixtureRequest, stack: StackEndpoints, namespace: str
) -> AsyncIterator[SemanticGraph]:
    store = SemanticGraph(backend_of(request.param, stack, namespace), namespace)
    yield store
    await store.clear()
    await store.close()


async def test_links_read_back_both_ways(graph: SemanticGraph) -> None:
    await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m7", {"amount": 12.5, "card": "visa"})
    await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m2", {"amount": 3})
    await link(graph, "fraud", "Account", "a1", "LIVES_IN", "City", "Oslo")
    await link(graph, "fraud", "Account", "a9", "PAID", "Merchant", "m7", {"amount": 1.0, "flagged": True})
    assert await neighbours(graph, "fraud", "Account", "a1") == [
        Neighbour("City", "Oslo", "LIVES_IN", "out", {}),
        Neighbour("Merchant", "m2", "PAID", "out", {"amount": 3}),
        Neighbour("Merchant", "m7", "PAID", "out", {"amount": 12.5, "card": "visa"}),
    ]
    paid = await neighbours(graph, "fraud", "Account", "a1", rel="PAID", limit=1)
    assert [n.id for n in paid] == ["m2"]
    into = await neighbours(graph, "fraud", "Merchant", "m7", direction="in")
    assert [(n.label, n.id, n.rel, n.direction, n.props) for n in into] == [
        ("Account", "a1", "PAID", "in", {"amount": 12.5, "card": "visa"}),
        ("Account", "a9", "PAID", "in", {"amount": 1.0, "flagged": True}),
    ]
    assert await neighbours(graph, "fraud", "Account", "nobody") == []


async def test_a_repeated_link_changes_no_count_and_updates_its_properties(
    graph: SemanticGraph, stack: StackEndpoints, namespace: str
) -> None:
    await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m7", {"amount": 12.5})
    before = await graph.counts()
    assert before.nodes == {"Account": 1, "Merchant": 1} and before.edges == {"PAID": 1}
    await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m7", {"amount": 12.5})
    # another process (its own graph object: its label index already exists)
    again = SemanticGraph(backend_of(graph.kind, stack, namespace), namespace)
    try:
        await link(again, "fraud", "Account", "a1", "PAID", "Merchant", "m7", {"amount": 20.0})
    finally:
        await again.close()
    assert await graph.counts() == before
    [paid] = await neighbours(graph, "fraud", "Account", "a1")
    assert paid.props == {"amount": 20.0}


async def test_each_agent_links_in_its_own_space(graph: SemanticGraph) -> None:
    await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m7")
    await link(graph, "loyalty", "Account", "a1", "EARNED_AT", "Merchant", "m7")
    assert [n.rel for n in await neighbours(graph, "fraud", "Account", "a1")] == ["PAID"]
    assert [n.rel for n in await neighbours(graph, "loyalty", "Account", "a1")] == ["EARNED_AT"]
    assert (await graph.counts()).nodes == {"Account": 2, "Merchant": 2}


@pytest.mark.parametrize(
    ("from_label", "rel", "to_label", "what"),
    [
        ("Account", "PAID", "Merchant {x: 1}) DETACH DELETE b //", "entity label"),
        ("Account", "PAID]->(b) DELETE b //", "Merchant", "relationship type"),
        ("account", "PAID", "Merchant", "want a capital letter"),
        ("Envelope", "PAID", "Merchant", "one of L9's own graph"),
        ("Account", "CAUSED_BY", "Merchant", "one of L9's own graph"),
        ("Account", "paid", "Merchant", "want A-Z"),
    ],
)
async def test_a_label_or_type_cypher_cannot_take_is_refused_before_any_query(
    graph: SemanticGraph, from_label: str, rel: str, to_label: str, what: str
) -> None:
    with pytest.raises(RuleError, match=what):
        check_link(from_label, rel, to_label)
    with pytest.raises(RuleError, match=what):
        await link(graph, "fraud", from_label, "a1", rel, to_label, "m7")
    assert (await graph.counts()).nodes == {}


async def test_bad_ids_and_properties_are_refused(graph: SemanticGraph) -> None:
    with pytest.raises(RuleError, match=r"the key must be 1 to 256 characters, got 0$"):
        await link(graph, "fraud", "Account", "", "PAID", "Merchant", "m7")
    with pytest.raises(RuleError, match=r"property name 'bad key'"):
        await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m7", {"bad key": 1})
    with pytest.raises(RuleError, match=r"property x: \[1\] is not text, a finite number or a bool"):
        await link(graph, "fraud", "Account", "a1", "PAID", "Merchant", "m7", {"x": [1]})  # type: ignore[dict-item]
    with pytest.raises(GraphQueryError, match=r"direction 'up'"):
        await neighbours(graph, "fraud", "Account", "a1", direction="up")  # type: ignore[arg-type]
    assert (await graph.counts()).nodes == {}
