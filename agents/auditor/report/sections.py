"""The evidence report's section table, as data: which envelope types fill which section,
which records mark a run as failed, and (from v2) which facts a section shows.

Types are matched with :func:`fnmatch.fnmatchcase` globs; a record goes to the first
section one of whose globs matches its type, and to the appendix when none does.
Tables are versioned: a report records the version it was built with, and
verification rebuilds it with that same table, so refining the table (a new
version) never invalidates reports signed earlier.

* v1: the first table; its data rule compares a top-level field.
* v2: the extraction pipeline's real payloads (``agents.contracts.extraction.phases``,
  ``governance``): enforcement in section 6, escalations and their resolutions in 9;
  data rules follow a dotted path (``decision.outcome``) and compare booleans too; every
  section shows tables computed from its records' payloads (:mod:`.facts`). The v1 globs
  stay (``l9.artifact.*``, ``l9.validation.drift*``, approvals and denials), so records
  of those types land in the same sections under both tables.
* v3 (current): section 10 agrees with sections 7 and 8 whatever a record's ``ok`` says:
  count rules make a failure of any failed, erroneous or skipped test, any listed
  failure or compile error, and any drift, cycle, link or governance problem; section 2
  shows a link's entry as written (v2 showed the agent planning it) and every entry left
  out of a plan locked with strict mode off, which section 10 lists again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from . import facts
from .facts import Facts

#: A data rule: (type glob, dotted field path, the value that marks a failure). What a broken
#: rule is reported as has the same shape; for a count rule the value is the count found.
DataRule = tuple[str, str, str | bool | int]
#: A count rule: (type glob, dotted field path): a failure when the field is a number above
#: zero or a non-empty list.
CountRule = tuple[str, str]


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """One section of the report: its number, a stable key, its title and its type globs."""

    number: int
    key: str
    title: str
    globs: tuple[str, ...]
    #: The tables the section shows above its records (None: records only).
    facts: Facts | None = None

    def matches(self, type_: str) -> bool:
        return any(fnmatchcase(type_, glob) for glob in self.globs)


@dataclass(frozen=True, slots=True)
class FailureRules:
    """What makes a record a failure of the run (each rule is checked on every record)."""

    #: Envelope kinds that are failures by themselves.
    kinds: tuple[str, ...]
    #: Types whose records are failures by themselves.
    type_globs: tuple[str, ...]
    #: Types whose records are failures when the payload's ``field`` (a dotted path into
    #: nested objects) holds ``value`` (same type and value): (glob, field, value).
    data_rules: tuple[DataRule, ...]
    #: Types whose records say the run completed.
    completion_globs: tuple[str, ...]
    #: Types whose records are failures when a count or list at ``field`` is not zero (v3 on).
    count_rules: tuple[CountRule, ...] = ()

    def data_failure(self, type_: str, data: Mapping[str, Any]) -> DataRule | None:
        """The first data rule ``data`` (a record of ``type_``) breaks, or None; then the first
        count rule, as ``(glob, field, count)``."""
        for rule in self.data_rules:
            glob, path, value = rule
            if fnmatchcase(type_, glob):
                found = field_at(data, path)
                if type(found) is type(value) and found == value:
                    return rule
        for glob, path in self.count_rules:
            if fnmatchcase(type_, glob) and (count := _count(field_at(data, path))):
                return (glob, path, count)
        return None


def _count(value: Any) -> int:
    """A number's value (booleans are not counts) or a list's length; 0 for anything else."""
    if type(value) is int:
        return value if value > 0 else 0
    return len(value) if isinstance(value, list | tuple) else 0


_ABSENT = object()


def field_at(data: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted ``path`` of nested mappings (a sentinel when it is not there)."""
    value: Any = data
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


@dataclass(frozen=True, slots=True)
class SectionTable:
    version: int
    sections: tuple[SectionSpec, ...]
    failures: FailureRules

    def section_of(self, type_: str) -> int | None:
        """The number of the first section matching ``type_``, or None (the appendix)."""
        for spec in self.sections:
            if spec.matches(type_):
                return spec.number
        return None

    def spec(self, number: int) -> SectionSpec:
        for spec in self.sections:
            if spec.number == number:
                return spec
        raise KeyError(f"section table v{self.version} has no section {number}")


