"""What an envelope means to the semantic graph: pure functions, no I/O.

* every envelope: an :class:`EnvelopeNode` (its run, its agent, its cause);
* ``l9.plan.research.v1``: its collection's agent DAG (:func:`dag_of`);
* a SymPy ``cse`` / ``generate_code`` / ``compile`` result: its expression
  graph (:func:`agents.contracts.sympy.graph.expression_graph`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC

import structlog
from pydantic import ValidationError

from agents.contracts.lineage import dag_of
from agents.contracts.sympy.graph import expression_graph
from agents.contracts.sympy.payloads import CompileResult, CseResult, GenerateCodeResult, SymPyResult
from envelope import PacketEnvelope
from memory.graph import Dag, EnvelopeNode, ExpressionGraph

log = structlog.get_logger("l9.lineage")
#: The SymPy results that carry an expression graph, by envelope type.
EXPRESSION_RESULTS: dict[str, type[SymPyResult]] = {
    "l9.sympy.cse_result.v1": CseResult,
    "l9.sympy.generate_code_result.v1": GenerateCodeResult,
    "l9.sympy.compile_result.v1": CompileResult,
}


def agent_of(source: str) -> str:
    """The agent type of a source: ``agent://planner/2`` -> ``planner``."""
    return source.removeprefix("agent://").split("/", 1)[0] or source


def envelope_node(envelope: PacketEnvelope, stream: str) -> EnvelopeNode:
    return EnvelopeNode(
        id=envelope.id,
        type=envelope.type,
        kind=envelope.kind,
        agent=agent_of(envelope.source),
        source=envelope.source,
        time=envelope.time.astimezone(UTC).isoformat(timespec="microseconds"),
        stream=stream,
        run=envelope.correlation_id,
        cause=envelope.causation_id,
    )


def expressions_of(envelope: PacketEnvelope) -> ExpressionGraph | None:
    """The expression graph of a SymPy result envelope (None for any other envelope)."""
    model = EXPRESSION_RESULTS.get(envelope.type)
    if model is None or envelope.kind != "response":
        return None
    return expression_graph(model.model_validate(envelope.data))


@dataclass
class Projection:
    """Everything one batch of envelopes adds to the graph."""

    envelopes: list[EnvelopeNode] = field(default_factory=list)
    dags: list[Dag] = field(default_factory=list)
    expressions: list[ExpressionGraph] = field(default_factory=list)

    def add(self, envelope: PacketEnvelope, stream: str) -> None:
        self.envelopes.append(envelope_node(envelope, stream))
        try:
            dag, expressions = dag_of(envelope), expressions_of(envelope)
        except ValidationError as exc:  # the envelope is still in the lineage; its content is not
            log.warning(
                "lineage.payload_invalid",
                envelope=envelope.id,
                type=envelope.type,
                correlation_id=envelope.correlation_id,
                error=str(exc.errors(include_url=False)[:1]),
            )
            return
        if dag is not None:
            self.dags.append(dag)
        if expressions is not None and expressions.nodes:
            self.expressions.append(expressions)
