"""The planner's own write of each collection's DAG: right after it publishes the research.

Bounded and best effort (:class:`memory.graph.BestEffort`): a failure is logged,
never fails the request; the projector writes the same DAG from the research
envelope (same ``at``, so the same graph).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import redis.asyncio as aioredis

from envelope import PacketEnvelope
from memory.graph import BestEffort, GraphSettings, SemanticGraph, open_graph

from .project import dag_of


class DagHook:
    def __init__(self, writes: BestEffort) -> None:
        self.writes = writes

    @classmethod
    def open(cls, settings: GraphSettings, redis: aioredis.Redis) -> DagHook:
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
