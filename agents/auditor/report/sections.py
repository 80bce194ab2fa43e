"""The evidence report's section table, as data: which envelope types fill which section,
and which records mark a run as failed.

Types are matched with :func:`fnmatch.fnmatchcase` globs; a record goes to the first
section one of whose globs matches its type, and to the appendix when none does.
Tables are versioned: a report records the version it was built with, and
verification rebuilds it with that same table, so refining the table (a new
version) never invalidates reports signed earlier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """One section of the report: its number, a stable key, its title and its type globs."""

    number: int
    key: str
    title: str
    globs: tuple[str, ...]

    def matches(self, type_: str) -> bool:
        return any(fnmatchcase(type_, glob) for glob in self.globs)


@dataclass(frozen=True, slots=True)
class FailureRules:
    """What makes a record a failure of the run (each rule is checked on every record)."""

    #: Envelope kinds that are failures by themselves.
    kinds: tuple[str, ...]
    #: Types whose records are failures by themselves.
    type_globs: tuple[str, ...]
    #: Types whose records are failures when ``data[field] == value``: (glob, field, value).
    data_rules: tuple[tuple[str, str, str], ...]
    #: Types whose records say the run completed.
    completion_globs: tuple[str, ...]


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

#: Every section table by version; a refined table is added here, never edited in place.
TABLES: Mapping[int, SectionTable] = {TABLE_V1.version: TABLE_V1}
CURRENT_VERSION = TABLE_V1.version
#: The section holding the outcome and the declaration.
FINAL_SECTION = 10


def table(version: int) -> SectionTable:
    """The section table of ``version``; KeyError naming the known versions."""
    try:
        return TABLES[version]
    except KeyError:
        raise KeyError(f"unknown section table version {version} (known: {sorted(TABLES)})") from None
