"""The envelopes of phases 2-6 of an extraction run, after the plan is locked.

One run is one ``correlation_id``: every envelope below is caused (directly or
not) by the run's ``l9.extract.request.v1`` and carries its correlation id.

==============================  ===========  =========================================  ========
type                            emitted by   what                                       report §
==============================  ===========  =========================================  ========
``l9.generate.agent.v1``        generator    one agent's files rendered (progress)      5
``l9.generate.completed.v1``    generator    every planned file written, with hashes    5
``l9.generate.failed.v1``       generator    generation stopped, and why                5
``l9.enforce.completed.v1``     enforcer     every decision taken; allowed or not       6
``l9.validation.tests.v1``      validator    phase 4: compile, pytest, coverage         7
``l9.validation.verify.v1``     validator    phase 5: drift, import cycles, links       8
``l9.run.completed.v1``         the agent    the run's end, passed or failed            10
                                ending it
``l9.report.ready.v1``          auditor      the evidence report was rendered           10
==============================  ===========  =========================================  ========

Individual governance decisions are ``l9.governance.decision.v1`` /
``l9.governance.escalation.v1`` / ``l9.governance.resolution.v1`` (see
:mod:`governance`), caused by the envelope decided on.

The flow: planner (``plan`` stream: ``l9.plan.locked.v1`` or
``l9.plan.rejected.v1``) -> generator (``generate``) -> enforcer (``enforce``)
-> validator (``validation``) -> ``l9.run.completed.v1`` (``run`` stream) ->
the auditor's reporter renders the report from the trail ->
``l9.report.ready.v1`` (``report`` stream), which ``l9 extract`` waits for.
Exactly one ``l9.run.completed.v1`` ends a run: the planner emits it (failed)
after a rejection, the generator after a generation failure, the enforcer
after a denial, the validator otherwise (passed or failed).

The extraction folder (``folder``, an absolute path) is
``<out_dir>/<collection>_<UTC time of the request, %Y%m%dT%H%M%SZ>``; its
``extraction_manifest.json`` holds the locked plan, every file with its size,
line count and sha256, and the generation time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from envelope import Payload, payload

SHA256 = r"^[0-9a-f]{64}$"
Phase = Literal["plan", "generate", "enforce", "validate"]
#: The name of the extraction folder's manifest (the only file not in the plan).
MANIFEST = "extraction_manifest.json"


class GeneratedFile(Payload):
    """One file written, as the generator wrote it (``path`` relative to the extraction folder)."""

    path: str
    agent: str
    kind: str
    size: int = Field(ge=0)
    lines: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256)


@payload("l9.generate.agent.v1")
class AgentGenerated(Payload):
    outcome: str
    collection: str
    agent: str
    wave: int = Field(ge=0)
    files: tuple[GeneratedFile, ...]
    #: Names of the numeric kernels produced through the SymPy tool.
    kernels: tuple[str, ...] = ()


@payload("l9.generate.completed.v1")
class GenerationCompleted(Payload):
    outcome: str
    collection: str
    plan_hash: str = Field(pattern=SHA256)
    folder: str
    files: tuple[GeneratedFile, ...]
    manifest_sha256: str = Field(pattern=SHA256)


@payload("l9.generate.failed.v1")
class GenerationFailed(Payload):
    outcome: str
    collection: str
    plan_hash: str = Field(pattern=SHA256)
    folder: str | None = None
    errors: tuple[str, ...] = Field(min_length=1)


class Denial(Payload):
    """One denied subject: the policy (``id@version``), the path (or ``plan``) and the reason."""

    policy: str
    path: str
    reason: str


@payload("l9.enforce.completed.v1")
class EnforcementCompleted(Payload):
    outcome: str
    collection: str
    plan_hash: str = Field(pattern=SHA256)
    folder: str
    allowed: bool
    #: How many decisions were taken (one per artifact, one for the plan, one for the set).
    decisions: int = Field(ge=0)
    denied: tuple[Denial, ...] = ()
    #: Ids of the escalations raised, whatever their answer.
    escalations: tuple[str, ...] = ()


@payload("l9.validation.tests.v1")
class TestsValidated(Payload):
    outcome: str
    collection: str
    folder: str
    ok: bool
    compiled: int = Field(ge=0)
    compile_errors: tuple[str, ...] = ()
    tests: int = Field(ge=0)
    passed: int = Field(ge=0)
    failed: int = Field(ge=0)
    errors: int = Field(ge=0)
    skipped: int = Field(ge=0)
    pass_rate: float = Field(ge=0, le=1)
    #: Line coverage of the generated code (``code/``), percent.
    coverage_percent: float = Field(ge=0, le=100)
    duration_s: float = Field(ge=0)
    #: First lines of each failing test's report ("test id: message").
    failures: tuple[str, ...] = ()


@payload("l9.validation.verify.v1")
class Verified(Payload):
    outcome: str
    collection: str
    folder: str
    ok: bool
    #: Planned files missing on disk, files on disk not in the plan, files whose hash differs.
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    #: Import cycles between generated modules, as paths ``(a, b, a)``.
    cycles: tuple[tuple[str, ...], ...] = ()
    #: ``linkexisting`` entries that do not resolve ("agent: module").
    unresolved_links: tuple[str, ...] = ()
    #: Governance bridges that do not name their schema's anchors ("agent: what").
    broken_governance: tuple[str, ...] = ()


@payload("l9.run.completed.v1")
class RunCompleted(Payload):
    outcome: str
    collection: str
    result: Literal["passed", "failed"]
    #: The phase that ended the run.
    phase: Phase
    folder: str | None = None
    reason: str = ""


@payload("l9.report.ready.v1")
class ReportReady(Payload):
    outcome: str
    #: The run (correlation id) the report is of.
    run: str
    result: Literal["passed", "failed", "incomplete"]
    path: str
    report_digest: str
    head_seq: int = Field(ge=0)


__all__ = [
    "MANIFEST",
    "SHA256",
    "AgentGenerated",
    "Denial",
    "EnforcementCompleted",
    "GeneratedFile",
    "GenerationCompleted",
    "GenerationFailed",
    "Phase",
    "ReportReady",
    "RunCompleted",
    "TestsValidated",
    "Verified",
]
