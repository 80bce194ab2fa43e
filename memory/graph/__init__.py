"""The semantic memory: a graph of agents, runs, envelopes and expressions.

One interface (:class:`GraphBackend`, the port) with two adapters speaking the
same Cypher (:mod:`.cypher`): FalkorDB, the module inside the embedded Redis
(the default), and Neo4j (production, ``NEO4J_URL``). :class:`SemanticGraph`
is what agents and the CLI use::

    graph = open_graph(settings, redis_url)
    await graph.project_envelopes(nodes)        # lineage: MERGE, idempotent
    await graph.write_dag(dag)                  # a collection's agent DAG
    await graph.write_expressions(expressions)  # EXPRESSION_DEPENDS_ON edges
    lineage = await graph.lineage(envelope_id)  # back to the run's first envelope
    await graph.link_entities("fraud", "Account", "a1", "PAID", "Merchant", "m7", {"amount": 12.5})
    linked = await graph.neighbours("fraud", "Account", "a1")   # an agent's entity links

Errors are :class:`GraphUnavailable` (retry later), :class:`GraphQueryError`
and :class:`GraphNotFound`, all :class:`GraphError`.
"""

from .errors import GraphError, GraphNotFound, GraphQueryError, GraphUnavailable
from .guard import BestEffort
from .model import (
    Counts,
    Dag,
    DagView,
    EnvelopeNode,
    ExpressionEdge,
    ExpressionGraph,
    ExpressionNode,
    Lineage,
    LineageStep,
    Neighbour,
)
from .open import GraphSettings, graph_key, open_graph
from .port import GraphBackend
from .store import SemanticGraph

__all__ = [
    "BestEffort",
    "Counts",
    "Dag",
    "DagView",
    "EnvelopeNode",
    "ExpressionEdge",
    "ExpressionGraph",
    "ExpressionNode",
    "GraphBackend",
    "GraphError",
    "GraphNotFound",
    "GraphQueryError",
    "GraphSettings",
    "GraphUnavailable",
    "Lineage",
    "LineageStep",
    "Neighbour",
    "SemanticGraph",
    "graph_key",
    "open_graph",
]
