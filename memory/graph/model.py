"""What the semantic graph holds and answers, as plain values (no driver types)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

DependencyKind = Literal["hard", "soft"]
ExpressionKind = Literal["expression", "subexpression"]


@dataclass(frozen=True, slots=True)
class EnvelopeNode:
    """One envelope's place in the lineage: who sent it, in which run, caused by what."""

    id: str
    type: str
    kind: str
    #: The agent type of the source (``agent://planner/1`` -> ``planner``).
    agent: str
    source: str
    #: ISO 8601 UTC with microseconds (sorts as text).
    time: str
    stream: str
    run: str
    cause: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "kind": self.kind,
            "agent": self.agent,
            "source": self.source,
            "time": self.time,
            "stream": self.stream,
            "run": self.run,
            "cause": self.cause,
        }


@dataclass(frozen=True, slots=True)
class Dag:
    """A collection's agent dependency DAG as one research found it (``at``: its time in µs)."""

    collection: str
    at: int
    agents: tuple[str, ...]
    hard: tuple[tuple[str, str], ...]
    soft: tuple[tuple[str, str], ...]
    waves: tuple[tuple[str, ...], ...] = ()
    order: tuple[str, ...] = ()
    #: The run (correlation id) of the research, when known.
    run: str | None = None

    def agent_rows(self) -> list[dict[str, Any]]:
        wave = {name: i for i, names in enumerate(self.waves) for name in names}
        position = {name: i for i, name in enumerate(self.order or self.agents)}
        return [{"name": a, "wave": wave.get(a), "position": position.get(a)} for a in self.agents]

    def edge_rows(self) -> list[dict[str, Any]]:
        return [{"agent": a, "dependency": d, "kind": "hard"} for a, d in self.hard] + [
            {"agent": a, "dependency": d, "kind": "soft"} for a, d in self.soft
        ]


@dataclass(frozen=True, slots=True)
class ExpressionNode:
    id: str
    kind: ExpressionKind
    #: The canonical hash of the request's expressions (``SymPyResult.expr_hash``).
    hash: str
    #: A subexpression's CSE name (``x0``).
    name: str | None = None
    #: The expression as written (an input) or the subexpression's right-hand side.
    text: str | None = None
    #: An input expression after CSE, in terms of the subexpressions.
    reduced: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "hash": self.hash,
            "name": self.name,
            "text": self.text,
            "reduced": self.reduced,
        }


@dataclass(frozen=True, slots=True)
class ExpressionGraph:
    """Expressions, their subexpressions and symbols: every ``EXPRESSION_DEPENDS_ON`` edge."""

    nodes: tuple[ExpressionNode, ...]
    #: ``(expression id, expression id)``: an expression uses a subexpression.
    depends: tuple[tuple[str, str], ...] = ()
    #: ``(expression id, symbol name)``: an expression uses a symbol.
    symbols: tuple[tuple[str, str], ...] = ()

    @property
    def roots(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.nodes if n.kind == "expression")


@dataclass(frozen=True, slots=True)
class LineageStep:
    """One envelope of a causal chain; ``type`` is None for a cause not projected yet."""

    depth: int
    id: str
    type: str | None
    kind: str | None
    agent: str | None
    source: str | None
    time: str | None
    stream: str | None
    run: str | None
    cause: str | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> LineageStep:
        values: dict[str, Any] = {f.name: row.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Lineage:
    """The causal chain of an envelope, from it (depth 0) back to the root of its run."""

    envelope: str
    steps: tuple[LineageStep, ...]
    #: The walk stopped at ``LINEAGE_MAX_DEPTH`` with causes left.
    truncated: bool = False

    @property
    def root(self) -> LineageStep:
        return self.steps[-1]

    @property
    def complete(self) -> bool:
        """The chain reaches an envelope that has no cause (the run's first one)."""
        return not self.truncated and self.root.type is not None and self.root.cause is None


@dataclass(frozen=True, slots=True)
class DagView:
    """The newest DAG of a collection as stored, agents in planning order."""

    collection: str
    at: int
    agents: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    hard: tuple[tuple[str, str], ...]
    soft: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ExpressionEdge:
    source: str
    source_kind: str | None
    source_text: str | None
    #: ``Expression`` or ``Symbol``.
    label: str
    #: An expression id or a symbol name.
    target: str
    target_kind: str | None
    target_text: str | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> ExpressionEdge:
        values: dict[str, Any] = {f.name: row.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Counts:
    """Nodes per label and edges per type of one namespace."""

    nodes: dict[str, int] = field(default_factory=dict)
    edges: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"nodes": dict(self.nodes), "edges": dict(self.edges)}


@dataclass(frozen=True, slots=True)
class Neighbour:
    """An entity linked to another (``SemanticGraph.neighbours``): its label and id, the
    relationship's type and properties, and which way the link goes from the one asked about."""

    label: str
    id: str
    rel: str
    direction: Literal["out", "in"]
    props: dict[str, Any] = field(default_factory=dict)
