"""A stand-in for the extraction agents in tests: the real payloads of every phase of one run,
in order, each with the step that causes it, so a test can publish a whole run signed as the
agents sign it (the planner's part is computed by the real ``plan_request``).

    steps = await planner_steps(request, requested_at)          # phase 0-1, caused by the request
    steps += downstream(locked_of(steps), folder, fail="validate")
    await publish_steps(publisher, request_envelope, steps)

``fail``: None (the run passes), ``"enforce"`` (one artifact denied), ``"escalation"``
(an escalation denied by an anchor), ``"validate"`` (a failing test, coverage too low),
``"generate"`` (generation fails). ``"approved"`` passes after an anchor approves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from agents.extraction import (
    AgentGenerated,
    Denial,
    EnforcementCompleted,
    ExtractRequest,
    GeneratedFile,
    GenerationCompleted,
    GenerationFailed,
    PlanLocked,
    RunCompleted,
    TestsValidated,
    Verified,
)
from agents.extraction.planner_agent import plan_request
from bus import Publisher
from envelope import Kind, PacketEnvelope, Payload, registry, utcnow
from governance import DecisionMade, EscalationRequested, EscalationResolved
from governance._decision import Decision, Outcome

ANCHORS = frozenset({"Igor", "Compliance"})
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "tensoraios_ecosystem.md"
#: Where the governance package publishes decisions (the Compliance anchor's channel) and escalations.
DECISIONS_STREAM = "governance.compliance"
ESCALATIONS_STREAM = "governance.escalations"


async def _reachable() -> None:
    return None


PROBES = {"redis": _reachable, "postgres": _reachable, "graph": _reachable}


@dataclass(frozen=True)
class Step:
    """One envelope of the run: its payload, its cause (index of an earlier step; None: the
    request), the stream it goes to (None: by its type), who emits it and its kind."""

    payload: Payload
    cause: int | None
    stream: str | None = None
    source: str = "agent://fake/0"
    kind: Kind = "event"


def request_for(path: Path = SAMPLE, out_dir: Path | None = None) -> ExtractRequest:
    text = path.read_text(encoding="utf-8")
    return ExtractRequest.of_text(text, path.name, "tester@host", str(out_dir) if out_dir else None)


async def planner_steps(request: ExtractRequest, requested_at: datetime | None = None) -> list[Step]:
    payloads = await plan_request(request, probes=PROBES, anchors=ANCHORS, requested_at=requested_at)
    return [Step(p, None, source="agent://planner/planner-0") for p in payloads]


def locked_of(steps: Sequence[Step]) -> tuple[int, PlanLocked]:
    for i, step in enumerate(steps):
        if isinstance(step.payload, PlanLocked):
            return i, step.payload
    raise AssertionError("the planner did not lock a plan")


def generated_files(plan: PlanLocked) -> list[GeneratedFile]:
    out = []
    for item in plan.plan.items:
        if item.category == "link":
            continue
        lines = 3 + len(item.path) % 7
        content = "".join(f"# {item.path} line {n}\n" for n in range(lines)).encode()
        sha = hashlib.sha256(content).hexdigest()
        out.append(
            GeneratedFile(
                path=item.path, agent=item.agent, kind=item.kind, size=len(content), lines=lines, sha256=sha
            )
        )
    return sorted(out, key=lambda f: f.path)


def _decision(subject: str, outcome: Outcome, policy: str | None = None, reason: str = "") -> Decision:
    applied = ("no-placeholders@1", "forbidden-calls@1", "no-secrets@1", "size-bounds@1")
    if outcome is Outcome.ALLOW:
        return Decision(
            outcome=outcome, subject=subject, reason="allowed: no findings (4 applied)", policies=applied
        )
    anchors = ("Igor",) if outcome is Outcome.ESCALATE else ()
    return Decision(
        outcome=outcome, subject=subject, reason=reason, policy=policy, policies=applied, anchors=anchors
    )


def downstream(at: int, plan: PlanLocked, folder: str, *, fail: str | None = None) -> list[Step]:
    """The generator's, enforcer's and validator's steps after the locked plan (step ``at``)."""
    files = generated_files(plan)
    collection, digest = plan.collection, plan.hash
    steps: list[Step] = []

    def add(
        payload: Payload, cause: int | None, stream: str | None = None, source: str = "", kind: Kind = "event"
    ) -> int:
        steps.append(Step(payload, cause, stream, source or Step.source, kind))
        return at + 1 + len(steps) - 1

    gen = "agent://generator/generator-0"
    for wave, names in enumerate(plan.plan.waves):
        for agent in names:
            mine = tuple(f for f in files if f.agent == agent)
            add(
                AgentGenerated(
                    outcome=f"{agent}: {len(mine)} files",
                    collection=collection,
                    agent=agent,
                    wave=wave,
                    files=mine,
                ),
                at,
                source=gen,
            )
    if fail == "generate":
        error = "L9/core/tensoraios/kernels.py: the SymPy tool did not answer within 30 s"
        failed = add(
            GenerationFailed(
                outcome="failed: 1 error",
                collection=collection,
                plan_hash=digest,
                folder=folder,
                errors=(error,),
            ),
            at,
            source=gen,
        )
        add(
            RunCompleted(
                outcome="failed at generate",
                collection=collection,
                result="failed",
                phase="generate",
                folder=folder,
                reason=error,
            ),
            failed,
            source=gen,
        )
        return steps
    manifest = hashlib.sha256(b"manifest").hexdigest()
    done = add(
        GenerationCompleted(
            outcome=f"generated {len(files)} files",
            collection=collection,
            plan_hash=digest,
            folder=folder,
            files=tuple(files),
            manifest_sha256=manifest,
        ),
        at,
        source=gen,
    )
    return steps + _enforce_and_validate(at + 1 + len(steps), done, plan, folder, files, fail)


