"""Extraction: the schema collection, its loader, and the planner (phases 0-1).

    collection = load_file(Path("examples/tensoraios_ecosystem.md"))   # or SchemaErrors
    plan = lock(collection)                                             # or SchemaErrors
    baseline = await run_baseline(collection, probes=..., anchors=...)
    plan.hash, plan.waves, plan.items

The schema reference (fields, kinds, naming convention) is ``docs/SCHEMA.md``.
"""

from agents.contracts.extraction.baseline import (
    Baseline,
    BaselineCheck,
    baseline_errors,
    run_baseline,
    stack_probes,
)
from agents.contracts.extraction.collection import Collection, SchemaError, SchemaErrors, content_hash
from agents.contracts.extraction.kinds import CONVENTIONS, KINDS, Kind, KindSpec, kind_by_convention
from agents.contracts.extraction.payloads import (
    ExtractRequest,
    PlanBaseline,
    PlanLocked,
    PlanRejected,
    PlanResearch,
    SchemaParsed,
)
from agents.contracts.extraction.phases import (
    MANIFEST,
    AgentGenerated,
    Denial,
    EnforcementCompleted,
    GeneratedFile,
    GenerationCompleted,
    GenerationFailed,
    ReportReady,
    RunCompleted,
    TestsValidated,
    Verified,
)
from agents.contracts.extraction.plan import (
    PLAN_FORMAT,
    LockedPlan,
    PlanItem,
    Research,
    Unresolved,
    text_listing,
)
from agents.contracts.extraction.schema import AgentSchema

from .loader import load_collection, load_file
from .planner import build_plan, cycle_errors, find_cycles, lock, research, topological_order, waves

__all__ = [
    "CONVENTIONS",
    "KINDS",
    "MANIFEST",
    "PLAN_FORMAT",
    "AgentGenerated",
    "AgentSchema",
    "Baseline",
    "BaselineCheck",
    "Collection",
    "Denial",
    "EnforcementCompleted",
    "ExtractRequest",
    "GeneratedFile",
    "GenerationCompleted",
    "GenerationFailed",
    "Kind",
    "KindSpec",
    "LockedPlan",
    "PlanBaseline",
    "PlanItem",
    "PlanLocked",
    "PlanRejected",
    "PlanResearch",
    "ReportReady",
    "Research",
    "RunCompleted",
    "SchemaError",
    "SchemaErrors",
    "SchemaParsed",
    "TestsValidated",
    "Unresolved",
    "Verified",
    "baseline_errors",
    "build_plan",
    "content_hash",
    "cycle_errors",
    "find_cycles",
    "kind_by_convention",
    "load_collection",
    "load_file",
    "lock",
    "research",
    "run_baseline",
    "stack_probes",
    "text_listing",
    "topological_order",
    "waves",
]
