"""The lineage projector: every envelope of every stream, MERGEd into the semantic graph.

Its consumer group ``lineage`` sits on every stream of the namespace (looked up
again every second, like the auditor's). Per batch: decode and verify each
entry -> one :class:`Projection` -> envelope nodes with their runs, agents and
causes, then the DAGs of research envelopes and the expression graphs of SymPy
results -> XACK. Everything is a MERGE, so a batch projected twice (a crash
before the ack, a redelivery) changes nothing.

The graph being away is :class:`GraphUnavailable`: the batch stays pending and
is retried with backoff until the store is back (nothing is acked, nothing
lost); no other agent waits for this group. An entry that cannot be decoded or
whose signature fails is skipped (the auditor dead-letters it; a second dead
letter from this group would only repeat it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog

from bus import TRANSIENT, Entry, Keys, PartitionSet, Rejected, Topology
from bus.connection import RedisClient
from bus.index import known_streams
from bus.topology import AUDIT_STREAM
from envelope import EnvelopeError, Verifier, decode_envelope
from memory.graph import GraphUnavailable, SemanticGraph

from .project import Projection

GROUP = "lineage"
log = structlog.get_logger("l9.lineage")


def is_transient(exc: BaseException) -> bool:
    """Failures to wait out (retry for ever, ack nothing): the graph or Redis being away."""
    return isinstance(exc, (GraphUnavailable, *TRANSIENT))


class Projector:
    """The batch handler and the stream set of the ``lineage`` group."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        graph: SemanticGraph,
        verifier: Verifier,
        topology: Topology,
        partitions: PartitionSet | None = None,
    ) -> None:
        """``partitions``: the share of the namespace's streams this process projects (several
        projector processes split them by partition; all of them by default)."""
        self.redis, self.keys, self.graph = redis, keys, graph
        self.partitions = partitions or PartitionSet()
        self.verifier, self.topology = verifier, topology
        self.stats = {"envelopes": 0, "dags": 0, "expressions": 0, "skipped": 0, "batches": 0}

    async def streams(self) -> Iterable[str]:
        """Every stream of the namespace but the audit feed (batches of the trail, not envelopes
        of a run)."""
        names = await known_streams(self.redis, self.keys, self.partitions.partitions())
        names.update(self.topology.routes.values())
        names.discard(AUDIT_STREAM)
        return sorted(n for n in names if self.partitions.owns(n))

    def project(self, batch: Sequence[Entry]) -> Projection:
        projection = Projection()
        for entry in batch:
            try:
                envelope = decode_envelope(entry.fields, self.verifier)
            except EnvelopeError as exc:
                self.stats["skipped"] += 1
                log.warning(
                    "lineage.entry_skipped",
                    stream=entry.stream,
                    entry_id=entry.entry_id,
                    reason=exc.reason.value,
                    detail=exc.detail,
                )
                continue
            projection.add(envelope, entry.stream)
        return projection

    async def handle(self, batch: Sequence[Entry]) -> Sequence[Rejected]:
        projection = self.project(batch)
        await self.graph.project_envelopes(projection.envelopes)
        for dag in projection.dags:
            await self.graph.write_dag(dag)
        for expressions in projection.expressions:
            await self.graph.write_expressions(expressions)
        self.stats["envelopes"] += len(projection.envelopes)
        self.stats["dags"] += len(projection.dags)
        self.stats["expressions"] += len(projection.expressions)
        self.stats["batches"] += 1
        log.debug("lineage.projected", envelopes=len(projection.envelopes), dags=len(projection.dags))
        return ()
