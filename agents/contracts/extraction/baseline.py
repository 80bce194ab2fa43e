"""Phase 1 of an extraction: the baseline checks, each one recorded with its result.

* **memory backends reachable** - one check per backend the agents' memory
  layers use (``redis``/``redis_cluster`` -> ``redis``, ``postgres`` ->
  ``postgres``, ``neo4j``/``falkordb`` -> ``graph``); each runs the probe given
  for it (an async callable that raises when the backend is not there) within
  a timeout. A backend with no probe (``hypergraphdb``) fails.
* **hard dependencies present** - one check per agent: each hard dependency
  is an agent of the collection.
* **governance anchors configured** - one check per agent: each anchor it
  names is an anchor of the governance policy file.

:func:`run_baseline` takes the probes and the configured anchors, so it runs
as well against fakes as against the real stack (:func:`stack_probes`).
:func:`baseline_errors` points each failure at the line that causes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Collection as Names
from typing import Literal

import anyio
import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ConfigDict

from memory.graph import GraphSettings, open_graph

from .collection import Collection, SchemaError

log = structlog.get_logger("l9.extraction.baseline")
Probe = Callable[[], Awaitable[object]]
CheckName = Literal["memory_backend", "hard_dependencies", "governance_anchors"]
#: Which backend serves each storage type.
BACKEND_OF: Mapping[str, str] = {
    "redis": "redis",
    "redis_cluster": "redis",
    "postgres": "postgres",
    "neo4j": "graph",
    "falkordb": "graph",
    "hypergraphdb": "hypergraphdb",
}


class BaselineCheck(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    check: CheckName
    #: The backend, or the agent, the check is about.
    target: str
    ok: bool
    detail: str


class Baseline(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    checks: tuple[BaselineCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[BaselineCheck]:
        return [c for c in self.checks if not c.ok]


async def run_baseline(
    collection: Collection,
    *,
    probes: Mapping[str, Probe],
    anchors: Names[str],
    timeout_s: float = 5.0,
) -> Baseline:
    """Every check of phase 1; probes run concurrently, each within ``timeout_s``."""
    users = backend_users(collection)
    results: dict[str, BaselineCheck] = {}
    async with anyio.create_task_group() as tg:
        for backend in users:
            tg.start_soon(_probe_into, results, backend, probes.get(backend), users[backend], timeout_s)
    checks = [results[b] for b in users]
    checks += [_dependencies(collection, a.name) for a in collection]
    checks += [_anchors(collection, a.name, anchors) for a in collection]
    baseline = Baseline(checks=tuple(checks))
    log.info("baseline.checked", collection=collection.name, ok=baseline.ok, failed=len(baseline.failures()))
    return baseline


def backend_users(collection: Collection) -> dict[str, list[tuple[str, str]]]:
    """Backend -> ``[(agent, memory layer), ...]`` using it, in collection order."""
    users: dict[str, list[tuple[str, str]]] = {}
    for agent in collection:
        for layer, memory in agent.memorytopology.layers():
            users.setdefault(BACKEND_OF[memory.storagetype], []).append((agent.name, layer))
    return users


async def _probe_into(
    results: dict[str, BaselineCheck],
    backend: str,
    probe: Probe | None,
    users: list[tuple[str, str]],
    timeout_s: float,
) -> None:
    who = ", ".join(f"{layer} of {agent}" for agent, layer in users)
    if probe is None:
        results[backend] = BaselineCheck(
            check="memory_backend", target=backend, ok=False, detail=f"no probe for this backend ({who})"
        )
        return
    try:
        with anyio.fail_after(timeout_s):
            await probe()
    except Exception as exc:  # any failure of a probe is the check's result
        reason = (
            f"timed out after {timeout_s:g}s"
            if isinstance(exc, TimeoutError)
            else f"{type(exc).__name__}: {exc}"
        )
        results[backend] = BaselineCheck(check="memory_backend", target=backend, ok=False, detail=reason)
        return
    results[backend] = BaselineCheck(
        check="memory_backend", target=backend, ok=True, detail=f"reachable ({who})"
    )


def _dependencies(collection: Collection, name: str) -> BaselineCheck:
    hard = collection.agent(name).depends_on.hard
    missing = [d for d in hard if d not in collection.names()]
    if missing:
        detail = f"not in the collection: {', '.join(missing)}"
    else:
        detail = f"present: {', '.join(hard)}" if hard else "none"
    return BaselineCheck(check="hard_dependencies", target=name, ok=not missing, detail=detail)


def _anchors(collection: Collection, name: str, configured: Names[str]) -> BaselineCheck:
    named = collection.agent(name).governance.anchors
    unknown = [a for a in named if a not in configured]
    if unknown:
        detail = (
            f"not configured: {', '.join(unknown)} (configured: {', '.join(sorted(configured)) or 'none'})"
        )
    else:
        detail = f"configured: {', '.join(named)}"
    return BaselineCheck(check="governance_anchors", target=name, ok=not unknown, detail=detail)


def baseline_errors(collection: Collection, baseline: Baseline, anchors: Names[str]) -> list[SchemaError]:
    """Each failed check as an error at the line that causes it."""
    errors: list[SchemaError] = []
    users, names = backend_users(collection), set(collection.names())
    for check in baseline.failures():
        if check.check == "memory_backend":
            agent, layer = users[check.target][0]
            message = f"needs the {check.target} backend, which failed its baseline check: {check.detail}"
            errors.append(
                collection.error(agent, ("memorytopology", layer, "storagetype"), "baseline", message)
            )
        elif check.check == "hard_dependencies":
            hard = collection.agent(check.target).depends_on.hard
            bad = "names '{}', which is not an agent of the collection"
            errors += _each(collection, check.target, ("depends_on", "hard"), hard, names, bad)
        else:
            named = collection.agent(check.target).governance.anchors
            bad = "names anchor '{}', which the governance policy does not configure"
            errors += _each(collection, check.target, ("governance", "anchors"), named, anchors, bad)
    return errors


def _each(
    collection: Collection,
    agent: str,
    field: tuple[str, str],
    values: tuple[str, ...],
    known: Names[str],
    bad: str,
) -> list[SchemaError]:
    return [
        collection.error(agent, (*field, i), "baseline", bad.format(value))
        for i, value in enumerate(values)
        if value not in known
    ]


def stack_probes(redis_url: str, database_url: str, graph: GraphSettings | None = None) -> dict[str, Probe]:
    """Probes of the real stack: Redis PING, a PostgreSQL ``SELECT 1``, the graph store.

    The graph store is the one ``graph`` settings choose when they name one (``NEO4J_URL``,
    ``L9_GRAPH_URL``: a query must answer there); else FalkorDB, a module of the bus's Redis
    (the embedded default), which must be loaded.
    """

    async def redis_probe() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.ping()
        finally:
            await client.aclose()

    async def graph_probe() -> None:
        if graph is not None and (graph.neo4j_url or graph.graph_url):
            store = open_graph(graph, redis_url)
            try:
                await store.ping()
            finally:
                await store.close()
            return
        client = aioredis.Redis.from_url(redis_url)
        try:
            modules = await client.module_list()
        finally:
            await client.aclose()
        if not any(m.get(b"name") == b"graph" for m in modules):
            raise LookupError("the graph module (FalkorDB) is not loaded in Redis")

    async def postgres_probe() -> None:
        from memory.postgres import probe  # the driver is imported only when the probe runs

        await probe(database_url, timeout_s=5)

    return {"redis": redis_probe, "postgres": postgres_probe, "graph": graph_probe}


__all__ = [
    "BACKEND_OF",
    "Baseline",
    "BaselineCheck",
    "Probe",
    "backend_users",
    "baseline_errors",
    "run_baseline",
    "stack_probes",
]
