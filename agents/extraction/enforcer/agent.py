"""The enforcer agent (``l9 agent run enforcer``): phase 3, governance on a generated folder.

For each ``l9.generate.completed.v1`` on the ``generate`` stream, all caused by it
and in its run:

1. reads the extraction folder and checks it against the envelope
   (:mod:`.folder`), then judges the plan, every artifact and the set with one
   :class:`governance.PolicyEngine` (``L9_POLICY_FILE``, ``L9_STRICT_MODE``;
   :mod:`.judge`), in a worker thread;
2. publishes every decision (``l9.governance.decision.v1``) through
   :class:`governance.Escalations`: to the anchors observing it, by the audit
   scope of the subject's agent;
3. when nothing is denied and decisions escalate, raises each escalation and
   waits for ``l9 governance approve|deny`` (concurrently, polling Redis; other
   runs go on in the other handler slots); no answer by the policy file's
   ``escalation.deadline_s`` is a denial by ``deadline``;
4. emits ``l9.enforce.completed.v1`` (stream ``enforce``): allowed or not, the
   number of decisions, every denial (policy, path, reason with lines), the
   escalation ids; when not allowed, also ``l9.run.completed.v1`` (failed,
   phase ``enforce``, the reason naming policies and paths).

An exception in steps 1-3 (a bug) ends the run at once instead: ``l9.run.completed.v1``
(failed, phase ``enforce``, naming the exception; :mod:`..crash`).

A redelivered envelope repeats nothing: see :mod:`.ledger`, and escalations keyed
by the envelope and the subject.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
from structlog.typing import FilteringBoundLogger as BoundLogger

from agents.contracts.extraction.phases import Denial, EnforcementCompleted, GenerationCompleted, RunCompleted
from bus.topology import GENERATE_STREAM
from envelope import PacketEnvelope, Payload
from governance import EscalationResolved, Escalations, PolicyEngine

from ...base import Agent, Context, handles
from ...runtime import Runtime
from ..config import EnforcerConfig
from ..crash import crashed_run, retried
from .folder import read_folder
from .judge import Judged, Verdict, judge
from .ledger import Ledger, ledger_key

#: Denials a run's ``reason`` spells out before "and N more".
REASON_DENIALS = 3

Answers = dict[str, tuple[str, EscalationResolved]]


def verdict_of(engine: PolicyEngine, generated: GenerationCompleted) -> Verdict:
    """Read the folder ``generated`` names and judge it (blocking: file reads and the engine)."""
    return judge(engine, read_folder(generated))


def outcome_payloads(generated: GenerationCompleted, verdict: Verdict, answers: Answers) -> list[Payload]:
    """``EnforcementCompleted``, and ``RunCompleted`` (failed) when not allowed."""
    denied = verdict.denials() + [
        escalation_denial(path, verdict, escalation_id, answer)
        for path, (escalation_id, answer) in answers.items()
        if not answer.approved
    ]
    allowed = not denied
    n = len(verdict.judged)
    outcome = (
        f"allowed: {n} decisions, {len(answers)} escalations approved"
        if allowed
        else f"denied: {len(denied)} denial{'s' if len(denied) != 1 else ''} in {n} decisions"
    )
    completed = EnforcementCompleted(
        outcome=outcome,
        collection=generated.collection,
        plan_hash=generated.plan_hash,
        folder=generated.folder,
        allowed=allowed,
        decisions=n,
        denied=tuple(denied),
        escalations=tuple(escalation_id for escalation_id, _ in answers.values()),
    )
    if allowed:
        return [completed]
    return [completed, run_failed(generated, denied, outcome)]


def escalation_denial(path: str, verdict: Verdict, escalation_id: str, answer: EscalationResolved) -> Denial:
    policy = answer.policy or next((j.decision.policy for j in verdict.judged if j.path == path), None)
    reason = f"escalation {escalation_id} denied by {answer.by}: {answer.reason}"
    return Denial(policy=policy or "unknown", path=path, reason=reason)


def run_failed(generated: GenerationCompleted, denied: Sequence[Denial], outcome: str) -> RunCompleted:
    shown = "; ".join(f"{d.policy} denied {d.path}: {d.reason}" for d in denied[:REASON_DENIALS])
    more = len(denied) - REASON_DENIALS
    return RunCompleted(
        outcome=f"failed at enforce: {outcome}",
        collection=generated.collection,
        result="failed",
        phase="enforce",
        folder=generated.folder,
        reason=shown + (f"; and {more} more" if more > 0 else ""),
    )


def crashed(generated: GenerationCompleted, exc: Exception) -> RunCompleted:
    """The run's end when enforcing raised (a bug): failed at ``enforce``, naming the exception."""
    return crashed_run("enforcer", "enforce", generated.collection, generated.folder, exc)


