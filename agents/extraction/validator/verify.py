"""Phase 5 of an extraction run: the folder is what the plan says, and holds together.

:func:`verify` reads the folder's ``extraction_manifest.json`` (its plan checked
against its hash and against the run's plan hash) and reports, as one
``l9.validation.verify.v1``:

* **drift** - ``missing``: planned files (``file``/``doc``/``manifest`` items) not
  on disk; ``extra``: files on disk that no item plans (``extraction_manifest.json``
  aside); ``changed``: files whose sha256 is not the one the extraction manifest
  records (the bare path), and manifest entries that disagree, as
  ``<manifest>: <path>: <what>`` (the extraction manifest listing a file the plan
  does not, or not listing one it does; a per-agent manifest
  ``manifests/<agent>_manifest.json`` whose entries are not exactly the agent's
  other planned files with the recorded size and sha256);
* **import cycles** between the generated modules of ``code/`` (see :mod:`.imports`);
* **links** - every ``linkexisting`` item resolves: a module of an agent of the
  collection exists in the folder; any other is findable in L9's environment
  (located by the import system's finders, without importing anything);
* **governance links** - each agent's governance bridge defines ``ANCHORS``,
  ``ESCALATION_POLICY`` and ``AUDIT_SCOPE`` as literals equal to its schema's
  ``governance`` (anchors and audit scope as tuples, in order), and the agent
  module the plan says imports the bridge does import it.

Everything is read from files (syntax trees, JSON); nothing generated runs here.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.contracts.extraction.phases import MANIFEST, Verified
from agents.contracts.extraction.plan import LockedPlan, PlanItem
from agents.contracts.extraction.schema import AgentSchema

from .folder import (
    ExtractionManifest,
    ManifestError,
    folder_files,
    load_agent_manifest,
    load_manifest,
    sha256_of,
)
from .imports import import_cycles, import_graph, imported_modules, module_of

#: The module-level names a governance bridge defines (see the extraction contract).
BRIDGE_NAMES = ("ANCHORS", "ESCALATION_POLICY", "AUDIT_SCOPE")
_NOT_LITERAL = object()


def verify(folder: Path, *, collection: str, plan_hash: str | None = None) -> Verified:
    """Phase 5 on ``folder`` (see the module docstring); ``plan_hash``: the run's, if known."""
    try:
        manifest = load_manifest(folder)
        if plan_hash is not None and manifest.plan_hash != plan_hash:
            raise ManifestError(f"{MANIFEST} is of plan {manifest.plan_hash}, the run locked {plan_hash}")
    except ManifestError as exc:
        return _unverifiable(folder, collection, str(exc))
    present = set(folder_files(folder)) - {MANIFEST}
    missing, extra, changed = drift(folder, manifest, present)
    trees = parse_code(folder, manifest.plan, present)
    findings: dict[str, Any] = {
        "missing": missing,
        "extra": extra,
        "changed": (*changed, *agent_manifest_problems(folder, manifest, present)),
        "cycles": tuple(import_cycles(import_graph(trees))),
        "unresolved_links": unresolved_links(folder, manifest.plan),
        "broken_governance": governance_problems(manifest.plan, trees),
    }
    ok = not any(findings.values())
    outcome = _passed(manifest.plan, len(trees)) if ok else _failed(findings)
    return Verified(outcome=outcome, collection=collection, folder=str(folder), ok=ok, **findings)


def _unverifiable(folder: Path, collection: str, why: str) -> Verified:
    absent = not (folder / MANIFEST).is_file()
    return Verified(
        outcome=f"failed: {why}",
        collection=collection,
        folder=str(folder),
        ok=False,
        missing=(MANIFEST,) if absent else (),
        changed=() if absent else (f"{MANIFEST}: {why}",),
    )


