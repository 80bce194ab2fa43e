"""Refused requests as governance events: a decision under the SymPy policies, and an escalation.

The worker refuses a forbidden construct, a limit breach or a runaway itself
(its parser and limits are the hard line); :class:`ViolationDesk` then asks the
governance :class:`~governance.PolicyEngine` what the refusal means. The
request envelope is judged as any request is (``sympy-dangerous-functions``,
``sympy-expression-length``...); the worker's own finding is added under the
policy that governs its kind (length limits: the ``expression_length`` rule;
forbidden names, number and power bombs, memory and time: ``expression_functions``),
so the outcome is that policy's (``deny``, or ``escalate`` to its anchors).

The decision is published as ``l9.governance.decision.v1``, caused by the
request. An escalation is coalesced (``Escalations.escalate_coalesced``): the
first violation of a requester (the request's ``auth``, else its source) under a
policy opens an ``l9.governance.escalation.v1`` to the anchors, caused by it; while
that one is pending, the requester's later violations under the policy are counted
on it (each decision names it: ``escalation_id``), a redelivered request is not
counted twice, and a requester opens at most ``escalation.source_limit`` escalations
per ``source_window_s``, beyond which its violations are denials that ask nobody. So
a hostile batch leaves one escalation, not one per request. The caller's typed error
does not wait for any anchor: the request is refused either way; an escalation asks
the anchor to review the requester (approve: a harmless mistake; deny: an attempt
to act on).

A request of an agent in :data:`RUN_INPUT_AGENTS` (the extraction generator, asking
for the kernels of a schema's formulas) carries a run's own input: its refusal fails
that run, so it is a denial, on the record in the run, and no anchor is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from agents.contracts.sympy.errors import ToolError
from envelope import PacketEnvelope
from governance import (
    Decision,
    Escalations,
    Finding,
    Outcome,
    Policy,
    PolicyEngine,
    Request,
    agent_of,
    decide,
)

log = structlog.get_logger("l9.sympy.violations")
#: The governance rule answering for each refusal: the length limit has its own; all else is a bomb.
LENGTH_RULES = frozenset({"max_length"})
LENGTH_POLICY_RULE = "expression_length"
DEFAULT_POLICY_RULE = "expression_functions"
#: Agents whose requests carry an extraction run's own input: a refusal fails the run, it does
#: not wait on a person (a denial, never an escalation).
RUN_INPUT_AGENTS = frozenset({"generator"})
RUN_INPUT = "a run's own input: the run fails, no anchor is asked"


@dataclass(frozen=True)
class Reported:
    """What governance was told: the decision envelope, and the escalation envelope if any
    (``opened`` by this request, else the pending one it was counted on)."""

    decision: PacketEnvelope
    escalation: PacketEnvelope | None
    opened: bool = False


def worker_finding(error: ToolError) -> Finding:
    """The worker's refusal as a finding: ``forbidden.forbidden_name at 1:8: __import__ is ...``."""
    where = f" at {error.position}" if error.position is not None else ""
    return Finding(what=f"refused by the SymPy worker: {error.kind}.{error.rule}{where}: {error.detail}")


class ViolationDesk:
    """Judges refused requests with the policy engine and publishes what it decided."""

    def __init__(self, engine: PolicyEngine, escalations: Escalations) -> None:
        self.engine, self.escalations = engine, escalations

    def decide(self, error: ToolError, request: PacketEnvelope) -> Decision:
        """The engine's decision on the request, with the worker's finding under its policy."""
        subject = Request.from_envelope(request)
        judged = self.engine.evaluate(subject)
        applying = [p for p in self.engine.policies if p.applies_to_type(request.type)]
        finding = worker_finding(error)
        policy = _answering(applying, error)
        if policy is None:  # no SymPy policy enabled: the worker's refusal stands as a denial
            return Decision(
                outcome=Outcome.DENY,
                subject=subject.describe(),
                reason=f"denied by the SymPy worker (no policy governs {request.type}): {finding.what}",
                policies=judged.policies,
                findings=(*judged.findings, finding),
            )
        own_input = agent_of(request.source) in RUN_INPUT_AGENTS
        if own_input:
            finding = finding.model_copy(update={"what": f"{finding.what} ({RUN_INPUT})"})
        findings = [*judged.findings, *policy.stamp([finding])]
        if own_input:
            findings = [f.model_copy(update={"outcome": Outcome.DENY}) for f in findings]
        anchors = {p.ref: p.anchors for p in applying}
        return decide(subject.describe(), judged.policies, findings, anchors)

    async def report(self, error: ToolError, request: PacketEnvelope) -> Reported:
        """Publish the decision on ``request``, caused by it, after its escalation is opened or
        counted (module docstring)."""
        decision = self.decide(error, request)
        requester = request.auth or request.source
        escalation, opened = None, False
        if decision.escalated and decision.anchors:
            raised = await self.escalations.escalate_coalesced(decision, cause=request, origin=requester)
            decision, escalation, opened = raised.decision, raised.escalation, raised.opened
        escalation_id = escalation.id if escalation is not None else None
        recorded = await self.escalations.record(decision, cause=request, escalation_id=escalation_id)
        log.warning(
            "sympy.violation",
            request_id=request.id,
            correlation_id=request.correlation_id,
            requester=requester,
            kind=error.kind,
            rule=error.rule,
            outcome=decision.outcome.value,
            policy=decision.policy,
            escalation_id=escalation_id,
            escalation_opened=opened,
        )
        return Reported(recorded, escalation, opened)


def _answering(policies: list[Policy], error: ToolError) -> Policy | None:
    """The policy a refusal falls under: by its rule's kind, else the first SymPy policy."""
    wanted = LENGTH_POLICY_RULE if error.rule in LENGTH_RULES else DEFAULT_POLICY_RULE
    for policy in policies:
        if policy.rule_name == wanted:
            return policy
    return policies[0] if policies else None