class EnforcerAgent(Agent):
    name = "enforcer"
    consumes = (GENERATE_STREAM,)

    def __init__(
        self,
        runtime: Runtime,
        config: EnforcerConfig | None = None,
        *,
        engine: PolicyEngine | None = None,
        poll_s: float = 0.2,
    ) -> None:
        super().__init__(runtime)
        self.config = config or EnforcerConfig()
        self._engine = engine
        self.poll_s = poll_s

    async def on_start(self) -> None:
        """Load the policy file now: one that cannot be used (PolicyFileError) stops the agent at start."""
        engine = self.engine
        self.log.info(
            "enforcer.policies",
            file=engine.origin,
            policies=[p.ref for p in engine.policies],
            deadline_s=engine.escalation.deadline_s,
        )

    @property
    def engine(self) -> PolicyEngine:
        if self._engine is None:
            self._engine = PolicyEngine.load(self.config.policy_file, strict_mode=self.config.strict_mode)
        return self._engine

    def desk(self) -> Escalations:
        rt, engine = self.runtime, self.engine
        acl = engine.signer_acl
        return Escalations(
            rt.redis,
            rt.publisher,
            spec=engine.escalation,
            anchors=engine.anchors,
            source=rt.source,
            verifier=rt.verifier,  # an approval counts only if its anchor's own key signed it
            shared_keys=acl.shared_keys if acl is not None else (),
        )

    @handles(GenerationCompleted)
    async def on_generated(self, ctx: Context[GenerationCompleted]) -> None:
        cause, generated = ctx.envelope, ctx.payload
        log = self.log.bind(correlation_id=cause.correlation_id, envelope=cause.id, folder=generated.folder)
        ledger = Ledger(self.runtime.redis, ledger_key(self.runtime.keys, cause.id))
        await ledger.exclusively(lambda: self._enforce(ledger, cause, generated, log), poll_s=self.poll_s)

    async def _enforce(
        self, ledger: Ledger, cause: PacketEnvelope, generated: GenerationCompleted, log: BoundLogger
    ) -> None:
        if await ledger.published("final"):
            log.info("enforcer.already_done")
            return
        try:
            verdict = await anyio.to_thread.run_sync(verdict_of, self.engine, generated)
            desk = self.desk()
            await self._publish_decisions(ledger, desk, cause, verdict)
            answers = await self._escalate(desk, cause, verdict.to_escalate())
            payloads = outcome_payloads(generated, verdict, answers)
        except Exception as exc:
            if retried(exc):
                raise  # Redis unreachable: the delivery loop tries again
            log.exception("enforcer.crashed")
            payloads = [crashed(generated, exc)]
        final = await ledger.envelopes("final", lambda: [self.envelope_for(p, cause=cause) for p in payloads])
        await self.runtime.publisher.publish_many(final)
        await ledger.mark_published("final")
        if final[0].type != "l9.enforce.completed.v1":
            log.warning("enforcer.failed", reason=final[0].data.get("reason"))
            return
        completed = EnforcementCompleted.model_validate(final[0].data)
        log.info(
            "enforcer.enforced",
            allowed=completed.allowed,
            decisions=completed.decisions,
            denied=[f"{d.policy} {d.path}" for d in completed.denied],
            escalations=list(completed.escalations),
        )

    async def _publish_decisions(
        self, ledger: Ledger, desk: Escalations, cause: PacketEnvelope, verdict: Verdict
    ) -> None:
        envelopes = await ledger.envelopes(
            "decisions",
            lambda: [
                desk.decision_envelope(j.decision, cause=cause, scope=j.scope, subject=j.subject)
                for j in verdict.judged
            ],
        )
        if not await ledger.published("decisions"):
            await desk.publish_decisions(envelopes)
            await ledger.mark_published("decisions")

    async def _escalate(self, desk: Escalations, cause: PacketEnvelope, asked: Sequence[Judged]) -> Answers:
        """Raise each escalation (once per envelope and subject) and wait for all answers."""
        answers: Answers = {}

        async def ask(judged: Judged) -> None:
            escalation = await desk.escalate(judged.decision, cause=cause, key=f"{cause.id}:{judged.path}")
            self.log.info(
                "enforcer.waiting",
                correlation_id=cause.correlation_id,
                escalation_id=escalation.id,
                path=judged.path,
                policy=judged.decision.policy,
            )
            answers[judged.path] = (escalation.id, await desk.wait(escalation.id, poll_s=self.poll_s))

        async with anyio.create_task_group() as tg:
            for judged in asked:
                tg.start_soon(ask, judged)
        return {j.path: answers[j.path] for j in asked}


__all__ = ["GENERATE_STREAM", "EnforcerAgent", "crashed", "outcome_payloads", "run_failed", "verdict_of"]
