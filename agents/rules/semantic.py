"""Semantic memory of an agent: entities linked in the graph store, read back.

::

    await link(graph, "fraud", "Account", account, "PAID", "Merchant", merchant, {"amount": 12.5})
    for n in await neighbours(graph, "fraud", "Account", account, rel="PAID"): ...

``graph`` is the process's :class:`memory.graph.SemanticGraph` (``memory.graph.open_graph``):
FalkorDB in the embedded stack, Neo4j in production. Entities are nodes
``(:<Label> {ns, agent, id})``: each agent links in its own space (``agent``) of the
namespace, so two agents' ``Account a1`` are two nodes. :func:`link` MERGEs both entities
and the relationship (one per pair and type; a repeat sets the same properties again), so a
retried handler links once. Cypher cannot take a label or a relationship type as a
parameter: they are checked by a strict pattern (``Account``, ``PAID``) and may not be one of
L9's own (``Envelope``, ``CAUSED_BY``...); :func:`check_link` does that check alone, for a
code generator to run before it writes a rule.
"""

from __future__ import annotations

from collections.abc import Mapping

from memory.graph import GraphQueryError, Neighbour, SemanticGraph
from memory.graph.cypher import Direction, entity_label, relationship_type
from memory.graph.store import Scalar, check_properties

from .errors import RuleError
from .keys import check_key, check_name


def check_link(from_label: str, rel: str, to_label: str, *, where: str = "link") -> None:
    """RuleError unless the labels and the relationship type can go in the graph."""
    try:
        entity_label(from_label)
        relationship_type(rel)
        entity_label(to_label)
    except GraphQueryError as exc:
        raise RuleError(where, str(exc)) from None


async def link(
    graph: SemanticGraph,
    agent: str,
    from_label: str,
    from_id: str,
    rel: str,
    to_label: str,
    to_id: str,
    props: Mapping[str, Scalar] | None = None,
) -> None:
    """MERGE ``(from_label from_id)-[rel props]->(to_label to_id)`` in ``agent``'s space."""
    where = f"link {from_label}-{rel}->{to_label}"
    check_name("agent", agent)
    check_link(from_label, rel, to_label, where=where)
    check_key(f"{where} from", from_id)
    check_key(f"{where} to", to_id)
    try:
        check_properties(props or {})
    except GraphQueryError as exc:
        raise RuleError(where, str(exc)) from None
    await graph.link_entities(agent, from_label, from_id, rel, to_label, to_id, props)


async def neighbours(
    graph: SemanticGraph,
    agent: str,
    label: str,
    id: str,
    *,
    rel: str | None = None,
    direction: Direction = "out",
    limit: int = 1000,
) -> list[Neighbour]:
    """The entities ``agent`` linked from ``(label id)`` (``direction="in"``: to it), by ``rel``
    or any relationship, sorted by relationship type, label and id."""
    where = f"neighbours of {label}"
    check_name("agent", agent)
    check_key(where, id)
    try:
        entity_label(label)
        if rel is not None:
            relationship_type(rel)
    except GraphQueryError as exc:
        raise RuleError(where, str(exc)) from None
    return await graph.neighbours(agent, label, id, rel=rel, direction=direction, limit=limit)