def _passed(plan: LockedPlan, modules: int) -> str:
    counts = plan.counts()
    files = sum(counts.get(c, 0) for c in ("file", "doc", "manifest"))
    bridges = sum(1 for i in plan.items if i.kind == "governance" and i.category == "file")
    links = counts.get("link", 0)
    return (
        f"verified: {_n(files, 'file')} as planned, no import cycle among {_n(modules, 'module')}, "
        f"{_n(links, 'link')} resolved, {_n(bridges, 'governance bridge')} intact"
    )


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


_FINDING_NAMES = {
    "missing": "missing",
    "extra": "extra",
    "changed": "changed",
    "cycles": "import cycle(s)",
    "unresolved_links": "unresolved link(s)",
    "broken_governance": "broken governance link(s)",
}


def _failed(findings: Mapping[str, tuple[Any, ...]]) -> str:
    parts = [f"{len(v)} {_FINDING_NAMES[k]}" for k, v in findings.items() if v]
    return "failed: " + ", ".join(parts)


# -- drift -----------------------------------------------------------------------------------------


def planned_paths(plan: LockedPlan) -> set[str]:
    return {i.path for i in plan.items if i.category != "link"}


def drift(
    folder: Path, manifest: ExtractionManifest, present: set[str]
) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """(missing, extra, changed) of the folder against the plan and the extraction manifest."""
    planned, recorded = planned_paths(manifest.plan), manifest.recorded()
    changed: list[str] = []
    for path in sorted(planned & present):
        entry = recorded.get(path)
        if entry is None:
            changed.append(f"{MANIFEST}: {path}: not listed")
        elif _digest(folder / path) != entry.sha256:
            changed.append(path)
    changed += [f"{MANIFEST}: {path}: listed, not planned" for path in sorted(set(recorded) - planned)]
    return tuple(sorted(planned - present)), tuple(sorted(present - planned)), changed


def _digest(path: Path) -> str | None:
    """The file's sha256, None if it cannot be read (so it differs from any record)."""
    try:
        return sha256_of(path)
    except OSError:
        return None


def agent_manifest_problems(folder: Path, manifest: ExtractionManifest, present: set[str]) -> list[str]:
    """Every disagreement of a per-agent manifest with the plan and the extraction manifest."""
    problems: list[str] = []
    for item in manifest.plan.items:
        if item.category == "manifest" and item.path in present:
            problems += _agent_manifest(folder, manifest, item)
    return problems


def _agent_manifest(folder: Path, manifest: ExtractionManifest, item: PlanItem) -> list[str]:
    try:
        entries = load_agent_manifest(folder, item.path)
    except ManifestError as exc:
        return [str(exc)]
    expected = {i.path for i in manifest.plan.items_of(item.agent) if i.category in ("file", "doc")}
    recorded = manifest.recorded()
    problems = [f"{item.path}: {p}: not listed" for p in sorted(expected - entries.keys())]
    problems += [
        f"{item.path}: {p}: listed, not a planned file of agent '{item.agent}'"
        for p in sorted(entries.keys() - expected)
    ]
    for path in sorted(expected & entries.keys()):
        entry, truth = entries[path], recorded.get(path)
        if truth is None:
            continue  # reported by the drift check
        if entry.sha256 != truth.sha256:
            problems.append(f"{item.path}: {path}: sha256 differs from {MANIFEST}")
        elif entry.size is not None and entry.size != truth.size:
            problems.append(f"{item.path}: {path}: size {entry.size}, {MANIFEST} says {truth.size}")
    return problems


# -- code: syntax trees, links, governance ---------------------------------------------------------


def parse_code(folder: Path, plan: LockedPlan, present: set[str]) -> dict[str, ast.Module]:
    """Syntax trees of the planned ``.py`` files under ``code/`` that exist and parse."""
    trees: dict[str, ast.Module] = {}
    for path in sorted(planned_paths(plan) & present):
        if module_of(path) is None:
            continue
        try:
            trees[path] = ast.parse((folder / path).read_bytes(), filename=path)
        except (SyntaxError, ValueError, OSError):
            continue  # phase 4 reports it as a compile error
    return trees