def _enforce_and_validate(
    base: int, done: int, plan: PlanLocked, folder: str, files: list[GeneratedFile], fail: str | None
) -> list[Step]:
    steps: list[Step] = []
    enf, val = "agent://enforcer/enforcer-0", "agent://validator/validator-0"

    def add(
        payload: Payload, cause: int | None, stream: str | None = None, source: str = "", kind: Kind = "event"
    ) -> int:
        steps.append(Step(payload, cause, stream, source or Step.source, kind))
        return base + len(steps) - 1

    collection = plan.collection
    denied: tuple[Denial, ...] = ()
    escalations: list[str] = []
    for f in files:
        outcome = Outcome.ALLOW
        if fail == "enforce" and f.path.endswith("config.py"):
            outcome = Outcome.DENY
            reason = f"denied by forbidden-calls@1: {f.path}:3: os.system() runs a shell"
            denied += (Denial(policy="forbidden-calls@1", path=f.path, reason=reason),)
            decision = _decision(f.path, outcome, "forbidden-calls@1", reason)
        else:
            decision = _decision(f.path, outcome)
        add(DecisionMade(decision=decision), done, stream=DECISIONS_STREAM, source=enf)
        if outcome is Outcome.DENY:
            break
    if fail in ("escalation", "approved"):
        big = files[0].path
        reason = f"escalated by size-bounds@1: {big}: 25000 lines (at most 20000)"
        decision = _decision(big, Outcome.ESCALATE, "size-bounds@1", reason)
        add(DecisionMade(decision=decision), done, stream=DECISIONS_STREAM, source=enf)
        asked = add(
            EscalationRequested(decision=decision, anchors=("Igor",), deadline=utcnow() + timedelta(hours=1)),
            done,
            stream=ESCALATIONS_STREAM,
            source=enf,
            kind="request",
        )
        approved = fail == "approved"
        escalations.append(f"step-{asked}")
        add(
            EscalationResolved(
                escalation_id=f"step-{asked}",
                approved=approved,
                by="Igor",
                reason="reviewed the file" if approved else "too large to review",
                policy="size-bounds@1",
            ),
            asked,
            stream=ESCALATIONS_STREAM,
            source="agent://governance-cli/Igor",
        )
        if not approved:
            denied += (Denial(policy="size-bounds@1", path=big, reason="escalation denied by Igor"),)
    allowed = not denied
    verdict = add(
        EnforcementCompleted(
            outcome="allowed" if allowed else f"denied: {len(denied)}",
            collection=collection,
            plan_hash=plan.hash,
            folder=folder,
            allowed=allowed,
            decisions=len(files),
            denied=denied,
            escalations=tuple(escalations),
        ),
        done,
        source=enf,
    )
    if not allowed:
        add(
            RunCompleted(
                outcome="failed at enforce",
                collection=collection,
                result="failed",
                phase="enforce",
                folder=folder,
                reason=denied[0].reason,
            ),
            verdict,
            source=enf,
        )
        return steps
    ok = fail != "validate"
    failures = () if ok else ("tests/tensoraios/test_agent.py::test_score: assert 0.5 == 0.73",)
    add(
        TestsValidated(
            outcome="passed" if ok else "failed: 1 test",
            collection=collection,
            folder=folder,
            ok=ok,
            compiled=len(files),
            tests=40,
            passed=40 if ok else 39,
            failed=0 if ok else 1,
            errors=0,
            skipped=0,
            pass_rate=1.0 if ok else 0.975,
            coverage_percent=91.5 if ok else 72.25,
            duration_s=4.25,
            failures=failures,
        ),
        verdict,
        source=val,
    )
    add(Verified(outcome="no drift", collection=collection, folder=folder, ok=True), verdict, source=val)
    add(
        RunCompleted(
            outcome="passed" if ok else "failed at validate",
            collection=collection,
            result="passed" if ok else "failed",
            phase="validate",
            folder=folder,
            reason="" if ok else "1 failing test; line coverage 72.2% (at least 85%)",
        ),
        verdict,
        source=val,
    )
    return steps


