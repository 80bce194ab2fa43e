"""What each section of tables v2 and v3 shows above its records: tables computed from the
payloads of the run's records (the section's own, for section 9 every decision, for section
10 of v3 the locked plan too), and nothing else.

Each function gets the section's records (view and decoded payload) and all the run's
records, and returns the section's :class:`.model.FactTable` s; a table with no rows is
left out. A payload is read through its payload model (``agents.extraction``,
``governance``); one that does not validate adds no row (the record itself is still listed
under the tables). These functions are part of section table v2: a report is verified by
rebuilding it, so changing what they show is a new table version, not an edit: v3 has its own
:func:`locked_plan_v3` and :func:`final_v3`, the other sections are v2's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from agents.contracts.extraction.payloads import (
    ExtractRequest,
    PlanBaseline,
    PlanLocked,
    PlanRejected,
    PlanResearch,
    SchemaParsed,
)
from agents.contracts.extraction.phases import (
    AgentGenerated,
    EnforcementCompleted,
    GenerationCompleted,
    GenerationFailed,
    ReportReady,
    RunCompleted,
    TestsValidated,
    Verified,
)
from agents.contracts.extraction.plan import PlanItem
from governance import DecisionMade, EscalationRequested, EscalationResolved

from .model import FactTable, RecordView

M = TypeVar("M", bound=BaseModel)
Row = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Item:
    """One record of a section: how the report shows it and its payload (None: unreadable)."""

    view: RecordView
    data: Mapping[str, Any] | None


#: (the section's records, all the run's records) -> the section's tables.
Facts = Callable[[Sequence[Item], Sequence[Item]], tuple[FactTable, ...]]


def parsed(items: Sequence[Item], glob: str, model: type[M]) -> list[tuple[int, M]]:
    """(seq, payload) of the records of types matching ``glob`` whose payload fits ``model``."""
    return [(view.seq, payload) for view, payload in viewed(items, glob, model)]


def viewed(items: Sequence[Item], glob: str, model: type[M]) -> list[tuple[RecordView, M]]:
    """(record, payload) of the records of types matching ``glob`` whose payload fits ``model``."""
    out = []
    for item in items:
        if item.data is None or not fnmatchcase(item.view.type, glob):
            continue
        try:
            out.append((item.view, model.model_validate(item.data)))
        except ValidationError:
            continue
    return out


def table(title: str, columns: Row, rows: Iterable[Row], code: Row = ()) -> tuple[FactTable, ...]:
    """One table, or none when it has no rows."""
    body = tuple(rows)
    if not body:
        return ()
    return (FactTable(title=title, columns=columns, rows=body, code=code),)


def percent(value: float) -> str:
    return f"{value:.1f}%"


def names(values: Iterable[str]) -> str:
    return ", ".join(values) or "none"


# -- sections 1-4: the planner ------------------------------------------------------------------------


def schema_input(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    requests = parsed(items, "l9.extract.request.v*", ExtractRequest)
    found = parsed(items, "l9.schema.parsed.v*", SchemaParsed)
    agents = [
        (str(seq), a.name, a.system, a.rootpath, str(a.files), str(a.docs), str(a.links), str(a.expressions))
        for seq, p in found
        for a in p.agents
    ]
    return (
        *table(
            "Request",
            ("seq", "file", "requester", "content sha256", "extraction folder in"),
            [(str(s), r.file, r.requester, r.content_hash, r.out_dir or "(default)") for s, r in requests],
            code=("file", "content sha256", "extraction folder in"),
        ),
        *table(
            "Collection",
            ("seq", "collection", "format", "agents", "content sha256"),
            [(str(s), p.collection, p.format, str(len(p.agents)), p.content_hash) for s, p in found],
            code=("content sha256",),
        ),
        *table(
            "Agents",
            ("seq", "agent", "system", "rootpath", "files", "docs", "links", "expressions"),
            agents,
            code=("rootpath",),
        ),
    )


def locked_plan(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    locked = parsed(items, "l9.plan.locked.v*", PlanLocked)
    rejected = parsed(items, "l9.plan.rejected.v*", PlanRejected)
    planned = [
        (str(i.todo), i.agent, i.category, i.link_to or i.path, i.kind, str(i.wave))
        for _, p in locked
        for i in p.plan.items
    ]
    return (
        *_locked_table(locked),
        *table("Planned items", ("#", "agent", "category", "path", "kind", "wave"), planned, code=("path",)),
        *_rejected_table(rejected),
    )


def locked_plan_v3(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    """v2's section 2 with each link's entry as written (and the agent planning its module), and
    every entry a plan locked with strict mode off left out."""
    locked = parsed(items, "l9.plan.locked.v*", PlanLocked)
    rejected = parsed(items, "l9.plan.rejected.v*", PlanRejected)
    planned = [
        (str(i.todo), i.agent, i.category, i.path, i.kind, str(i.wave), _link_target(i))
        for _, p in locked
        for i in p.plan.items
    ]
    return (
        *_locked_table(locked),
        *table(
            "Planned items",
            ("#", "agent", "category", "path", "kind", "wave", "link to"),
            planned,
            code=("path",),
        ),
        *left_out(locked),
        *_rejected_table(rejected),
    )


def _locked_table(locked: Sequence[tuple[int, PlanLocked]]) -> tuple[FactTable, ...]:
    """Each locked plan: its collection, hash, item and wave counts, extraction folder."""
    summary = [
        (str(s), p.collection, p.hash, str(len(p.plan.items)), str(len(p.plan.waves)), p.folder_name)
        for s, p in locked
    ]
    return table(
        "Locked plan",
        ("seq", "collection", "plan sha256", "items", "waves", "extraction folder"),
        summary,
        code=("plan sha256", "extraction folder"),
    )


def _rejected_table(rejected: Sequence[tuple[int, PlanRejected]]) -> tuple[FactTable, ...]:
    """Every error of every rejected plan, where it is."""
    errors = [
        (str(s), f"{e.file}:{e.line}" if e.line else e.file, e.agent or "", e.field or "", e.message)
        for s, r in rejected
        for e in r.errors
    ]
    stages = names(dict.fromkeys(r.stage for _, r in rejected))
    return table(f"Rejected (stage {stages})", ("seq", "where", "agent", "field", "error"), errors)


def _link_target(item: PlanItem) -> str:
    """For a link: the agent of the collection planning its module, or ``existing module``."""
    if item.category != "link":
        return ""
    return f"agent {item.link_to} ({item.module})" if item.link_to else f"existing module {item.module}"


def left_out(locked: Sequence[tuple[int, PlanLocked]]) -> tuple[FactTable, ...]:
    """Every entry a locked plan left out (strict mode off), with why."""
    rows = [(str(s), u.agent, u.field, u.path, u.reason) for s, p in locked for u in p.plan.unresolved]
    title = "Left out of the plan (strict mode off: unresolvable entries are dropped, not generated)"
    return table(title, ("seq", "agent", "field", "entry", "why"), rows, code=("entry",))


def research(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    found = parsed(items, "l9.plan.research.v*", PlanResearch)
    waves = [(str(s), str(n), names(w)) for s, p in found for n, w in enumerate(p.research.waves)]
    edges = [(str(s), a, b) for s, p in found for a, b in p.research.hard_edges]
    cycles = [(str(s), " -> ".join(c)) for s, p in found for c in p.research.cycles]
    order = [(str(s), names(p.research.order)) for s, p in found]
    return (
        *table("Topological order", ("seq", "order"), order),
        *table("Waves (agents built in parallel)", ("seq", "wave", "agents"), waves),
        *table("Hard dependencies", ("seq", "agent", "depends on"), edges),
        *table("Dependency cycles", ("seq", "cycle"), cycles),
    )


def baseline(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    found = parsed(items, "l9.plan.baseline.v*", PlanBaseline)
    checks = [
        (str(s), c.check, c.target, "ok" if c.ok else "FAILED", c.detail) for s, p in found for c in p.checks
    ]
    return table("Baseline checks", ("seq", "check", "target", "result", "detail"), checks)


# -- sections 5-9: generator, enforcer, validator, governance -----------------------------------------


def implementation(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    agents = parsed(items, "l9.generate.agent.v*", AgentGenerated)
    done = parsed(items, "l9.generate.completed.v*", GenerationCompleted)
    failed = parsed(items, "l9.generate.failed.v*", GenerationFailed)
    per_agent = [
        (
            str(s),
            a.agent,
            str(a.wave),
            str(len(a.files)),
            str(sum(f.lines for f in a.files)),
            names(a.kernels),
        )
        for s, a in agents
    ]
    files = [
        (f.path, f.agent, f.kind, str(f.lines), str(f.size), f.sha256)
        for _, g in done
        for f in sorted(g.files, key=lambda f: f.path)
    ]
    totals = [
        (str(s), g.folder, str(len(g.files)), str(sum(f.lines for f in g.files)), g.manifest_sha256)
        for s, g in done
    ]
    errors = [(str(s), g.folder or "", e) for s, g in failed for e in g.errors]
    return (
        *table(
            "Extraction folder",
            ("seq", "folder", "files", "lines", "manifest sha256"),
            totals,
            code=("folder", "manifest sha256"),
        ),
        *table("Agents generated", ("seq", "agent", "wave", "files", "lines", "kernels"), per_agent),
        *table(
            "Files", ("path", "agent", "kind", "lines", "bytes", "sha256"), files, code=("path", "sha256")
        ),
        *table("Generation failed", ("seq", "folder", "error"), errors, code=("folder",)),
    )


def enforcement(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    decisions = parsed(items, "l9.governance.decision.v*", DecisionMade)
    done = parsed(items, "l9.enforce.completed.v*", EnforcementCompleted)
    rows = [
        (str(s), d.decision.subject, d.decision.outcome.value, d.decision.policy or "", d.decision.reason)
        for s, d in decisions
    ]
    verdicts = [
        (
            str(s),
            "allowed" if e.allowed else "DENIED",
            str(e.decisions),
            str(len(e.denied)),
            str(len(e.escalations)),
        )
        for s, e in done
    ]
    denied = [(str(s), d.policy, d.path, d.reason) for s, e in done for d in e.denied]
    return (
        *table("Enforcement", ("seq", "verdict", "decisions", "denied", "escalations"), verdicts),
        *table("Denied", ("seq", "policy", "subject", "reason"), denied, code=("subject",)),
        *table("Decisions", ("seq", "subject", "outcome", "policy", "reason"), rows, code=("subject",)),
    )


def validation(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    found = parsed(items, "l9.validation.tests.v*", TestsValidated)
    results = [
        (
            str(s), "ok" if t.ok else "FAILED", str(t.compiled), str(t.tests), str(t.passed), str(t.failed),
            str(t.errors), str(t.skipped), percent(100 * t.pass_rate), percent(t.coverage_percent),
            f"{t.duration_s:.2f}",
        )
        for s, t in found
    ]  # fmt: skip
    problems = [(str(s), "compile", e) for s, t in found for e in t.compile_errors]
    problems += [(str(s), "test", f) for s, t in found for f in t.failures]
    columns = (
        "seq", "result", "compiled", "tests", "passed", "failed", "errors", "skipped", "pass rate",
        "line coverage", "seconds",
    )  # fmt: skip
    return (
        *table("Tests and coverage", columns, results),
        *table("Failures", ("seq", "stage", "what"), problems),
    )


def verification(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    found = parsed(items, "l9.validation.verify.v*", Verified)
    counts = [
        (
            str(s), "ok" if v.ok else "FAILED", str(len(v.missing)), str(len(v.extra)), str(len(v.changed)),
            str(len(v.cycles)), str(len(v.unresolved_links)), str(len(v.broken_governance)),
        )
        for s, v in found
    ]  # fmt: skip
    problems: list[Row] = []
    for s, v in found:
        problems += [(str(s), "missing file", p) for p in v.missing]
        problems += [(str(s), "file not in the plan", p) for p in v.extra]
        problems += [(str(s), "hash differs from the generated file", p) for p in v.changed]
        problems += [(str(s), "import cycle", " -> ".join(c)) for c in v.cycles]
        problems += [(str(s), "unresolved link", p) for p in v.unresolved_links]
        problems += [(str(s), "governance link broken", p) for p in v.broken_governance]
    columns = ("seq", "result", "missing", "extra", "changed", "import cycles", "links", "governance")
    return (
        *table("Drift, cycles and links", columns, counts),
        *table("Problems", ("seq", "what", "where"), problems),
    )


def governance(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    asked = viewed(items, "l9.governance.escalation.v*", EscalationRequested)
    answers = parsed(items, "l9.governance.resolution.v*", EscalationResolved)
    answer_of = {r.escalation_id: (s, r) for s, r in answers}
    rows = []
    for view, e in asked:
        got = answer_of.pop(view.envelope_id, None)
        answer: Row = ("no answer in the trail", "", "", "")
        if got is not None:
            seq, r = got
            answer = ("approved" if r.approved else "denied", r.by, r.reason, str(seq))
        policy, where = e.decision.policy or "", names(e.anchors)
        rows.append((str(view.seq), e.decision.subject, policy, where, e.deadline.isoformat(), *answer))
    for eid, (seq, r) in answer_of.items():  # answers to escalations not among these records
        verdict = "approved" if r.approved else "denied"
        rows.append(("", f"escalation {eid}", r.policy or "", "", "", verdict, r.by, r.reason, str(seq)))
    columns = ("seq", "subject", "policy", "anchors", "deadline", "answer", "by", "reason", "answer seq")
    return (
        *table("Escalations and who decided", columns, rows, code=("subject",)),
        *compliance(run),
    )


def compliance(run: Sequence[Item]) -> tuple[FactTable, ...]:
    """Who decided what, and under which policy versions, from all the run's decisions."""
    made = viewed(run, "l9.governance.decision.v*", DecisionMade)
    by_outcome: dict[str, list[str]] = {}
    judged: dict[str, int] = {}
    decided: dict[tuple[str, str], int] = {}
    for view, m in made:
        d = m.decision
        by_outcome.setdefault(d.outcome.value, []).append(view.source)
        for policy in d.policies:
            judged[policy] = judged.get(policy, 0) + 1
        if d.policy is not None:
            decided[d.policy, d.outcome.value] = decided.get((d.policy, d.outcome.value), 0) + 1
    outcomes = [
        (o, str(len(by_outcome.get(o, []))), names(dict.fromkeys(by_outcome.get(o, []))))
        for o in ("allow", "escalate", "deny")
    ]
    policies = [
        (p, str(n), str(decided.get((p, "escalate"), 0)), str(decided.get((p, "deny"), 0)))
        for p, n in sorted(judged.items())
    ]
    return (
        *table(
            "Decisions by outcome (section 6)",
            ("outcome", "decisions", "decided by"),
            outcomes if made else (),
        ),
        *table(
            "Policies applied", ("policy", "subjects judged", "escalated by it", "denied by it"), policies
        ),
    )


def final(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    runs = parsed(items, "l9.run.completed.v*", RunCompleted)
    reports = parsed(items, "l9.report.ready.v*", ReportReady)
    return (
        *table(
            "Run",
            ("seq", "result", "ended at phase", "extraction folder", "reason"),
            [(str(s), r.result, r.phase, r.folder or "", r.reason) for s, r in runs],
            code=("extraction folder",),
        ),
        *table(
            "Earlier reports of this run",
            ("seq", "result", "path", "report digest", "chain head seq"),
            [(str(s), r.result, r.path, r.report_digest, str(r.head_seq)) for s, r in reports],
            code=("path", "report digest"),
        ),
    )


def final_v3(items: Sequence[Item], run: Sequence[Item]) -> tuple[FactTable, ...]:
    """v2's section 10, and the entries the run's locked plan left out (a run that passed
    generated less than its collection asked for)."""
    return (*final(items, run), *left_out(parsed(run, "l9.plan.locked.v*", PlanLocked)))