def unresolved_links(folder: Path, plan: LockedPlan) -> tuple[str, ...]:
    """``agent: module (why)`` of every link item that does not resolve."""
    out: list[str] = []
    for item in plan.items:
        if item.category != "link":
            continue
        module = item.module or item.path
        if item.link_to is not None:
            if not generated_module_exists(folder, module):
                out.append(f"{item.agent}: {module} (agent '{item.link_to}' did not generate it)")
        elif not findable(module):
            out.append(f"{item.agent}: {module} (not found in L9's environment)")
    return tuple(out)


def generated_module_exists(folder: Path, module: str) -> bool:
    base = folder / "code" / Path(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def findable(module: str) -> bool:
    """Whether the import system finds ``module``, without importing (running) any of it."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    for end in range(2, len(parts) + 1):
        locations = spec.submodule_search_locations if spec is not None else None
        if locations is None:
            return False
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:end]), list(locations))
    return spec is not None


def governance_problems(plan: LockedPlan, trees: Mapping[str, ast.Module]) -> tuple[str, ...]:
    """``agent: what`` for each governance bridge that does not carry its schema's governance."""
    schemas = {a.name: a for a in plan.agents}
    bridges = {i.module: i for i in plan.items if i.kind == "governance" and i.category == "file"}
    out: list[str] = []
    for item in bridges.values():
        tree = trees.get(item.path)
        if tree is None:
            out.append(f"{item.agent}: {item.path} is missing or does not parse")
            continue
        out += [f"{item.agent}: {item.path}: {p}" for p in bridge_problems(tree, schemas[item.agent])]
    for item in plan.items:
        if item.kind == "agent" and item.path in trees:
            out += _bridge_imports(item, trees[item.path], [m for m in item.imports if m in bridges])
    return tuple(out)


def bridge_problems(tree: ast.Module, agent: AgentSchema) -> list[str]:
    """How a bridge's ``ANCHORS`` / ``ESCALATION_POLICY`` / ``AUDIT_SCOPE`` differ from the schema's."""
    governance = agent.governance
    expected: dict[str, object] = {
        "ANCHORS": tuple(governance.anchors),
        "ESCALATION_POLICY": governance.escalationpolicy,
        "AUDIT_SCOPE": tuple(governance.auditscope),
    }
    found = module_constants(tree, BRIDGE_NAMES)
    problems: list[str] = []
    for name, want in expected.items():
        if name not in found:
            problems.append(f"{name} is not defined at module level")
        elif found[name] is _NOT_LITERAL:
            problems.append(f"{name} is not a literal")
        elif type(found[name]) is not type(want) or found[name] != want:
            problems.append(f"{name} is {found[name]!r}, the schema says {want!r}")
    return problems


def module_constants(tree: ast.Module, names: tuple[str, ...]) -> dict[str, object]:
    """The literal value of each of ``names`` assigned at module level (the last assignment wins)."""
    found: dict[str, object] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            pairs = [(target, stmt.value) for target in stmt.targets]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            pairs = [(stmt.target, stmt.value)]
        else:
            continue
        for target, value in pairs:
            if isinstance(target, ast.Name) and target.id in names:
                found[target.id] = _literal(value)
    return found


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _bridge_imports(item: PlanItem, tree: ast.Module, bridges: list[str | None]) -> list[str]:
    module = item.module or ""
    known = [b for b in bridges if b is not None]
    imported = {i.target for i in imported_modules(tree, module, item.path.endswith("/__init__.py"), known)}
    return [f"{item.agent}: {item.path} does not import {b}" for b in known if b not in imported]


__all__ = [
    "BRIDGE_NAMES",
    "agent_manifest_problems",
    "bridge_problems",
    "drift",
    "findable",
    "generated_module_exists",
    "governance_problems",
    "module_constants",
    "parse_code",
    "planned_paths",
    "unresolved_links",
    "verify",
]