def envelopes_of(request: PacketEnvelope, steps: Sequence[Step]) -> list[tuple[PacketEnvelope, str | None]]:
    """The steps as envelopes of the request's run, each caused by its step's cause; an
    escalation id naming ``step-N`` becomes the envelope id of step N."""
    out: list[tuple[PacketEnvelope, str | None]] = []
    for step in steps:
        cause = request if step.cause is None else out[step.cause][0]
        data = step.payload.model_dump(mode="json")
        if isinstance(step.payload, EscalationResolved | EnforcementCompleted):
            data = _resolve_step_ids(data, out)
        envelope = PacketEnvelope.new(
            type=registry.type_of(type(step.payload)),
            source=step.source,
            data=data,
            correlation_id=request.correlation_id,
            causation_id=cause.id,
            kind=step.kind,
        )
        out.append((envelope, step.stream))
    return out


def _resolve_step_ids(
    data: dict[str, object], done: list[tuple[PacketEnvelope, str | None]]
) -> dict[str, object]:
    def real(value: object) -> object:
        if isinstance(value, str) and value.startswith("step-"):
            return done[int(value[5:])][0].id
        return value

    out = {k: real(v) for k, v in data.items()}
    escalations = data.get("escalations")
    if isinstance(escalations, list):
        out["escalations"] = [real(v) for v in escalations]
    return out


async def publish_steps(
    publisher: Publisher, request: PacketEnvelope, steps: Sequence[Step]
) -> list[PacketEnvelope]:
    """Publish every step (in order, one round trip per stream change) as the agents would."""
    envelopes = envelopes_of(request, steps)
    for envelope, stream in envelopes:
        await publisher.publish(envelope, stream)
    return [e for e, _ in envelopes]
