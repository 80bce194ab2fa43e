"""The semantic graph: what L9 writes and asks, over either store (:class:`GraphBackend`).

Writes are idempotent (the Cypher MERGEs) and each query is bounded by
``timeout_s``: past it the store counts as unavailable. The schema (indexes or
constraints) is created before the first write of each process.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from . import cypher
from .errors import GraphNotFound, GraphQueryError, GraphUnavailable
from .model import (
    Counts,
    Dag,
    DagView,
    EnvelopeNode,
    ExpressionEdge,
    ExpressionGraph,
    Lineage,
    LineageStep,
    Neighbour,
)
from .port import GraphBackend, Row

#: Rows per UNWIND: bounds the size of one query (FalkorDB sends parameters as text).
CHUNK = 500
T = TypeVar("T")
#: A value a link's relationship may carry as a property.
Scalar = str | int | float | bool
_PROPERTY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def chunks(rows: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def check_properties(props: Mapping[str, Scalar]) -> dict[str, Scalar]:
    """``props`` if both stores can keep them: identifier keys, text / number / bool values."""
    for key, value in props.items():
        if not isinstance(key, str) or not _PROPERTY.match(key):
            raise GraphQueryError(f"property name {key!r}: want letters, digits or _, from a letter or _")
        if not isinstance(value, str | int | float) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise GraphQueryError(f"property {key}: {value!r:.40} is not text, a finite number or a bool")
    return dict(props)


def _keyed(rows: list[Row], *keys: str) -> list[Row]:
    """``rows``, refusing one whose key is empty (FalkorDB would duplicate its node)."""
    for row in rows:
        for key in keys:
            if not row.get(key):
                raise GraphQueryError(f"graph row {row!r}: {key!r} must not be empty")
    return rows


class SemanticGraph:
    def __init__(self, backend: GraphBackend, namespace: str, *, timeout_s: float = 5.0) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.backend, self.namespace, self.timeout_s = backend, namespace, timeout_s
        self._schema_ready = False
        self._schema_lock = anyio.Lock()
        self._entity_labels: set[str] = set()

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def where(self) -> str:
        return self.backend.where

    def __repr__(self) -> str:
        return f"SemanticGraph({self.kind} at {self.where}, namespace {self.namespace!r})"

    # -- plumbing ------------------------------------------------------------------------------
    async def _bounded(self, what: str, call: Any) -> Any:
        try:
            with anyio.fail_after(self.timeout_s):
                return await call
        except TimeoutError:
            raise GraphUnavailable(
                f"{what}: no answer from {self.kind} at {self.where} within {self.timeout_s:g}s"
            ) from None

    async def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        async with self._schema_lock:
            if not self._schema_ready:
                await self._bounded("creating the graph schema", self.backend.setup())
                self._schema_ready = True

    async def _write(self, query: str, **params: Any) -> None:
        await self._ensure_schema()
        await self._bounded("graph write", self.backend.write(query, {"ns": self.namespace, **params}))

    async def _write_rows(self, query: str, rows: Sequence[Row], **params: Any) -> None:
        for part in chunks(rows):
            await self._write(query, rows=list(part), **params)

    async def _read(self, query: str, **params: Any) -> list[Row]:
        rows: list[Row] = await self._bounded(
            "graph read", self.backend.read(query, {"ns": self.namespace, **params})
        )
        return rows

    async def ping(self) -> None:
        """GraphUnavailable unless the store answers."""
        await self._read(cypher.PING)

    async def close(self) -> None:
        await self.backend.close()

    # -- writes --------------------------------------------------------------------------------
    async def project_envelopes(self, nodes: Iterable[EnvelopeNode]) -> None:
        """Envelope nodes with their run and agent, then their causes (which may come later)."""
        unique = list({n.id: n for n in nodes}.values())
        rows = _keyed([n.row() for n in unique], "id", "run", "agent")
        await self._write_rows(cypher.MERGE_ENVELOPES, rows, runtime=cypher.RUNTIME_COLLECTION)
        caused = [{"id": n.id, "cause": n.cause} for n in unique if n.cause]
        await self._write_rows(cypher.MERGE_CAUSES, caused)

    async def write_dag(self, dag: Dag) -> None:
        """The collection's agents and DEPENDS_ON edges, versioned by ``dag.at``."""
        if not dag.collection or "/" in dag.collection:
            raise GraphQueryError(f"collection name {dag.collection!r}: not empty, no '/'")
        scope = {"collection": dag.collection, "at": dag.at}
        await self._write_rows(cypher.MERGE_DAG_AGENTS, _keyed(dag.agent_rows(), "name"), **scope)
        await self._write_rows(cypher.MERGE_DAG_EDGES, dag.edge_rows(), **scope)
        if dag.run:
            await self._write(cypher.MERGE_DAG_RUN, run=dag.run, collection=dag.collection)

    async def write_expressions(self, graph: ExpressionGraph) -> None:
        """Expression nodes first, then the edges between them and to their symbols."""
        await self._write_rows(cypher.MERGE_EXPRESSIONS, _keyed([n.row() for n in graph.nodes], "id"))
        edges = [{"source": s, "target": t} for s, t in graph.depends]
        await self._write_rows(cypher.MERGE_EXPRESSION_EDGES, edges)
        symbols = _keyed([{"source": s, "symbol": name} for s, name in graph.symbols], "symbol")
        await self._write_rows(cypher.MERGE_SYMBOL_EDGES, symbols)

    async def link_entities(
        self,
        agent: str,
        from_label: str,
        from_id: str,
        rel: str,
        to_label: str,
        to_id: str,
        props: Mapping[str, Scalar] | None = None,
    ) -> None:
        """MERGE the entities ``(from_label, from_id)`` and ``(to_label, to_id)`` of agent
        ``agent`` and the relationship ``rel`` from the first to the second, and set ``props``
        on it (a repeat's values replace the earlier ones). Idempotent: one node per label and
        id, one relationship per pair and type. Labels and types: :func:`cypher.entity_label`,
        :func:`cypher.relationship_type`; GraphQueryError for a bad one."""
        query = cypher.merge_link(from_label, rel, to_label)
        params = {"agent": agent, "from_id": from_id, "to_id": to_id}
        for name, value in params.items():
            if not isinstance(value, str) or not value:
                raise GraphQueryError(f"link {rel}: {name} must be non-empty text, got {value!r:.60}")
        values = check_properties(props or {})
        for label in (from_label, to_label):
            if label not in self._entity_labels:
                await self._ensure_schema()
                await self._bounded("indexing entities", self.backend.index_entities(label))
                self._entity_labels.add(label)
        await self._write(query, **params, props=values)

    async def clear(self) -> None:
        """Delete every node and edge of this namespace."""
        await self._write(cypher.CLEAR)

    # -- reads ---------------------------------------------------------------------------------
    async def lineage(self, envelope_id: str) -> Lineage:
        """The causal chain of ``envelope_id`` back to its run's first envelope."""
        rows = await self._read(cypher.LINEAGE, id=envelope_id)
        if not rows:
            raise GraphNotFound(f"envelope {envelope_id} is not in the graph")
        steps = tuple(LineageStep.of(row) for row in rows)
        truncated = steps[-1].depth >= cypher.LINEAGE_MAX_DEPTH and steps[-1].cause is not None
        return Lineage(envelope_id, steps, truncated)

    async def effects(self, envelope_id: str) -> tuple[LineageStep, ...]:
        """What ``envelope_id`` caused, directly or not: every envelope whose chain of causes
        reaches it (``depth`` 1 for a direct effect; ``cause`` says which step each hangs
        from), nearest first. GraphNotFound when the graph does not hold the envelope."""
        if not await self._read(cypher.EFFECT_ROOT, id=envelope_id):
            raise GraphNotFound(f"envelope {envelope_id} is not in the graph")
        rows = await self._read(cypher.EFFECTS, id=envelope_id)
        return tuple(LineageStep.of(row) for row in rows)

    async def dag(self, collection: str) -> DagView:
        """The newest stored DAG of ``collection``."""
        version = await self._read(cypher.DAG_VERSION, collection=collection)
        at = version[0]["at"] if version else None
        if at is None:
            raise GraphNotFound(f"collection {collection!r} has no dependency graph in the graph store")
        agents = await self._read(cypher.DAG_AGENTS, collection=collection, at=at)
        edges = await self._read(cypher.DAG_EDGES, collection=collection, at=at)
        waves: dict[int, list[str]] = {}
        for row in agents:
            if row["wave"] is not None:
                waves.setdefault(int(row["wave"]), []).append(row["name"])
        return DagView(
            collection=collection,
            at=int(at),
            agents=tuple(row["name"] for row in agents),
            waves=tuple(tuple(waves[w]) for w in sorted(waves)),
            hard=tuple((e["agent"], e["dependency"]) for e in edges if e["kind"] == "hard"),
            soft=tuple((e["agent"], e["dependency"]) for e in edges if e["kind"] == "soft"),
        )

    async def expression_edges(self, expression_id: str) -> list[ExpressionEdge]:
        """Every EXPRESSION_DEPENDS_ON edge reachable from the expression ``expression_id``."""
        rows = await self._read(cypher.EXPRESSION_EDGES, id=expression_id)
        return [ExpressionEdge.of(row) for row in rows]

    async def neighbours(
        self,
        agent: str,
        label: str,
        id: str,
        *,
        rel: str | None = None,
        direction: cypher.Direction = "out",
        limit: int = 1000,
    ) -> list[Neighbour]:
        """The entities of agent ``agent`` linked from the entity ``(label, id)`` (``direction``
        ``"in"``: linked to it), by relationship ``rel`` or any; sorted by relationship type,
        label and id; at most ``limit``."""
        if direction not in ("out", "in"):
            raise GraphQueryError(f"direction {direction!r}: 'out' or 'in'")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= cypher.NEIGHBOURS_MAX:
            raise GraphQueryError(f"limit {limit!r}: 1 to {cypher.NEIGHBOURS_MAX}")
        query = cypher.neighbours_query(label, rel, direction)
        rows = await self._read(query, agent=agent, id=id, limit=limit)
        return [
            Neighbour(row["label"], row["id"], row["rel"], direction, dict(row["props"] or {}))
            for row in rows
        ]

    async def counts(self) -> Counts:
        nodes = await self._read(cypher.NODE_COUNTS)
        edges = await self._read(cypher.EDGE_COUNTS)
        return Counts(
            nodes={r["label"]: int(r["n"]) for r in nodes},
            edges={r["type"]: int(r["n"]) for r in edges},
        )
