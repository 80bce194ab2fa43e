"""One agent's entries turned into plan items: files and docs by kind, links by owner.

A ``generatefiles`` / ``generatedocs`` entry becomes an item when it has a
kind (explicit, or by :data:`.kinds.CONVENTIONS`), the kind has something to
render (:func:`.kinds.missing_need`), it is a document when listed in
``generatedocs``, and no earlier entry of the same list already has that
single kind. A ``linkexisting`` entry becomes an item when it names a module
(``L9/core/x.py``, ``L9/core/x`` or ``bus.keys``); a module inside an agent
of the collection must be planned by that agent, and that agent must be a
hard dependency (direct or not), so it is generated first. Everything else is
a :class:`Problem`: an unresolvable entry with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agents.contracts.extraction.collection import Collection, Loc
from agents.contracts.extraction.kinds import (
    DOCUMENT_KINDS,
    KINDS,
    KindSpec,
    Need,
    kind_by_convention,
    missing_need,
)
from agents.contracts.extraction.plan import PlanItem, Unresolved
from agents.contracts.extraction.schema import AgentSchema, FileEntry

_PY_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Kinds whose modules the agent module imports, in this order.
_AGENT_PARTS = ("payloads", "settings", "governance", "kernels")
LINKS = "cursorinstructions.linkexisting"


@dataclass(frozen=True, slots=True)
class Problem:
    loc: Loc
    message: str
    unresolved: Unresolved


@dataclass
class AgentFiles:
    """The items of one agent's files, docs and manifest, and the entries left out."""

    items: list[PlanItem] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: Module of each planned code file of a single kind, by kind.
    module_of_kind: dict[str, str] = field(default_factory=dict)
    #: Every module the agent's planned code files define.
    modules: set[str] = field(default_factory=set)


def declared_needs(agent: AgentSchema) -> set[Need]:
    needs: set[Need] = set()
    if agent.streams.consumes:
        needs |= {"consumes", "streams"}
    if agent.streams.produces:
        needs.add("streams")
    if agent.expressions:
        needs.add("expressions")
    if any(_kind(e) == "agent" for e in agent.cursorinstructions.generatefiles) and "consumes" in needs:
        needs.add("agent")
    return needs


def resolve_files(agent: AgentSchema) -> AgentFiles:
    accepted, problems = _accept(agent)
    out = AgentFiles(problems=problems)
    for list_name, entry, spec in accepted:
        module = module_name(agent.rootpath, entry.path) if _in_code(list_name, spec) else None
        if module is not None:
            out.modules.add(module)
            if spec.single:
                out.module_of_kind[spec.kind] = module
    links = tuple(m for m in map(link_module, agent.cursorinstructions.linkexisting) if m is not None)
    out.items = [_item(agent, list_name, entry, spec, out, links) for list_name, entry, spec in accepted]
    out.items.append(_manifest_item(agent))
    return out


def _accept(agent: AgentSchema) -> tuple[list[tuple[str, FileEntry, KindSpec]], list[Problem]]:
    """Entries with a kind that renders, in list order; the others as problems."""
    needs = declared_needs(agent)
    accepted: list[tuple[str, FileEntry, KindSpec]] = []
    problems: list[Problem] = []
    taken: dict[tuple[str, str], str] = {}
    lists = {
        "generatefiles": agent.cursorinstructions.generatefiles,
        "generatedocs": agent.cursorinstructions.generatedocs,
    }
    for list_name, entries in lists.items():
        for i, entry in enumerate(entries):
            reason = _why_unresolvable(list_name, entry, needs, taken)
            if reason is not None:
                problems.append(
                    _problem(agent.name, ("cursorinstructions", list_name, i), entry.path, reason)
                )
                continue
            spec = KINDS[_kind(entry) or ""]
            taken.setdefault((list_name, spec.kind), entry.path)
            accepted.append((list_name, entry, spec))
    return accepted, problems


def _kind(entry: FileEntry) -> str | None:
    return entry.kind or kind_by_convention(entry.path)


def _why_unresolvable(
    list_name: str, entry: FileEntry, needs: set[Need], taken: dict[tuple[str, str], str]
) -> str | None:
    kind = _kind(entry)
    if kind is None:
        return "no naming convention gives it a kind and it declares none (see docs/SCHEMA.md)"
    if list_name == "generatedocs" and kind not in DOCUMENT_KINDS:
        return f"generatedocs lists documents and kind '{kind}' is not one"
    missing = missing_need(KINDS[kind], needs)
    if missing is not None:
        return f"kind '{kind}' has nothing to render: {missing}"
    earlier = taken.get((list_name, kind))
    if earlier is not None and KINDS[kind].single:
        return f"'{earlier}' is already the agent's '{kind}' file"
    return None


def _problem(agent: str, loc: Loc, path: str, reason: str) -> Problem:
    field_ = ".".join(str(p) for p in loc if isinstance(p, str))
    return Problem(
        loc,
        f"entry '{path}' is unresolvable: {reason}",
        Unresolved(agent=agent, field=field_, path=path, reason=reason),
    )


def _in_code(list_name: str, spec: KindSpec) -> bool:
    return list_name == "generatefiles" and spec.area != "tests" and spec.extension == ".py"


