"""Governance's Prometheus metrics on the real Redis: every decision published or taken under a
rate limit counts once, by outcome and deciding policy (bounded labels); ``EscalationStats``
exports the escalations really pending in Redis, by policy.

The default registry is process-global: counters are compared before and after."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from prometheus_client import REGISTRY

import governance.metrics
from bus import Keys
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer
from governance import (
    Artifact,
    Decision,
    Escalations,
    Outcome,
    PolicyEngine,
    RateLimiter,
    RateLimitSpec,
    Request,
    load_policy_file,
)
from governance.metrics import NO_POLICY, UNKNOWN, EscalationStats
from tests.conftest import wait_for
from tests.integration import test_governance_coalesce as coalesce
from tests.integration.gated import policy_file

pytestmark = pytest.mark.integration
DECISIONS = "l9_governance_decisions_total"
PENDING = "l9_escalations_pending"
DANGEROUS = "sympy-dangerous-functions@1"
LENGTH = "sympy-expression-length@1"
PLACEHOLDERS = "no-placeholders@1"
Series = tuple[str, str]  # (outcome, policy)


def counted(*series: Series) -> dict[Series, float]:
    return {s: REGISTRY.get_sample_value(DECISIONS, {"outcome": s[0], "policy": s[1]}) or 0.0 for s in series}


def moved(before: dict[Series, float]) -> dict[Series, float]:
    after = counted(*before)
    return {s: after[s] - before[s] for s in before}


def pending_gauge(policy: str) -> float | None:
    return REGISTRY.get_sample_value(PENDING, {"policy": policy})


def desk(redis: RedisClient, keys: Keys, signer: Signer, engine: PolicyEngine) -> Escalations:
    return coalesce.desk(redis, keys, signer, engine, source="agent://enforcer/enforcer-0")


def sympy_request(expr: str, source: str = "agent://generator/generator-0") -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.sympy.simplify.v1", source=source, data={"expr": expr}, kind="request", reply_to="rpc.x"
    )


def escalated(engine: PolicyEngine, expr: str = "__import__('os')") -> tuple[PacketEnvelope, Decision]:
    envelope = sympy_request(expr)
    decision = engine.evaluate(Request.from_envelope(envelope))
    assert decision.escalated and decision.anchors == ("Igor",), decision
    return envelope, decision


async def test_each_published_decision_counts_once_by_outcome_and_deciding_policy(
    redis: RedisClient, keys: Keys, signer: Signer, tmp_path: Path
) -> None:
    engine = PolicyEngine.load(policy_file(tmp_path, source_limit=1))
    escalations = desk(redis, keys, signer, engine)
    allowed = engine.evaluate(Artifact("pkg/fine.py", "X = 1\n", agent="generator"))
    denied = engine.evaluate(Artifact("pkg/todo.py", "# TODO: finish\nX = 1\n", agent="generator"))
    cause, escalate = escalated(engine)
    assert (allowed.outcome, allowed.policy) == (Outcome.ALLOW, None)
    assert (denied.outcome, denied.policy) == (Outcome.DENY, PLACEHOLDERS)
    assert escalate.policy == DANGEROUS
    series = [("allow", NO_POLICY), ("deny", PLACEHOLDERS), ("escalate", DANGEROUS), ("deny", DANGEROUS)]

    before = counted(*series)
    await escalations.record(allowed)
    await escalations.record(escalate, cause=cause)
    # the enforcer's way: envelopes built first, published together (then counted, each once)
    batch = [escalations.decision_envelope(d) for d in (allowed, denied, denied)]
    escalations.decision_envelope(allowed)  # built, never published: not a decision made
    assert moved(before) == {s: n for s, n in zip(series, (1, 0, 1, 0), strict=True)}
    await escalations.publish_decisions(batch)
    assert moved(before) == {s: n for s, n in zip(series, (2, 2, 1, 0), strict=True)}

    # a coalesced escalation over its origin's limit is published as the denial it became
    origin = "agent://mallory/mallory-0"
    first = await escalations.escalate_coalesced(escalate, cause=cause, origin=origin)
    assert first.opened and first.escalation is not None
    await escalations.resolve(first.escalation.id, approved=False, by="Igor", reason="hostile")
    other = sympy_request("__import__('sys')", origin)
    suppressed = await escalations.escalate_coalesced(escalate, cause=other, origin=origin)
    assert suppressed.suppressed and suppressed.decision.denied
    await escalations.record(suppressed.decision, cause=other)
    assert moved(before) == {s: n for s, n in zip(series, (2, 2, 1, 1), strict=True)}


async def test_rate_limit_decisions_count_by_outcome_and_limit(redis: RedisClient, keys: Keys) -> None:
    spec = RateLimitSpec.model_validate(
        {"id": "metrics-extract@1", "types": ["l9.extract.*"], "per": "requester", "limit": 2, "window_s": 60}
    )
    limiter = RateLimiter(redis, keys, [spec])
    before = counted(("allow", NO_POLICY), ("deny", "metrics-extract@1"))
    checked = [
        await limiter.check(Request(type="l9.extract.request.v1", requester="alice")) for _ in range(3)
    ]
    assert [d.outcome for d in checked] == [Outcome.ALLOW, Outcome.ALLOW, Outcome.DENY]
    assert moved(before) == {("allow", NO_POLICY): 2, ("deny", "metrics-extract@1"): 1}
    assert (await limiter.check(Request(type="l9.demo.task.v1", requester="alice"))).allowed
    assert moved(before) == {("allow", NO_POLICY): 2, ("deny", "metrics-extract@1"): 1}, (
        "no limit: no decision"
    )


async def test_policy_labels_stay_bounded(
    redis: RedisClient, keys: Keys, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = PolicyEngine.load()
    escalations = desk(redis, keys, signer, engine)

    def denial(policy: str) -> Decision:
        return Decision(outcome=Outcome.DENY, subject="request x", reason="denied", policy=policy)

    before = counted(("deny", UNKNOWN), ("deny", "Not A Policy"), ("deny", PLACEHOLDERS))
    await escalations.record(denial("Not A Policy"))  # not name@version
    assert moved(before) == {("deny", UNKNOWN): 1, ("deny", "Not A Policy"): 0, ("deny", PLACEHOLDERS): 0}
    await escalations.record(denial(PLACEHOLDERS))
    # past POLICY_LABELS distinct ids, a new one is `-`; those already labelled keep their label
    monkeypatch.setattr(governance.metrics, "POLICY_LABELS", len(governance.metrics._labels))
    before = counted(("deny", UNKNOWN), ("deny", "one-too-many@1"), ("deny", PLACEHOLDERS))
    await escalations.record(denial("one-too-many@1"))
    await escalations.record(denial(PLACEHOLDERS))
    assert moved(before) == {("deny", UNKNOWN): 1, ("deny", "one-too-many@1"): 0, ("deny", PLACEHOLDERS): 1}


async def test_escalation_stats_export_what_is_pending_in_redis_by_policy(
    redis: RedisClient, keys: Keys, signer: Signer, tmp_path: Path
) -> None:
    path = policy_file(tmp_path)
    engine = PolicyEngine.load(path)
    escalations = desk(redis, keys, signer, engine)
    stats = EscalationStats.of(redis, keys, load_policy_file(path))
    assert set(stats.policies) == {DANGEROUS, LENGTH}
    opened = []
    for _ in range(3):
        cause, decision = escalated(engine)
        opened.append(await escalations.escalate(decision, cause=cause))
    cause, decision = escalated(engine)
    await escalations.escalate(decision, cause=cause, deadline_s=0.05)  # overdue soon: not waiting
    # the SymPy worker's coalesced escalations live in the same hash: two violations, one escalation
    origin = "agent://mallory/mallory-0"
    for expr in ("x + " * 700 + "x", "y + " * 700 + "y"):
        cause = sympy_request(expr, origin)
        coalesced = engine.evaluate(Request.from_envelope(cause))
        assert coalesced.policy == LENGTH
        await escalations.escalate_coalesced(coalesced, cause=cause, origin=origin)
    await anyio.sleep(0.1)

    REGISTRY.register(stats)
    try:
        assert pending_gauge(DANGEROUS) is None, "no figures before the first refresh"
        await stats.refresh()
        assert (pending_gauge(DANGEROUS), pending_gauge(LENGTH)) == (3, 1)
        waiting = [p for p in await escalations.pending(expire=False) if not p.overdue]
        assert sorted(p.policy or "" for p in waiting) == [DANGEROUS] * 3 + [LENGTH]

        await escalations.resolve(opened[0].id, approved=True, by="Igor", reason="fine")
        (length,) = [p for p in waiting if p.policy == LENGTH]
        await escalations.resolve(length.id, approved=False, by="Igor", reason="too long")
        assert (pending_gauge(DANGEROUS), pending_gauge(LENGTH)) == (3, 1), "as of the last refresh"
        await stats.refresh()
        assert (pending_gauge(DANGEROUS), pending_gauge(LENGTH)) == (2, 0), "none pending: 0, not absent"
        assert len(await escalations.pending()) == 2  # listing denies the overdue one: no change
        await stats.refresh()
        assert (pending_gauge(DANGEROUS), pending_gauge(LENGTH)) == (2, 0)
    finally:
        REGISTRY.unregister(stats)
    assert pending_gauge(DANGEROUS) is None

    # run(): registered while it runs, refreshed every interval, gone when it stops
    async with anyio.create_task_group() as tg:
        tg.start_soon(stats.run, 0.05)
        await escalations.resolve(opened[1].id, approved=True, by="Igor", reason="fine")
        await wait_for(lambda: pending_gauge(DANGEROUS) == 1)
        tg.cancel_scope.cancel()
    assert pending_gauge(DANGEROUS) is None
