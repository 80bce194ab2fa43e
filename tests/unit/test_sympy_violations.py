"""Refusals judged by the policy engine: which policy answers, escalate or deny as the policy file says."""

from __future__ import annotations

import fakeredis

from agents.contracts.sympy.errors import ParseRejected, Position, ToolError, ToolTimeout
from agents.sympy.violations import ViolationDesk
from bus import Keys, Publisher
from envelope import PacketEnvelope
from governance import Escalations, Outcome, PolicyEngine, parse_policy_text

DENYING = """
version: 1
policies:
  - id: sympy-dangerous-functions@2
    rule: expression_functions
    match: {types: ["l9.sympy.*"], except_types: ["l9.sympy.*_result.*"]}
    on_violation: deny
"""
NO_SYMPY = "version: 1\npolicies: []\n"


def desk(policy_text: str | None = None) -> ViolationDesk:
    engine = PolicyEngine.load() if policy_text is None else PolicyEngine(parse_policy_text(policy_text))
    redis = fakeredis.FakeAsyncRedis()
    escalations = Escalations(
        redis,
        Publisher(redis, Keys("t"), None),
        spec=engine.escalation,
        anchors=engine.anchors,
        source="agent://sympy/sympy-0",
    )
    return ViolationDesk(engine, escalations)


def request(expr: str, type_: str = "l9.sympy.simplify.v1") -> PacketEnvelope:
    return PacketEnvelope.new(
        type=type_, source="agent://caller/caller-0", data={"expr": expr}, kind="request", correlation_id="s1"
    )


def test_a_dangerous_name_escalates_to_igor_under_the_dangerous_functions_policy() -> None:
    error = ParseRejected("forbidden", "forbidden_name", "__import__ is not allowed", Position(1, 1, 0))
    decision = desk().decide(error, request("__import__('os').system('id')"))
    assert decision.outcome is Outcome.ESCALATE and decision.anchors == ("Igor",)
    assert decision.policy == "sympy-dangerous-functions@1"
    assert set(decision.policies) == {"sympy-expression-length@1", "sympy-dangerous-functions@1"}
    whats = [f.what for f in decision.findings]
    assert any("dangerous function or name __import__" in w for w in whats), "the engine's own finding"
    assert "refused by the SymPy worker: forbidden.forbidden_name at 1:1: __import__ is not allowed" in whats
    assert "request l9.sympy.simplify.v1" in decision.subject


def test_a_limit_the_engine_does_not_see_is_still_decided_under_a_policy() -> None:
    """factorial(10**8) passes the engine's text rules; the worker's refusal is the finding."""
    error = ParseRejected("limit", "max_factorial", "factorial of 100000000", Position(1, 1, 0))
    decision = desk().decide(error, request("factorial(10**8)", "l9.sympy.expand.v1"))
    assert decision.escalated and decision.policy == "sympy-dangerous-functions@1"
    assert [f.policy for f in decision.findings] == ["sympy-dangerous-functions@1"]
    length = ParseRejected("limit", "max_length", "input longer than 10 characters", Position(1, 11, 10))
    by_length = desk().decide(length, request("x + 1 + 2 + 3"))
    assert by_length.policy == "sympy-expression-length@1" and by_length.anchors == ("Igor",)


def test_a_runaway_is_judged_and_a_full_queue_is_not_a_violation() -> None:
    runaway = ToolTimeout("the operation ran past 2s and was stopped")
    assert runaway.violation
    assert desk().decide(runaway, request("(a+b)**40")).policy == "sympy-dangerous-functions@1"
    assert not ToolTimeout("no worker was free within 2s", rule="queue").violation
    assert not ToolError("invalid", "ambiguous_variable", "name the variable").violation


def test_a_policy_file_that_denies_makes_it_a_denial_without_anchors() -> None:
    error = ParseRejected("forbidden", "forbidden_name", "eval is not allowed", Position(1, 1, 0))
    decision = desk(DENYING).decide(error, request("eval(x)"))
    assert decision.denied and decision.anchors == () and decision.policy == "sympy-dangerous-functions@2"


def test_with_no_sympy_policy_the_refusal_stands_as_a_denial() -> None:
    error = ParseRejected("forbidden", "forbidden_name", "eval is not allowed", Position(1, 1, 0))
    decision = desk(NO_SYMPY).decide(error, request("eval(x)"))
    assert decision.denied and decision.policy is None and decision.policies == ()
    assert "no policy governs l9.sympy.simplify.v1" in decision.reason


async def test_a_denial_is_reported_as_a_decision_caused_by_the_request_and_escalates_nothing() -> None:
    """(Escalated reports are coalesced by a Redis script: tests/integration/test_governance_coalesce.py.)"""
    offending = request("__import__('os')")
    error = ParseRejected("forbidden", "forbidden_name", "__import__ is not allowed", Position(1, 1, 0))
    denying = desk(DENYING)
    denied = await denying.report(error, offending)
    assert denied.escalation is None and not denied.opened
    assert denied.decision.type == "l9.governance.decision.v1"
    assert (denied.decision.causation_id, denied.decision.correlation_id) == (offending.id, "s1")
    data = denied.decision.data
    assert data["decision"]["outcome"] == "deny" and data["escalation_id"] is None
    assert await denying.escalations.pending(expire=False) == []
