"""``l9 graph ...``: ask the semantic graph (FalkorDB by default, Neo4j with ``NEO4J_URL``).

    l9 graph lineage ENVELOPE_ID [--json]          the causal chain back to the run's first envelope
    l9 graph deps COLLECTION [--mermaid | --json]  the newest agent DAG of a collection
    l9 graph expr EXPRESSION_ID [--json]           what an expression depends on (CSE, symbols)
    l9 graph stats [--json]                        nodes per label, edges per type

The graph is written by the lineage projector (``l9 agent run lineage``), and
at once by the planner (DAGs) and the SymPy worker (expression graphs). An
unknown envelope, collection or expression exits 1 naming it; an unreachable
graph store exits 1 naming the store.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import anyio
import typer
from redis.exceptions import RedisError

from bus import open_client
from bus.connection import safe_url
from l9.cli.common import fail, load_settings
from l9.devstack import StackError, resolve_endpoints
from l9.settings import Settings
from memory.graph import (
    Counts,
    DagView,
    ExpressionEdge,
    GraphError,
    GraphNotFound,
    GraphUnavailable,
    Lineage,
    SemanticGraph,
    open_graph,
)

T = TypeVar("T")
graph_app = typer.Typer(
    name="graph",
    no_args_is_help=True,
    help="The semantic graph: envelope lineage, agent DAGs, expression graphs.",
)
NOT_PROJECTED = "is the lineage projector (l9 agent run lineage) running?"
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _with_graph(work: Callable[[SemanticGraph], Awaitable[T]]) -> T:
    """Run ``work`` on the configured graph store; its errors as one line and exit 1."""
    settings = load_settings()
    try:
        redis_url = _redis_url(settings)
    except StackError as exc:
        raise fail(str(exc)) from None

    async def run() -> T:
        redis = None
        if redis_url is not None:  # a cluster node or a standalone server: the client asks it
            try:
                redis = await open_client(redis_url, cluster=settings.redis_cluster)
            except (RedisError, OSError) as exc:
                raise GraphUnavailable(f"Redis at {safe_url(redis_url)} unreachable: {exc}") from exc
        graph = open_graph(settings, redis=redis)
        try:
            return await work(graph)
        finally:
            await graph.close()
            if redis is not None:
                await redis.aclose()

    try:
        return anyio.run(run)
    except GraphNotFound as exc:
        raise fail(f"{exc} ({NOT_PROJECTED})") from None
    except GraphUnavailable as exc:
        raise fail(f"the graph store is unreachable: {exc}") from None
    except GraphError as exc:
        raise fail(str(exc)) from None


def _redis_url(settings: Settings) -> str | None:
    """The bus Redis, needed only when the graph is FalkorDB in it."""
    if settings.neo4j_url or settings.graph_url:
        return None
    return resolve_endpoints(settings).redis_url


# -- rendering (pure) ---------------------------------------------------------------------------
def lineage_json(lineage: Lineage) -> dict[str, Any]:
    return {
        "envelope": lineage.envelope,
        "run": lineage.steps[0].run,
        "complete": lineage.complete,
        "truncated": lineage.truncated,
        "chain": [
            {name: getattr(step, name) for name in ("depth", "id", "type", "kind", "agent", "time", "stream")}
            | {"source": step.source, "cause": step.cause}
            for step in lineage.steps
        ],
    }


def render_lineage(lineage: Lineage) -> str:
    first, root = lineage.steps[0], lineage.root
    lines = [f"envelope {lineage.envelope} (run {first.run or '?'}): {len(lineage.steps)} envelope(s)"]
    width = max(len(step.type or "?") for step in lineage.steps)
    for step in lineage.steps:
        arrow = "   " if step.depth == 0 else "<- "
        kind = step.type or "? (not projected yet)"
        lines.append(
            f"  {arrow}{kind:<{width}}  {step.agent or '?':<12} {step.stream or '?':<12} "
            f"{step.time or '?':<32} {step.id}"
        )
    if lineage.truncated:
        lines.append(f"  ... truncated at depth {root.depth}: {root.id} has more causes")
    elif root.type is None:
        lines.append(f"  ... the chain stops at {root.id}: it is not projected yet ({NOT_PROJECTED})")
    else:
        lines.append(f"  the run starts with {root.type} from {root.agent}")
    return "\n".join(lines)


def _planned_at(at: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=at)).isoformat(timespec="seconds")


def dag_json(view: DagView) -> dict[str, Any]:
    return {
        "collection": view.collection,
        "planned_at": _planned_at(view.at),
        "agents": list(view.agents),
        "waves": [list(w) for w in view.waves],
        "hard_edges": [list(e) for e in view.hard],
        "soft_edges": [list(e) for e in view.soft],
    }


def render_dag(view: DagView) -> str:
    lines = [
        f"{view.collection}: {len(view.agents)} agents, {len(view.hard)} hard and {len(view.soft)} soft "
        f"dependencies (research of {_planned_at(view.at)})"
    ]
    if view.waves:
        lines.append("waves (agents of one wave can be built together):")
        lines += [f"  {i}: {', '.join(wave)}" for i, wave in enumerate(view.waves)]
    else:
        lines.append(f"agents (no waves: the hard dependencies have a cycle): {', '.join(view.agents)}")
    lines.append("dependencies (agent -> what it depends on):")
    edges = sorted([(a, d, "hard") for a, d in view.hard] + [(a, d, "soft") for a, d in view.soft])
    lines += [f"  {a} -> {d}  ({kind})" for a, d, kind in edges] or ["  none"]
    return "\n".join(lines)


def render_mermaid(view: DagView) -> str:
    """A Mermaid flowchart: solid arrows for hard dependencies, dotted for soft ones."""
    ids = {name: f"a{i}" for i, name in enumerate(view.agents)}
    lines = ["flowchart LR"]
    lines += [f'  {ids[name]}["{name.replace(chr(34), "#quot;")}"]' for name in view.agents]
    lines += [f"  {ids[a]} --> {ids[d]}" for a, d in view.hard if a in ids and d in ids]
    lines += [f"  {ids[a]} -.-> {ids[d]}" for a, d in view.soft if a in ids and d in ids]
    return "\n".join(lines)


def render_expression(root: str, edges: list[ExpressionEdge]) -> str:
    lines = [f"expression {root}: {len(edges)} EXPRESSION_DEPENDS_ON edge(s)"]
    for edge in edges:
        target = f"symbol {edge.target}" if edge.label == "Symbol" else f"{edge.target_kind} {edge.target}"
        if edge.target_text:
            target += f" = {edge.target_text}"
        lines.append(f"  {edge.source_kind} {edge.source} -> {target}")
    return "\n".join(lines)


def render_counts(counts: Counts) -> str:
    lines = ["nodes:"] + [f"  {label}: {n}" for label, n in counts.nodes.items()]
    lines += ["edges:"] + [f"  {kind}: {n}" for kind, n in counts.edges.items()]
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------------
@graph_app.command()
def lineage(
    envelope_id: Annotated[str, typer.Argument(help="the envelope id")], as_json: AsJson = False
) -> None:
    """The causal chain of an envelope back to its run's first envelope, with types and agents."""
    found = _with_graph(lambda graph: graph.lineage(envelope_id))
    typer.echo(json.dumps(lineage_json(found)) if as_json else render_lineage(found))


