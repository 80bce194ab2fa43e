"""The planner's envelopes, registered as payload types.

==========================  =================================================  ===========
type                        what                                               report §
==========================  =================================================  ===========
``l9.extract.request.v1``   the request: file name, content hash, the text     1
                            (or a path), requester
``l9.schema.parsed.v1``     the collection as read: format, agents, counts     1
``l9.plan.research.v1``     phase 0: DAG edges, cycles, order, waves           3
``l9.plan.baseline.v1``     phase 1: every check and its result                4
``l9.plan.locked.v1``       the locked plan (the to-do list) and its hash     2
``l9.plan.rejected.v1``     every error, and the stage that found them         2
==========================  =================================================  ===========

Each result starts with ``outcome``, a short line the evidence report shows as
the record's summary. Requests travel on the ``extract`` stream and results on
``schema`` / ``plan`` (the default one-stream-per-area topology); the
generator consumes ``plan``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from envelope import Payload, payload

from .baseline import Baseline, BaselineCheck
from .collection import Collection, SchemaError, content_hash
from .plan import LockedPlan, Research

#: Largest collection text a request may carry (characters).
TEXT_MAX = 2_000_000
SHA256 = r"^[0-9a-f]{64}$"
Stage = Literal["request", "schema", "research", "baseline", "plan"]


@payload("l9.extract.request.v1")
class ExtractRequest(Payload):
    """Extract ``file``: its text inline, or a path the planner reads; the hash must match either."""

    file: str = Field(min_length=1, max_length=1000)
    content_hash: str = Field(pattern=SHA256)
    requester: str = Field(min_length=1, max_length=200)
    text: str | None = Field(default=None, max_length=TEXT_MAX)
    path: str | None = Field(default=None, min_length=1, max_length=4096)
    #: Absolute directory the extraction folder is made in (None: the generator's ``L9_EXTRACTIONS_DIR``).
    out_dir: str | None = Field(default=None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _text_or_path(self) -> ExtractRequest:
        if (self.text is None) == (self.path is None):
            raise ValueError("give the collection either as text or as a path, not both or neither")
        if self.text is not None and content_hash(self.text) != self.content_hash:
            raise ValueError("content_hash is not the SHA-256 of text")
        return self

    @classmethod
    def of_text(cls, text: str, file: str, requester: str, out_dir: str | None = None) -> ExtractRequest:
        digest = content_hash(text)
        return cls(file=file, content_hash=digest, requester=requester, text=text, out_dir=out_dir)


class AgentSummary(Payload):
    name: str
    system: str
    rootpath: str
    files: int
    docs: int
    links: int
    expressions: int
    consumes: tuple[str, ...]
    produces: tuple[str, ...]


@payload("l9.schema.parsed.v1")
class SchemaParsed(Payload):
    outcome: str
    collection: str
    file: str
    content_hash: str
    format: Literal["yaml", "markdown"]
    agents: tuple[AgentSummary, ...]

    @classmethod
    def of(cls, collection: Collection) -> SchemaParsed:
        agents = tuple(
            AgentSummary(
                name=a.name,
                system=a.system,
                rootpath=a.rootpath,
                files=len(a.cursorinstructions.generatefiles),
                docs=len(a.cursorinstructions.generatedocs),
                links=len(a.cursorinstructions.linkexisting),
                expressions=len(a.expressions),
                consumes=a.streams.consumes,
                produces=a.streams.produces,
            )
            for a in collection
        )
        return cls(
            outcome=f"parsed: {len(agents)} agents",
            collection=collection.name,
            file=collection.file,
            content_hash=collection.content_hash,
            format=collection.format,
            agents=agents,
        )


@payload("l9.plan.research.v1")
class PlanResearch(Payload):
    outcome: str
    collection: str
    research: Research

    @classmethod
    def of(cls, collection: str, research: Research) -> PlanResearch:
        if research.cycles:
            outcome = f"{len(research.cycles)} dependency cycle(s)"
        else:
            outcome = f"{len(research.order)} agents in {len(research.waves)} waves"
        return cls(outcome=outcome, collection=collection, research=research)


@payload("l9.plan.baseline.v1")
class PlanBaseline(Payload):
    outcome: str
    collection: str
    ok: bool
    checks: tuple[BaselineCheck, ...]

    @classmethod
    def of(cls, collection: str, baseline: Baseline) -> PlanBaseline:
        failed, total = len(baseline.failures()), len(baseline.checks)
        outcome = f"passed: {total} checks" if baseline.ok else f"failed: {failed} of {total} checks"
        return cls(outcome=outcome, collection=collection, ok=baseline.ok, checks=baseline.checks)


@payload("l9.plan.locked.v1")
class PlanLocked(Payload):
    outcome: str
    collection: str
    hash: str = Field(pattern=SHA256)
    plan: LockedPlan
    #: The request's ``out_dir`` (None: the generator's default).
    out_dir: str | None = None
    #: UTC time of the request envelope, ``%Y%m%dT%H%M%SZ``: the extraction folder is
    #: ``<out_dir>/<collection>_<stamp>`` (a redelivered request keeps its time, so its folder).
    stamp: str = Field(pattern=r"^\d{8}T\d{6}Z$")

    @model_validator(mode="after")
    def _same_hash(self) -> PlanLocked:
        if self.hash != self.plan.hash:
            raise ValueError("hash is not the plan's hash")
        return self

    @classmethod
    def of(cls, plan: LockedPlan, *, stamp: str, out_dir: str | None = None) -> PlanLocked:
        outcome = f"locked: {len(plan.items)} items, {len(plan.waves)} waves"
        return cls(
            outcome=outcome,
            collection=plan.collection,
            hash=plan.hash,
            plan=plan,
            out_dir=out_dir,
            stamp=stamp,
        )

    @property
    def folder_name(self) -> str:
        return f"{self.collection}_{self.stamp}"


class ErrorItem(Payload):
    """One error, as :class:`SchemaError` holds it, and its text."""

    text: str
    file: str
    line: int = Field(ge=0)
    code: str
    message: str
    agent: str | None = None
    index: int | None = None
    field: str | None = None

    @classmethod
    def of(cls, error: SchemaError) -> ErrorItem:
        return cls(
            text=str(error),
            file=error.file,
            line=error.line,
            code=error.code,
            message=error.message,
            agent=error.agent,
            index=error.index,
            field=error.field,
        )


@payload("l9.plan.rejected.v1")
class PlanRejected(Payload):
    outcome: str
    collection: str
    stage: Stage
    errors: tuple[ErrorItem, ...] = Field(min_length=1)

    @classmethod
    def of(cls, collection: str, stage: Stage, errors: list[SchemaError]) -> PlanRejected:
        n = len(errors)
        return cls(
            outcome=f"rejected at {stage}: {n} error{'s' if n != 1 else ''}",
            collection=collection,
            stage=stage,
            errors=tuple(ErrorItem.of(e) for e in errors),
        )


__all__ = [
    "AgentSummary",
    "ErrorItem",
    "ExtractRequest",
    "PlanBaseline",
    "PlanLocked",
    "PlanRejected",
    "PlanResearch",
    "SchemaParsed",
]
