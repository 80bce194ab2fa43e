"""Audit scope: which decisions reach an anchor with ``receives: scope``; decisions routed on the bus;
an escalation raised with a key is raised once (fakeredis: no pending-entry semantics involved)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest

from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, Verifier, decode
from governance import (
    Artifact,
    ArtifactSet,
    AuditScope,
    Decision,
    DecisionMade,
    Escalations,
    Outcome,
    PolicyEngine,
    Request,
    parse_policy_text,
)
from tests.conftest import stream_entries

KEYRING = {"k": b"secret"}
POLICY = """
anchors:
  - {name: Igor, channel: governance.igor}
  - {name: Compliance, channel: governance.compliance, receives: scope}
  - {name: Auditor, channel: governance.everything, receives: all}
escalation: {decisions: governance.decisions}
policies:
  - id: no-placeholders@1
    rule: placeholders
  - id: review@1
    rule: forbidden_calls
    params: {forbidden: ["socket.*"], shell_calls: []}
    match: {paths: ["*.py"]}
    on_violation: escalate
    anchors: [Igor]
"""
ENGINE = PolicyEngine(parse_policy_text(POLICY))
CONFIG = Artifact("code/svc/config.py", '"""Settings."""\nLIMIT = 3\n', kind="settings", agent="svc")
TODO = Artifact("code/svc/agent.py", "# TODO\n", kind="agent", agent="svc")
PLAN = Artifact("plan", "{}\n", kind="plan", agent="planner")


def allowed(subject: str = "x") -> Decision:
    return Decision(outcome=Outcome.ALLOW, subject=subject, reason="allowed")


@pytest.mark.parametrize(
    ("items", "subject", "covered"),
    [
        (("code generation",), CONFIG, True),
        (("Code  Generations",), CONFIG, True),  # case, spaces and plural do not matter
        (("settings",), CONFIG, True),  # the artifact's kind
        (("code/*/config.py",), CONFIG, True),  # a glob on its path
        (("svc",), CONFIG, True),  # its agent
        (("*",), CONFIG, True),
        (("decisions",), CONFIG, True),
        (("score requests", "model versions"), CONFIG, False),  # runtime matters, not its artifacts
        ((), CONFIG, False),
        (("plans",), PLAN, True),
        (("code generation",), PLAN, False),
        (("artifact sets",), ArtifactSet([CONFIG]), True),
        (("l9.sympy.*",), Request(type="l9.sympy.simplify.v1"), True),
        (("requests",), Request(type="l9.sympy.simplify.v1"), True),
        (("artifacts",), Request(type="l9.sympy.simplify.v1"), False),
    ],
)
def test_an_allowed_decision_is_covered_when_the_scope_names_its_subject(
    items: tuple[str, ...], subject: Artifact | ArtifactSet | Request, covered: bool
) -> None:
    assert AuditScope(items).covers(allowed(), subject) is covered


def test_denials_and_escalations_are_always_covered() -> None:
    for outcome in (Outcome.DENY, Outcome.ESCALATE):
        decision = Decision(outcome=outcome, subject="x", reason="r", policy="p@1")
        assert AuditScope().covers(decision, CONFIG)


def test_scopes_merge_keeping_the_first_spelling() -> None:
    merged = AuditScope.of(["Code generation", "decisions"], ["code generations", " ", "plans"])
    assert merged.items == ("Code generation", "decisions", "plans")


@pytest.fixture
async def fake() -> AsyncIterator[RedisClient]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def desk_on(redis: RedisClient) -> Escalations:
    publisher = Publisher(redis, Keys("u"), Signer(KEYRING, "k"))
    return Escalations(
        redis, publisher, spec=ENGINE.escalation, anchors=ENGINE.anchors, source="agent://e/e-0"
    )


async def on_stream(redis: RedisClient, name: str) -> list[PacketEnvelope]:
    entries = stream_entries(await redis.xrange(Keys("u").stream(name)))
    return [decode(f, Verifier(KEYRING))[0] for _, f in entries]


async def test_decisions_are_routed_by_scope_and_none_is_lost(fake: RedisClient) -> None:
    desk = desk_on(fake)
    cause = PacketEnvelope.new(type="l9.generate.completed.v1", source="agent://g/g-0")
    scope = AuditScope(("code generation",))
    in_scope = desk.decision_envelope(ENGINE.evaluate(CONFIG), cause=cause, scope=scope, subject=CONFIG)
    out_of_scope = desk.decision_envelope(
        ENGINE.evaluate(CONFIG), cause=cause, scope=AuditScope(), subject=CONFIG
    )
    denied = desk.decision_envelope(ENGINE.evaluate(TODO), cause=cause, scope=AuditScope(), subject=TODO)
    unscoped = desk.decision_envelope(ENGINE.evaluate(CONFIG), cause=cause)  # no scope: not filtered
    await desk.publish_decisions([in_scope, out_of_scope, denied, unscoped])

    observers = {
        e.id: DecisionMade.model_validate(e.data).observers for e in (in_scope, out_of_scope, denied)
    }
    assert observers == {
        in_scope.id: ("Compliance", "Auditor"),
        out_of_scope.id: ("Auditor",),
        denied.id: ("Compliance", "Auditor"),
    }
    assert [e.id for e in await on_stream(fake, "governance.compliance")] == [
        in_scope.id,
        denied.id,
        unscoped.id,
    ]
    assert len(await on_stream(fake, "governance.everything")) == 4
    assert await on_stream(fake, "governance.decisions") == []
    assert DecisionMade.model_validate(in_scope.data).audit_scope == ("code generation",)
    assert {e.causation_id for e in await on_stream(fake, "governance.everything")} == {cause.id}


async def test_with_no_observer_in_scope_a_decision_goes_to_the_decisions_stream(
    fake: RedisClient,
) -> None:
    spec = parse_policy_text(POLICY.replace("receives: all", "receives: escalations"))
    publisher = Publisher(fake, Keys("u"), Signer(KEYRING, "k"))
    desk = Escalations(fake, publisher, spec=spec.escalation, anchors=spec.anchors, source="agent://e/e-0")
    envelope = await desk.record(ENGINE.evaluate(CONFIG), scope=AuditScope(("plans",)), subject=CONFIG)
    assert [e.id for e in await on_stream(fake, "governance.decisions")] == [envelope.id]
    assert await on_stream(fake, "governance.compliance") == []


async def test_an_escalation_raised_with_a_key_is_raised_once(fake: RedisClient) -> None:
    desk = desk_on(fake)
    socket_user = Artifact("code/svc/net.py", "import socket\nsocket.socket()\n", agent="svc")
    decision = ENGINE.evaluate(socket_user)
    assert decision.escalated and decision.anchors == ("Igor",)
    first = await desk.escalate(decision, key="gen-1:code/svc/net.py")
    again = await desk.escalate(decision, key="gen-1:code/svc/net.py")
    other = await desk.escalate(decision, key="gen-2:code/svc/net.py")
    assert again.id == first.id and again.data == first.data and other.id != first.id
    assert [e.id for e in await on_stream(fake, "governance.escalations")] == [first.id, other.id]
    assert sorted(p.id for p in await desk.pending()) == sorted([first.id, other.id])
    # a crash after the key was stored but before the escalation was published: raised again, same id
    await fake.hdel(Keys("u").escalations_pending("governance.resolutions"), first.id)
    resumed = await desk.escalate(decision, key="gen-1:code/svc/net.py")
    assert resumed.id == first.id
    assert [e.id for e in await on_stream(fake, "governance.igor")] == [first.id, other.id, first.id]
    assert first.id in {p.id for p in await desk.pending()}
