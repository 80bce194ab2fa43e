"""Rendering: a locked plan and its kernels' code -> the bytes of every planned file. Pure.

    files = render_plan(plan, kernels)                 # {path: bytes}, every file and doc of the plan
    files = render_agent(plan, "tensoraios", kernels)  # one agent's, its manifest included

Each file comes from the template its plan item names (``<kind><ext>.j2`` in
``templates/``), given the :class:`.context.AgentView` of its agent, the item,
and helpers that write ruff-clean Python (:mod:`.pysource`). Nothing reads a
clock, the environment or the disk (besides the templates), and every loop
runs over tuples in the plan's or sorted order: the same plan and kernels give
the same bytes. Manifests are rendered last, from the bytes of the files they list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import PurePosixPath
from typing import Any

import jinja2

from agents.contracts.extraction.plan import LockedPlan, PlanItem

from .context import AgentView, PlanView, plan_view
from .kernel_code import KernelCode, KernelSource, kernel_code
from .pysource import (
    Imports,
    bullet,
    comment_text,
    def_line,
    doc_text,
    docstring,
    literal,
    one_line,
    py_string,
    py_value,
    wrap_statement,
)

TEMPLATES = PurePosixPath(__file__).parent / "templates"
_MD_PUNCTUATION = re.compile(r"([\\`*_{}\[\]<>|#])")
#: Kinds whose content needs the kernels' code from the SymPy worker.
KERNEL_KINDS = frozenset({"kernels", "kernel_tests", "kernels_doc"})


class RenderError(ValueError):
    """A planned file cannot be rendered (the message names the agent and the file)."""


def needs_kernels(plan: LockedPlan, agent: str) -> bool:
    """Whether ``agent`` plans a file made from its kernels' code."""
    return any(item.kind in KERNEL_KINDS for item in plan.items_of(agent))


def render_plan(plan: LockedPlan, kernels: Mapping[str, Mapping[str, KernelSource]]) -> dict[str, bytes]:
    """Every planned file, by path; ``kernels`` by agent, then kernel name."""
    files: dict[str, bytes] = {}
    for name in plan.order:
        files.update(render_agent(plan, name, kernels.get(name, {})))
    return dict(sorted(files.items()))


def render_agent(plan: LockedPlan, agent: str, kernels: Mapping[str, KernelSource]) -> dict[str, bytes]:
    """The files, docs and manifest ``agent`` plans, by path (RenderError if one cannot be written)."""
    try:
        code = {name: kernel_code(kernels[name]) for name in sorted(kernels)}
        view = plan_view(plan, {agent: code})
    except ValueError as exc:
        raise RenderError(f"agent '{agent}': {exc}") from None
    _check_kernels(view.agents[agent], code)
    files: dict[str, bytes] = {}
    for item in sorted(view.agents[agent].items, key=_manifest_order):
        files[item.path] = _render(view, agent, item, dict(files) if item.kind == "manifest" else {})
    return dict(sorted(files.items()))


def _manifest_order(item: PlanItem) -> int:
    """Manifests last, from the bytes of the files before them: a ``*_manifest.json`` the agent
    plans lists the agent's other files, and the planner's ``manifests/<agent>_manifest.json``
    every file of the agent, those manifests included (the sort is stable: plan order otherwise)."""
    if item.kind != "manifest":
        return 0
    return 2 if item.category == "manifest" else 1


def _check_kernels(agent: AgentView, code: Mapping[str, KernelCode]) -> None:
    if any(agent.has(kind) for kind in KERNEL_KINDS) and sorted(code) != sorted(agent.schema.expressions):
        missing = sorted(set(agent.schema.expressions) - set(code))
        raise RenderError(f"agent '{agent.name}': no code for kernel(s) {', '.join(missing)}")
    if agent.has("kernel_tests") and not agent.has("kernels"):
        raise RenderError(
            f"agent '{agent.name}': {agent.paths['kernel_tests']} tests kernels, but the agent plans no"
            " kernels module (kernels.py) for it to test"
        )


def _render(view: PlanView, agent: str, item: PlanItem, files: Mapping[str, bytes]) -> bytes:
    if item.template is None:
        raise RenderError(f"agent '{agent}': {item.path} has no template")
    env = _environment()
    try:
        template = env.get_template(item.template)
        text = template.render(
            plan=view,
            agent=view.agents[agent],
            item=item,
            files=files,
            imports=_imports_of(view),
        )
    except jinja2.TemplateError as exc:
        raise RenderError(f"agent '{agent}': {item.path} ({item.template}): {exc}") from None
    return (text.rstrip("\n") + "\n").encode()


def _imports_of(view: PlanView) -> Any:
    """The template function writing an import block of lines (or lists of lines; empty ones skipped)."""

    def imports(*parts: str | list[str] | None) -> str:
        lines = [line for part in parts for line in ([part] if isinstance(part, str) else part or [])]
        return Imports(generated=view.generated_packages).add(*(line for line in lines if line)).render()

    return imports


# -- filters -------------------------------------------------------------------------------
def md_text(value: object) -> str:
    """Text for a Markdown line or table cell: one line, Markdown punctuation escaped."""
    return _MD_PUNCTUATION.sub(r"\\\1", one_line(value))


def md_code(value: object) -> str:
    """A code span holding ``value`` on one line (pipes escaped for table cells)."""
    text = one_line(value).replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def json_document(value: object) -> str:
    """Keys sorted, indent 2: how every JSON file of the extraction folder is written."""
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)


def file_entries(files: Mapping[str, bytes], items: list[PlanItem]) -> list[dict[str, object]]:
    """``{path, kind, size, sha256}`` of the file of each of ``items``, sorted by path."""
    return [
        {"path": i.path, "kind": i.kind, "size": len(files[i.path]), "sha256": _sha256(files[i.path])}
        for i in sorted(items, key=lambda i: i.path)
    ]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_import(module: str, alias: str) -> str:
    """``from a.b import c as alias`` for module ``a.b.c`` (``import a as alias`` at the top)."""
    parent, _, leaf = module.rpartition(".")
    return f"from {parent} import {leaf} as {alias}" if parent else f"import {module} as {alias}"


def depth_to_folder(path: str) -> int:
    """How many ``parents`` up from a file at ``path`` the extraction folder is."""
    return len(PurePosixPath(path).parts) - 1


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=False,  # Python, Markdown and JSON: escaped by the filters below
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.do"],
    )
    env.filters.update(
        add_type=lambda name, annotation: f"{name}: {annotation}",
        py=py_value,
        pystr=py_string,
        doc=doc_text,
        docstring=docstring,
        bullet=bullet,
        comment=comment_text,
        oneline=one_line,
        md=md_text,
        code=md_code,
        json_document=json_document,
        tuple_of=tuple,
    )
    env.globals.update(
        statement=wrap_statement,
        literal=literal,
        def_line=def_line,
        module_import=module_import,
        file_entries=file_entries,
        depth_to_folder=depth_to_folder,
    )
    return env


__all__ = [
    "KERNEL_KINDS",
    "RenderError",
    "needs_kernels",
    "render_agent",
    "render_plan",
]
