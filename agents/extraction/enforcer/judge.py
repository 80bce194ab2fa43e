"""Judging an extraction folder with one policy engine: the plan, every artifact, the set.

:func:`judge` is pure (no bus, no clock): it turns a :class:`~.folder.Folder`
into a :class:`Verdict` holding one decision per subject, in this order:

1. the **plan**, as an artifact of kind ``plan`` at path ``plan`` (its canonical
   JSON, so a secret or a placeholder written into the schema is found before
   any file is trusted), by ``planner``;
2. every **artifact**, with the agent and kind the manifest gives it;
3. the **artifact set**: size bounds and file counts per agent, plus every
   integrity problem of the folder (policy ``manifest-integrity@1``).

Each decision carries the audit scope it is routed by: the schema's
``governance.auditscope`` of the artifact's agent; for the plan and the set, the
union of every agent's. A denial names the policy (``id@version``), the path and,
in its reason, the lines (``path:line: what``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.contracts.extraction.phases import MANIFEST, Denial
from agents.contracts.extraction.plan import LockedPlan
from governance import Artifact, ArtifactSet, AuditScope, Decision, Finding, Outcome, PolicyEngine, decide

from .folder import INTEGRITY_POLICY, Folder

PLAN_PATH = "plan"
SET_PATH = "artifact set"
#: Findings one denial's reason spells out before "and N more".
REASON_FINDINGS = 3

FindingKey = tuple[str, str | None, int | None, str]


@dataclass(frozen=True)
class Judged:
    """One subject and the decision on it."""

    path: str
    subject: Artifact | ArtifactSet
    decision: Decision
    scope: AuditScope


@dataclass(frozen=True)
class Verdict:
    judged: tuple[Judged, ...]

    @property
    def denied(self) -> bool:
        return any(j.decision.denied for j in self.judged)

    def denials(self) -> list[Denial]:
        """One denial per (policy, path) of every deny finding, each finding counted once."""
        grouped: dict[tuple[str, str], list[Finding]] = {}
        seen: set[FindingKey] = set()
        for judged in self.judged:
            for finding in judged.decision.findings:
                if finding.outcome is Outcome.DENY and (key := finding_key(finding)) not in seen:
                    seen.add(key)
                    grouped.setdefault((finding.policy, finding.file or judged.path), []).append(finding)
        return [denial(policy, path, found) for (policy, path), found in grouped.items()]

    def to_escalate(self) -> list[Judged]:
        """Escalated decisions whose answer decides the run: none once anything is denied; the
        set only for findings of its own (an artifact's escalation is asked once, for the artifact)."""
        if self.denied:
            return []
        escalated = [j for j in self.judged if j.decision.escalated]
        asked = {finding_key(f) for j in escalated if j.path != SET_PATH for f in j.decision.findings}
        return [
            j
            for j in escalated
            if j.path != SET_PATH
            or any(f.outcome is Outcome.ESCALATE and finding_key(f) not in asked for f in j.decision.findings)
        ]


def finding_key(finding: Finding) -> FindingKey:
    return (finding.policy, finding.file, finding.line, finding.what)


def denial(policy: str, path: str, findings: Sequence[Finding]) -> Denial:
    shown = "; ".join(str(f) for f in findings[:REASON_FINDINGS])
    more = len(findings) - REASON_FINDINGS
    return Denial(policy=policy, path=path, reason=shown + (f"; and {more} more" if more > 0 else ""))


def plan_artifact(plan: LockedPlan) -> Artifact:
    """The plan as a subject: its canonical JSON, one key per line, at path ``plan``."""
    text = json.dumps(plan.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return Artifact(path=PLAN_PATH, content=text, kind="plan", agent="planner")


def scopes_of(plan: LockedPlan | None) -> dict[str, AuditScope]:
    """Each agent's audit scope, by agent name."""
    if plan is None:
        return {}
    return {a.name: AuditScope.of(a.governance.auditscope) for a in plan.agents}


def judge(engine: PolicyEngine, folder: Folder) -> Verdict:
    """Every decision on ``folder`` (see the module docstring)."""
    scopes = scopes_of(folder.plan)
    everyone = AuditScope.of(*(s.items for s in scopes.values()))
    out = [_judge_plan(engine, folder, everyone)]
    for artifact in folder.artifacts:
        scope = scopes.get(artifact.agent, AuditScope())
        out.append(Judged(artifact.path, artifact, engine.evaluate(artifact), scope))
    out.append(_judge_set(engine, folder, everyone))
    return Verdict(tuple(out))


def _judge_plan(engine: PolicyEngine, folder: Folder, scope: AuditScope) -> Judged:
    if folder.plan is not None:
        subject = plan_artifact(folder.plan)
        return Judged(PLAN_PATH, subject, engine.evaluate(subject), scope)
    # No readable plan (the set's decision says why): denied, as nothing can be judged against it.
    subject = Artifact(path=PLAN_PATH, content="", kind="plan", agent="planner")
    missing = Finding(file=PLAN_PATH, what=f"no valid plan in {MANIFEST}", policy=INTEGRITY_POLICY)
    return Judged(PLAN_PATH, subject, _decide(subject.describe(), [INTEGRITY_POLICY], [missing]), scope)


def _judge_set(engine: PolicyEngine, folder: Folder, scope: AuditScope) -> Judged:
    subject = ArtifactSet(folder.artifacts, label=f"extraction folder {folder.root}")
    decision = engine.evaluate(subject)
    if folder.problems:
        policies = [*decision.policies, INTEGRITY_POLICY]
        decision = _decide(decision.subject, policies, [*decision.findings, *folder.problems], engine)
    return Judged(SET_PATH, subject, decision, scope)


def _decide(
    subject: str, policies: Iterable[str], findings: Sequence[Finding], engine: PolicyEngine | None = None
) -> Decision:
    anchors_of = {p.ref: p.anchors for p in engine.policies} if engine is not None else None
    return decide(subject, list(policies), findings, anchors_of)


__all__ = ["PLAN_PATH", "SET_PATH", "Judged", "Verdict", "denial", "judge", "plan_artifact", "scopes_of"]