@graph_app.command()
def deps(
    collection: Annotated[str, typer.Argument(help="the collection's name (its file name without suffix)")],
    mermaid: Annotated[bool, typer.Option("--mermaid", help="print a Mermaid flowchart")] = False,
    as_json: AsJson = False,
) -> None:
    """The newest agent dependency DAG of a collection, as the planner's research found it."""
    if mermaid and as_json:
        raise fail("choose --mermaid or --json, not both", 2)
    view = _with_graph(lambda graph: graph.dag(collection))
    if as_json:
        typer.echo(json.dumps(dag_json(view)))
    else:
        typer.echo(render_mermaid(view) if mermaid else render_dag(view))


@graph_app.command()
def expr(
    expression_id: Annotated[str, typer.Argument(help="an expression id (a result's expr_hash)")],
    as_json: AsJson = False,
) -> None:
    """What an expression depends on: its CSE subexpressions and symbols."""

    async def edges(graph: SemanticGraph) -> list[ExpressionEdge]:
        found = await graph.expression_edges(expression_id)
        if not found:
            raise GraphNotFound(f"expression {expression_id} has no dependencies in the graph")
        return found

    found = _with_graph(edges)
    if as_json:
        typer.echo(json.dumps([asdict(edge) for edge in found]))
    else:
        typer.echo(render_expression(expression_id, found))


@graph_app.command()
def stats(as_json: AsJson = False) -> None:
    """Nodes per label and edges per type in this namespace's graph."""
    counts = _with_graph(lambda graph: graph.counts())
    typer.echo(json.dumps(counts.as_dict()) if as_json else render_counts(counts))