TABLE_V1 = SectionTable(
    version=1,
    sections=(
        SectionSpec(1, "schema_input", "Schema input summary", ("l9.extract.request.v*", "l9.schema.*")),
        SectionSpec(2, "locked_plan", "Locked TODO plan", ("l9.plan.locked.v*", "l9.plan.rejected.v*")),
        SectionSpec(3, "phase0_research", "Phase 0: research (DAG, order, waves)", ("l9.plan.research.v*",)),
        SectionSpec(4, "phase1_baseline", "Phase 1: baseline", ("l9.plan.baseline.v*",)),
        SectionSpec(
            5,
            "phase2_implementation",
            "Phase 2: implementation (files, line counts, hashes)",
            ("l9.artifact.*", "l9.generate.*"),
        ),
        SectionSpec(
            6, "phase3_enforcement", "Phase 3: enforcement (decisions)", ("l9.governance.decision.v*",)
        ),
        SectionSpec(
            7,
            "phase4_validation",
            "Phase 4: validation (tests, pass rate, coverage)",
            ("l9.validation.tests.v*",),
        ),
        SectionSpec(
            8,
            "phase5_verification",
            "Phase 5: verification (drift, cycles)",
            ("l9.validation.verify*", "l9.validation.drift*"),
        ),
        SectionSpec(
            9,
            "governance_compliance",
            "Governance and compliance (escalations and who decided)",
            ("l9.governance.escalation*", "l9.governance.approval*", "l9.governance.denial*"),
        ),
        SectionSpec(10, "final_declaration", "Final declaration", ("l9.run.*", "l9.report.*")),
    ),
    failures=FailureRules(
        kinds=("error",),
        type_globs=("*.rejected.*", "*.failed.*"),
        data_rules=(("l9.governance.decision.v*", "decision", "deny"),),
        completion_globs=("l9.run.completed.v*",),
    ),
)

TABLE_V2 = SectionTable(
    version=2,
    sections=(
        SectionSpec(
            1,
            "schema_input",
            "Schema input summary",
            ("l9.extract.request.v*", "l9.schema.*"),
            facts.schema_input,
        ),
        SectionSpec(
            2,
            "locked_plan",
            "Locked TODO plan",
            ("l9.plan.locked.v*", "l9.plan.rejected.v*"),
            facts.locked_plan,
        ),
        SectionSpec(
            3,
            "phase0_research",
            "Phase 0: research (DAG, order, waves)",
            ("l9.plan.research.v*",),
            facts.research,
        ),
        SectionSpec(4, "phase1_baseline", "Phase 1: baseline", ("l9.plan.baseline.v*",), facts.baseline),
        SectionSpec(
            5,
            "phase2_implementation",
            "Phase 2: implementation (files, line counts, hashes)",
            ("l9.generate.*", "l9.artifact.*"),
            facts.implementation,
        ),
        SectionSpec(
            6,
            "phase3_enforcement",
            "Phase 3: enforcement (decisions)",
            ("l9.enforce.*", "l9.governance.decision.v*"),
            facts.enforcement,
        ),
        SectionSpec(
            7,
            "phase4_validation",
            "Phase 4: validation (tests, pass rate, coverage)",
            ("l9.validation.tests.v*",),
            facts.validation,
        ),
        SectionSpec(
            8,
            "phase5_verification",
            "Phase 5: verification (drift, cycles)",
            ("l9.validation.verify*", "l9.validation.drift*"),
            facts.verification,
        ),
        SectionSpec(
            9,
            "governance_compliance",
            "Governance and compliance (escalations and who decided)",
            (
                "l9.governance.escalation*",
                "l9.governance.resolution*",
                "l9.governance.approval*",
                "l9.governance.denial*",
            ),
            facts.governance,
        ),
        SectionSpec(10, "final_declaration", "Final declaration", ("l9.run.*", "l9.report.*"), facts.final),
    ),
    failures=FailureRules(
        kinds=("error",),
        type_globs=("*.rejected.*", "*.failed.*"),
        data_rules=(
            ("l9.governance.decision.v*", "decision.outcome", "deny"),
            ("l9.governance.resolution.v*", "approved", False),
            ("l9.plan.baseline.v*", "ok", False),
            ("l9.enforce.completed.v*", "allowed", False),
            ("l9.validation.tests.v*", "ok", False),
            ("l9.validation.verify.v*", "ok", False),
            ("l9.run.completed.v*", "result", "failed"),
        ),
        completion_globs=("l9.run.completed.v*",),
    ),
)

_V3_FACTS = {2: facts.locked_plan_v3, 10: facts.final_v3}
TABLE_V3 = SectionTable(
    version=3,
    sections=tuple(
        SectionSpec(s.number, s.key, s.title, s.globs, _V3_FACTS.get(s.number, s.facts))
        for s in TABLE_V2.sections
    ),
    failures=FailureRules(
        kinds=TABLE_V2.failures.kinds,
        type_globs=TABLE_V2.failures.type_globs,
        data_rules=TABLE_V2.failures.data_rules,
        completion_globs=TABLE_V2.failures.completion_globs,
        count_rules=(
            *(("l9.validation.tests.v*", f) for f in ("failed", "errors", "skipped")),
            *(("l9.validation.tests.v*", f) for f in ("compile_errors", "failures")),
            *(
                ("l9.validation.verify.v*", f)
                for f in ("missing", "extra", "changed", "cycles", "unresolved_links", "broken_governance")
            ),
        ),
    ),
)

#: Every section table by version; a refined table is added here, never edited in place.
TABLES: Mapping[int, SectionTable] = {t.version: t for t in (TABLE_V1, TABLE_V2, TABLE_V3)}
CURRENT_VERSION = TABLE_V3.version
#: The section holding the outcome and the declaration.
FINAL_SECTION = 10


def table(version: int) -> SectionTable:
    """The section table of ``version``; KeyError naming the known versions."""
    try:
        return TABLES[version]
    except KeyError:
        raise KeyError(f"unknown section table version {version} (known: {sorted(TABLES)})") from None
