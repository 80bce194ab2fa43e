"""A collection's agent DAG as the research envelope reports it (:func:`dag_of`), and the
planner's own write of it right after it publishes the research (:class:`DagHook`).

Bounded and best effort (:class:`memory.graph.BestEffort`): a failure is logged,
never fails the request; the projector writes the same DAG from the research
envelope (same ``at``, so the same graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import partial

from bus.connection import RedisClient
from envelope import PacketEnvelope
from memory.graph import BestEffort, Dag, GraphSettings, SemanticGraph, open_graph

from .extraction.payloads import PlanResearch

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RESEARCH_TYPE = "l9.plan.research.v1"


def micros(moment: datetime) -> int:
    """``moment`` in whole microseconds since the epoch (exact: no float)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def dag_of(envelope: PacketEnvelope) -> Dag | None:
    """The agent DAG a research envelope reports (None for any other envelope)."""
    if envelope.type != RESEARCH_TYPE:
        return None
    found = PlanResearch.model_validate(envelope.data)
    research = found.research
    return Dag(
        collection=found.collection,
        at=micros(envelope.time),
        agents=research.agents,
        hard=research.hard_edges,
        soft=research.soft_edges,
        waves=research.waves,
        order=research.order,
        run=envelope.correlation_id,
    )


class DagHook:
    def __init__(self, writes: BestEffort) -> None:
        self.writes = writes

    @classmethod
    def open(cls, settings: GraphSettings, redis: RedisClient) -> DagHook:
        """Writing where ``settings`` say, FalkorDB through the planner's own Redis client."""
        graph = open_graph(settings, redis=redis)
        return cls(BestEffort(graph, timeout_s=settings.graph_hook_timeout_s))

    async def record(self, envelopes: Sequence[PacketEnvelope]) -> None:
        """Write the DAG of the research among ``envelopes`` (if there is one)."""
        for envelope in envelopes:
            dag = dag_of(envelope)
            if dag is not None:
                await self.writes(
                    "agent DAG",
                    partial(SemanticGraph.write_dag, dag=dag),
                    collection=dag.collection,
                    correlation_id=envelope.correlation_id,
                    envelope=envelope.id,
                )

    async def close(self) -> None:
        await self.writes.close()
