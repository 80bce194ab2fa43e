"""Phase 0 of an extraction: the dependency DAG, its order and waves, the locked plan (a to-do list).

Pure functions of a :class:`Collection` (no I/O):

* :func:`research` - the DAG of hard dependencies; every cycle as a path
  (``a -> b -> c -> a``); the topological order, ties broken first by soft
  dependencies (an agent whose soft dependency is still to come waits, unless
  every ready agent waits) and then by name; the waves (an agent's wave is one
  more than the latest wave of its hard dependencies, soft ones never delay);
* :func:`build_plan` - one item per generated file, doc, link and agent
  manifest (see :mod:`.plan` for the format), and the entries no kind
  determines or whose kind has nothing to render, each as a located error;
* :func:`lock` - both, raising :class:`SchemaErrors` for a cycle, and in
  strict mode for anything unresolvable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agents.contracts.extraction.collection import Collection, SchemaError, SchemaErrors
from agents.contracts.extraction.plan import LockedPlan, PlanItem, Research, Unresolved

from .resolve import LinkResolver, Problem, resolve_files

Graph = Mapping[str, Sequence[str]]


def research(collection: Collection) -> Research:
    names = collection.names()
    hard = {a.name: tuple(a.depends_on.hard) for a in collection}
    soft = {a.name: tuple(d for d in a.depends_on.soft if d in hard and d != a.name) for a in collection}
    external = tuple((a.name, d) for a in collection for d in a.depends_on.soft if d not in hard)
    edges = dict(
        agents=tuple(names),
        hard_edges=tuple((a, d) for a in names for d in hard[a]),
        soft_edges=tuple((a, d) for a in names for d in soft[a]),
        external_soft=external,
    )
    cycles = find_cycles(hard)
    if cycles:
        return Research(**edges, cycles=tuple(tuple(c) for c in cycles))
    order = topological_order(hard, soft)
    return Research(**edges, order=tuple(order), waves=tuple(tuple(w) for w in waves(hard, order)))


def topological_order(hard: Graph, soft: Graph | None = None) -> list[str]:
    """Every agent after its hard dependencies; ties: no soft dependency still to come, then name."""
    soft = soft or {}
    remaining = {a: set(deps) for a, deps in hard.items()}
    order: list[str] = []
    while remaining:
        placed = set(order)
        ready = [a for a, deps in remaining.items() if deps <= placed]
        if not ready:
            raise ValueError(f"hard dependencies form a cycle among {sorted(remaining)}")
        pick = min(ready, key=lambda a: (any(s in remaining for s in soft.get(a, ())), a))
        order.append(pick)
        del remaining[pick]
    return order


def waves(hard: Graph, order: Sequence[str]) -> list[list[str]]:
    """Agents grouped by wave (0: no hard dependency), each wave in topological order."""
    level: dict[str, int] = {}
    for name in order:
        level[name] = 1 + max((level[d] for d in hard[name]), default=-1)
    grouped: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
    for name in order:
        grouped[level[name]].append(name)
    return grouped


def find_cycles(hard: Graph) -> list[list[str]]:
    """One cycle per knot of hard dependencies, each from its smallest name: ``[a, b, c, a]``.

    Agents that can be ordered are peeled off; from the smallest remaining agent, follow
    the smallest remaining dependency until an agent repeats. That loop is a cycle; its
    agents are set aside and the peeling goes on until nothing is left.
    """
    remaining = {a: {d for d in deps if d in hard} for a, deps in hard.items()}
    cycles: list[list[str]] = []
    while True:
        _peel(remaining)
        if not remaining:
            return cycles
        walk = [min(remaining)]
        while walk[-1] not in walk[:-1]:
            walk.append(min(remaining[walk[-1]] & remaining.keys()))
        loop = walk[walk.index(walk[-1]) :]
        start = loop.index(min(loop[:-1]))
        cycles.append([*loop[start:-1], *loop[:start], loop[start]])
        for name in loop:
            remaining.pop(name, None)


def _peel(remaining: dict[str, set[str]]) -> None:
    """Remove every agent whose dependencies can all be ordered (Kahn's algorithm)."""
    changed = True
    while changed:
        changed = False
        for name in sorted(remaining):
            if not remaining[name] & remaining.keys():
                del remaining[name]
                changed = True


def cycle_errors(collection: Collection, found: Research) -> list[SchemaError]:
    """Each cycle, reported at the hard dependency its first agent has on the next one."""
    errors = []
    for cycle in found.cycles:
        agent, dep = cycle[0], cycle[1]
        index = collection.agent(agent).depends_on.hard.index(dep)
        path = " -> ".join(cycle)
        errors.append(
            collection.error(agent, ("depends_on", "hard", index), "cycle", f"forms a cycle: {path}")
        )
    return errors


def build_plan(collection: Collection, found: Research) -> tuple[LockedPlan, list[SchemaError]]:
    """The locked plan, and an error for every entry it leaves out (listed in ``unresolved``)."""
    if not found.acyclic:
        raise ValueError("a plan needs an acyclic dependency graph")
    wave_of = {name: w for w, names in enumerate(found.waves) for name in names}
    files = {a.name: resolve_files(a) for a in collection}
    links = LinkResolver(collection, files)
    items: list[PlanItem] = []
    problems: list[tuple[str, Problem]] = []
    owner: dict[str, str] = {}
    for name in found.order:
        link_items, link_problems = links.resolve(name)
        problems += [(name, p) for p in (*files[name].problems, *link_problems)]
        for draft in (*files[name].items, *link_items):
            first = owner.setdefault(draft.path, name) if draft.category != "link" else name
            if first != name:
                problems.append((name, _collision(draft, first)))
                continue
            items.append(draft.model_copy(update={"todo": len(items) + 1, "wave": wave_of[name]}))
    plan = LockedPlan.seal(
        collection=collection.name,
        agents=tuple(collection.agent(n) for n in found.order),
        order=found.order,
        waves=found.waves,
        items=tuple(items),
        unresolved=tuple(p.unresolved for _, p in problems),
    )
    return plan, [collection.error(name, p.loc, "unresolvable", p.message) for name, p in problems]


def _collision(item: PlanItem, first: str) -> Problem:
    """A path two agents plan (a rootpath inside another agent's): the later one is left out."""
    reason = f"agent '{first}' plans {item.path} too"
    where = Unresolved(agent=item.agent, field="rootpath", path=item.path, reason=reason)
    return Problem(("rootpath",), f"'{item.path}' is unresolvable: {reason}", where)


def lock(collection: Collection, *, strict: bool = True) -> LockedPlan:
    """Research and plan; SchemaErrors on a cycle, or (strict) on anything unresolvable."""
    found = research(collection)
    if not found.acyclic:
        raise SchemaErrors(cycle_errors(collection, found))
    plan, errors = build_plan(collection, found)
    if errors and strict:
        raise SchemaErrors(errors)
    return plan


__all__ = ["build_plan", "cycle_errors", "find_cycles", "lock", "research", "topological_order", "waves"]
