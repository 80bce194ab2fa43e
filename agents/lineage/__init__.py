"""The lineage projector (``l9 agent run lineage``): envelope causation, agent DAGs and
expression graphs from the streams into the semantic graph (:mod:`memory.graph`)."""

from .hooks import DagHook
from .project import Projection, agent_of, dag_of, envelope_node, expressions_of, micros
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
