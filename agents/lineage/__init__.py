"""The lineage projector (``l9 agent run lineage``): envelope causation, agent DAGs and
expression graphs from the streams into the semantic graph (:mod:`memory.graph`)."""

from agents.contracts.lineage import DagHook, dag_of, micros

from .project import Projection, agent_of, envelope_node, expressions_of
from .projector import GROUP, Projector, is_transient

__all__ = [
    "GROUP",
    "DagHook",
    "Projection",
    "Projector",
    "agent_of",
    "dag_of",
    "envelope_node",
    "expressions_of",
    "is_transient",
    "micros",
]
