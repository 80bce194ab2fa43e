"""Which generated modules import which, read from the syntax tree (nothing is imported or run).

A module's name comes from its path under ``code/`` (``code/L9/core/x/agent.py``
-> ``L9.core.x.agent``, ``__init__.py`` -> the package). An import names the
most specific generated module it loads: ``from L9.core.x import config`` is an
edge to ``L9.core.x.config`` when that module is generated, else to the package
``L9.core.x``; ``import a.b.c`` is an edge to the longest generated prefix of
``a.b.c``; relative imports are resolved against the importing module's package.
Parent packages a dotted import initialises on the way are not edges: a package
that re-exports its agent module would otherwise always be "in a cycle" with it,
although Python imports that fine.

An import *at import time* is one executed when the module loads: at module
level or in a class body, inside ``if``/``try``/``with`` blocks too, but not in a
function body (it runs later) nor under ``if TYPE_CHECKING:`` (never at run
time). Only those form import cycles; :func:`imported_modules` also lists the
deferred ones, for checks that care whether a module imports another at all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..planner import find_cycles

CODE = "code/"


@dataclass(frozen=True, slots=True)
class Import:
    """One imported generated module; ``deferred`` when not executed at import time."""

    target: str
    deferred: bool


def module_of(relpath: str) -> str | None:
    """``code/L9/x/agent.py`` -> ``L9.x.agent``; ``code/L9/x/__init__.py`` -> ``L9.x``; else None."""
    if not (relpath.startswith(CODE) and relpath.endswith(".py")):
        return None
    parts = relpath[len(CODE) : -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) if parts and all(p.isidentifier() for p in parts) else None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: frozenset[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.deferred = 0
        self.found: list[Import] = []

    def _add(self, name: str | None) -> None:
        if name is not None:
            self.found.append(Import(name, self.deferred > 0))

    def _longest_known(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            if (candidate := ".".join(parts[:end])) in self.known:
                return candidate
        return None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(self._longest_known(alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._base(node)
        if base is None:
            return
        for alias in node.names:
            full = f"{base}.{alias.name}" if base else alias.name
            self._add(full if full in self.known else self._longest_known(base) if base else None)

    def _base(self, node: ast.ImportFrom) -> str | None:
        if node.level == 0:
            return node.module or ""
        parts = self.package.split(".") if self.package else []
        if node.level - 1 > len(parts):
            return None  # beyond the top-level package: not ours
        parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, *([node.module] if node.module else [])])

    def _later(self, node: ast.AST) -> None:
        self.deferred += 1
        self.generic_visit(node)
        self.deferred -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _later

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._later(ast.Module(body=node.body, type_ignores=[]))
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.Module, module: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """The generated modules (of ``known``) that ``module`` imports, in source order, self excluded."""
    collector = _Collector(module, is_package, frozenset(known))
    collector.visit(tree)
    return [i for i in collector.found if i.target != module]


def import_graph(trees: Mapping[str, ast.Module]) -> dict[str, list[str]]:
    """Edges between generated modules at import time, from ``{relpath under code/: tree}``."""
    modules = {rel: m for rel in trees if (m := module_of(rel)) is not None}
    known = frozenset(modules.values())
    graph: dict[str, list[str]] = {m: [] for m in known}
    for rel, module in modules.items():
        found = imported_modules(trees[rel], module, rel.endswith("/__init__.py"), known)
        graph[module] = sorted({i.target for i in found if not i.deferred})
    return graph


def import_cycles(graph: Mapping[str, list[str]]) -> list[tuple[str, ...]]:
    """One cycle per knot of the import graph, as a path ``(a, b, a)`` from its smallest module."""
    return [tuple(cycle) for cycle in find_cycles(graph)]


__all__ = ["Import", "import_cycles", "import_graph", "imported_modules", "module_of"]