def item_path(agent: AgentSchema, list_name: str, entry_path: str, spec: KindSpec) -> str:
    if list_name == "generatedocs":
        return f"docs/{agent.name}/{entry_path}"
    if spec.area == "tests":
        return f"tests/{agent.name}/{entry_path}"
    return f"code/{agent.rootpath}/{entry_path}"


def _item(
    agent: AgentSchema,
    list_name: str,
    entry: FileEntry,
    spec: KindSpec,
    files: AgentFiles,
    links: tuple[str, ...],
) -> PlanItem:
    module = module_name(agent.rootpath, entry.path) if _in_code(list_name, spec) else None
    return PlanItem(
        todo=1,
        agent=agent.name,
        category="doc" if list_name == "generatedocs" else "file",
        path=item_path(agent, list_name, entry.path, spec),
        kind=spec.kind,
        template=spec.template,
        inputs=spec.inputs,
        imports=expected_imports(spec.kind, entry.path, files.module_of_kind, links),
        module=module,
        wave=0,
    )


def expected_imports(
    kind: str, path: str, modules: Mapping[str, str], links: tuple[str, ...]
) -> tuple[str, ...]:
    """The L9 packages and planned modules a file of ``kind`` imports (see docs/SCHEMA.md)."""
    agent = modules.get("agent")
    if kind == "package":
        return (agent,) if path == "__init__.py" and agent else ()
    if kind == "main":
        return ("l9.start", *((agent,) if agent else ()))
    if kind == "agent":
        return ("agents", "envelope", *(modules[k] for k in _AGENT_PARTS if k in modules), *links)
    if kind == "payloads":
        return ("envelope",)
    if kind == "governance":
        return ("governance",)
    if kind == "agent_tests":
        return tuple(modules[k] for k in ("agent", "payloads", "settings") if k in modules)
    if kind == "kernel_tests":
        return tuple(modules[k] for k in ("kernels",) if k in modules)
    return ()


def _manifest_item(agent: AgentSchema) -> PlanItem:
    spec = KINDS["manifest"]
    return PlanItem(
        todo=1,
        agent=agent.name,
        category="manifest",
        path=f"manifests/{agent.name}_manifest.json",
        kind=spec.kind,
        template=spec.template,
        inputs=spec.inputs,
        imports=(),
        wave=0,
    )


def module_name(rootpath: str, path: str) -> str | None:
    """``L9/core/x`` + ``sub/mod.py`` -> ``L9.core.x.sub.mod`` (None: not importable)."""
    if not path.endswith(".py"):
        return None
    parts = [*rootpath.split("/"), *path[: -len(".py")].split("/")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if all(_PY_PART.match(p) for p in parts) else None


def link_module(entry: str) -> str | None:
    """The module a ``linkexisting`` entry names: a file path, a package path or a dotted name."""
    text = entry[: -len(".py")] if entry.endswith(".py") else entry
    parts = text.replace("/", ".").split(".")
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts and all(_PY_PART.match(p) for p in parts) else None


class LinkResolver:
    """Which agent of the collection plans each linked module, and whether it may be linked."""

    def __init__(self, collection: Collection, files: Mapping[str, AgentFiles]) -> None:
        self.collection, self.files = collection, files
        self.packages = sorted(((a.package, a.name) for a in collection), key=lambda p: -len(p[0]))

    def resolve(self, name: str) -> tuple[list[PlanItem], list[Problem]]:
        items, problems = [], []
        for i, entry in enumerate(self.collection.agent(name).cursorinstructions.linkexisting):
            module = link_module(entry)
            owner = self._owner(module) if module else None
            reason = self._why_not(name, entry, module, owner)
            if reason is not None:
                problems.append(_problem(name, ("cursorinstructions", "linkexisting", i), entry, reason))
                continue
            items.append(_link_item(name, entry, module or "", owner))
        return items, problems

    def _owner(self, module: str) -> str | None:
        for package, agent in self.packages:
            if module == package or module.startswith(package + "."):
                return agent
        return None

    def _why_not(self, name: str, entry: str, module: str | None, owner: str | None) -> str | None:
        if module is None:
            return "it names no module (a path like L9/core/x.py or a dotted name like bus.keys)"
        if owner is None:
            return None
        if module not in self.files[owner].modules:
            return f"it is inside agent '{owner}', which does not plan {module}"
        if owner != name and owner not in self._ancestors(name):
            return f"it belongs to agent '{owner}', which is not a hard dependency (it may not exist yet)"
        return None

    def _ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.collection.agent(name).depends_on.hard)
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self.collection.agent(dep).depends_on.hard)
        return seen


def _link_item(agent: str, entry: str, module: str, owner: str | None) -> PlanItem:
    return PlanItem(
        todo=1,
        agent=agent,
        category="link",
        path=entry,
        kind="link",
        template=None,
        inputs=(LINKS,),
        imports=(module,),
        module=module,
        link_to=owner,
        wave=0,
    )


__all__ = [
    "AgentFiles",
    "LinkResolver",
    "Problem",
    "declared_needs",
    "expected_imports",
    "item_path",
    "link_module",
    "module_name",
    "resolve_files",
]
