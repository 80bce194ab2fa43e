"""The planner's results as data: phase 0 research and the locked plan (a to-do list) with its hash.

**The plan format** (``format: l9.plan/1``). A :class:`LockedPlan` holds the
collection's name, its agents (the validated schemas, in topological order),
the order and the waves, one :class:`PlanItem` per thing to produce, the
entries it could not resolve, and ``hash``: the SHA-256 (hex) of the plan's
canonical JSON (every field but ``hash``; keys sorted, no spaces, UTF-8).
Nothing in it depends on how the collection was written (comments, layout,
YAML or Markdown, line numbers), so the same agents give the same hash, and
the generator renders byte-identical files from equal hashes.

Item paths are relative to the extraction folder:

* a ``generatefiles`` entry: ``code/<rootpath>/<path>``, or
  ``tests/<agent>/<path>`` for the test kinds;
* a ``generatedocs`` entry: ``docs/<agent>/<path>``;
* one manifest per agent, added by the planner: ``manifests/<agent>_manifest.json``;
* a ``linkexisting`` entry is an item too, but no file: its ``path`` is the
  entry as written, ``module`` the module it names, and ``link_to`` the agent
  of the collection that plans it (None: it must already exist).

The folder's ``extraction_manifest.json`` (it carries the generation time) is
the only file not in the plan.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schema import AgentSchema

PLAN_FORMAT: Literal["l9.plan/1"] = "l9.plan/1"
Category = Literal["file", "doc", "manifest", "link"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlanItem(_Model):
    """One thing the generator produces (or, for a link, checks), in the order to produce it."""

    #: 1-based position in the plan (``#<todo>`` in the listing).
    todo: int = Field(ge=1)
    agent: str
    category: Category
    path: str
    #: A kind of :mod:`.kinds`, or ``link``.
    kind: str
    #: The template rendering the file (None for a link).
    template: str | None
    #: The agent's schema fields the template reads (``streams``, ``cursorinstructions.linkexisting``).
    inputs: tuple[str, ...]
    #: Modules the file must import: L9 packages and modules of the plan (never stdlib/third party).
    imports: tuple[str, ...]
    #: The module a planned ``.py`` file defines, or the module a link names.
    module: str | None = None
    #: For a link: the agent of the collection planning it (None: an existing module).
    link_to: str | None = None
    #: The wave of the agent (agents of one wave are generated concurrently).
    wave: int = Field(ge=0)


class Unresolved(_Model):
    """An entry the planner cannot turn into an item, and why."""

    agent: str
    field: str
    path: str
    reason: str


class Research(_Model):
    """Phase 0: the dependency DAG, its deterministic order and its parallel waves."""

    agents: tuple[str, ...]
    #: ``(agent, dependency)`` of every hard dependency.
    hard_edges: tuple[tuple[str, str], ...]
    #: ``(agent, dependency)`` of every soft dependency on an agent of the collection.
    soft_edges: tuple[tuple[str, str], ...]
    #: Soft dependencies naming no agent of the collection (subsystems like ``governance``).
    external_soft: tuple[tuple[str, str], ...] = ()
    #: Every cycle of hard dependencies, as a path ``(a, b, c, a)``; none when the rest is set.
    cycles: tuple[tuple[str, ...], ...] = ()
    order: tuple[str, ...] = ()
    waves: tuple[tuple[str, ...], ...] = ()

    @property
    def acyclic(self) -> bool:
        return not self.cycles


class LockedPlan(_Model):
    format: Literal["l9.plan/1"] = PLAN_FORMAT
    collection: str
    agents: tuple[AgentSchema, ...]
    order: tuple[str, ...]
    waves: tuple[tuple[str, ...], ...]
    items: tuple[PlanItem, ...]
    unresolved: tuple[Unresolved, ...] = ()
    #: SHA-256 of the canonical JSON of everything else; checked whenever a plan is read.
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _hash_matches(self) -> LockedPlan:
        if self.hash != self.content_hash():
            raise ValueError(
                "hash does not match the plan's content: the plan was changed after it was locked"
            )
        return self

    @classmethod
    def seal(cls, **fields: Any) -> LockedPlan:
        """The plan of ``fields`` with its hash."""
        draft = cls.model_construct(**fields, hash="")
        return cls.model_validate({**draft.model_dump(mode="json"), "hash": draft.content_hash()})

    def content_hash(self) -> str:
        return plan_hash(self.model_dump(mode="json", exclude={"hash"}))

    def counts(self) -> dict[str, int]:
        """Items by category (``file``, ``doc``, ``manifest``, ``link``)."""
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.category] = counts.get(item.category, 0) + 1
        return counts

    def items_of(self, agent: str) -> list[PlanItem]:
        return [item for item in self.items if item.agent == agent]


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes a plan hash is taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plan_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data)).hexdigest()


def text_listing(plan: LockedPlan) -> str:
    """The plan as the seeds' ``locked_todo_plan.txt``: one line per item, grouped by agent."""
    lines = [f"locked plan {plan.collection} ({plan.format}, sha256 {plan.hash})"]
    for wave, names in enumerate(plan.waves):
        lines.append(f"wave {wave}: {', '.join(names)}")
    for name in plan.order:
        lines.append(f"agent {name}")
        for item in plan.items_of(name):
            via = f" via {item.template}" if item.template else f" -> {item.link_to or 'existing'}"
            imports = f" imports {', '.join(item.imports)}" if item.imports else ""
            lines.append(f"  #{item.todo} {item.category} {item.path} [{item.kind}]{via}{imports}")
    lines.extend(f"unresolved {u.agent} {u.field} {u.path}: {u.reason}" for u in plan.unresolved)
    return "\n".join(lines) + "\n"


__all__ = [
    "PLAN_FORMAT",
    "Category",
    "LockedPlan",
    "PlanItem",
    "Research",
    "Unresolved",
    "canonical_json",
    "plan_hash",
    "text_listing",
]
