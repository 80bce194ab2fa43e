"""Escalations of refused requests coalesced per origin and policy (real Redis): a hostile batch
leaves one pending escalation counting it, each request refused at once; another origin or policy
gets its own; a redelivery counts once; after an answer or the deadline the next one opens; an
origin over ``escalation.source_limit`` is denied without asking anyone."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.contracts.sympy.errors import Position
from agents.sympy import ParseRejected, SymPyTool
from agents.sympy.violations import ViolationDesk
from bus import Keys, Publisher, RpcClient
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, Verifier, decode
from governance import DecisionMade, Escalations, PolicyEngine, Raised, Request
from tests.conftest import ROOT, stream_entries
from tests.integration.gated import policy_file, sympy_worker

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster
BOMB = "factorial(10**8)"
DANGEROUS = "sympy-dangerous-functions@1"


@asynccontextmanager
async def caller(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, source: str
) -> AsyncIterator[SymPyTool]:
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        yield SymPyTool(rpc, source=source, deadline_s=120)


async def refuse_all(tool: SymPyTool, n: int) -> list[BaseException]:
    """``n`` refused requests, 16 at a time (the test client's connection pool); their answers."""
    answers: list[BaseException] = []
    limiter = anyio.CapacityLimiter(16)

    async def one() -> None:
        async with limiter:
            try:
                await tool.expand(BOMB)
            except Exception as exc:
                answers.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return answers


def desk(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    engine: PolicyEngine,
    source: str = "agent://sympy/sympy-0",
) -> Escalations:
    return Escalations(
        redis, Publisher(redis, keys, signer), spec=engine.escalation, anchors=engine.anchors, source=source
    )


async def envelopes(redis: RedisClient, keys: Keys, verifier: Verifier, stream: str) -> list[PacketEnvelope]:
    return [decode(f, verifier)[0] for _, f in stream_entries(await redis.xrange(keys.stream(stream)))]


async def test_a_batch_of_refusals_from_one_origin_leaves_one_escalation_counting_them(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path)
    async with sympy_worker(redis, keys, signer, verifier, policy):
        async with caller(redis, keys, signer, verifier, "agent://mallory/mallory-0") as mallory:
            hostile = await refuse_all(mallory, 200)
        async with caller(redis, keys, signer, verifier, "agent://bob/bob-0") as bob:
            mistaken = await refuse_all(bob, 3)
    for answers, n in ((hostile, 200), (mistaken, 3)):  # every request was answered, refused
        assert len(answers) == n and all(isinstance(a, ParseRejected) for a in answers), answers[:3]
        assert {(a.kind, a.rule) for a in answers if isinstance(a, ParseRejected)} == {
            ("limit", "max_factorial")
        }
    engine = PolicyEngine.load(policy)
    pending = {p.origin: p for p in await desk(redis, keys, signer, engine).pending(expire=False)}
    # one escalation per origin, still unanswered: no request waited for it
    assert set(pending) == {"agent://mallory/mallory-0", "agent://bob/bob-0"}
    assert (pending["agent://mallory/mallory-0"].count, pending["agent://bob/bob-0"].count) == (200, 3)
    assert all(p.policy == DANGEROUS and p.anchors == ("Igor",) for p in pending.values())
    requests = {e.id: e for e in await envelopes(redis, keys, verifier, "sympy")}
    latest = pending["agent://mallory/mallory-0"].latest
    assert len(latest) == 20 and all(requests[i].source == "agent://mallory/mallory-0" for i in latest)
    raised = await envelopes(redis, keys, verifier, "governance.escalations")
    assert sorted(e.id for e in raised) == sorted(p.id for p in pending.values()), "two escalations raised"
    # every refusal is a decision of its own, naming the escalation it was counted on
    decisions = [DecisionMade.model_validate(e.data) for e in await envelopes(
        redis, keys, verifier, "governance.compliance")]  # fmt: skip
    assert len(decisions) == 203 and {d.subject_id for d in decisions} == set(requests)
    by_origin = {requests[str(d.subject_id)].source: d.escalation_id for d in decisions}
    assert by_origin == {origin: p.id for origin, p in pending.items()}


async def test_a_report_publishes_the_decision_and_the_escalation_caused_by_the_request(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    engine = PolicyEngine.load()
    violations = ViolationDesk(engine, desk(redis, keys, signer, engine))
    offending = PacketEnvelope.new(type="l9.sympy.expand.v1", source="agent://caller/caller-0",
                                   data={"expr": BOMB}, kind="request", correlation_id="s1")  # fmt: skip
    error = ParseRejected("limit", "max_factorial", "factorial of 100000000", Position(1, 1, 0))
    reported = await violations.report(error, offending)
    assert reported.opened and reported.escalation is not None
    assert reported.escalation.type == "l9.governance.escalation.v1"
    for envelope in (reported.decision, reported.escalation):
        assert (envelope.causation_id, envelope.correlation_id) == (offending.id, "s1")
    assert reported.decision.data["escalation_id"] == reported.escalation.id
    redelivered = await violations.report(error, offending)
    assert redelivered.escalation == reported.escalation and not redelivered.opened
    (row,) = await violations.escalations.pending(expire=False)
    assert (row.id, row.count, row.origin) == (reported.escalation.id, 1, "agent://caller/caller-0")


def violation(source: str, expr: str = "__import__('os')") -> tuple[PacketEnvelope, Request]:
    envelope = PacketEnvelope.new(
        type="l9.sympy.simplify.v1", source=source, data={"expr": expr}, kind="request", reply_to="rpc.x"
    )
    return envelope, Request.from_envelope(envelope)


async def escalate(
    desk: Escalations, engine: PolicyEngine, source: str, expr: str = "__import__('os')"
) -> Raised:
    envelope, request = violation(source, expr)
    return await desk.escalate_coalesced(engine.evaluate(request), cause=envelope, origin=source)


async def test_coalescing_counts_redeliveries_once_and_keeps_policies_and_origins_apart(
    redis: RedisClient, keys: Keys, signer: Signer, agent_env: dict[str, str]
) -> None:
    engine = PolicyEngine.load()
    escalations = desk(redis, keys, signer, engine)
    envelope, request = violation("agent://mallory/mallory-0")
    decision = engine.evaluate(request)
    first = await escalations.escalate_coalesced(decision, cause=envelope, origin=envelope.source)
    again = await escalations.escalate_coalesced(decision, cause=envelope, origin=envelope.source)
    assert first.opened and not again.opened and first.escalation is not None
    assert again.escalation == first.escalation and (first.count, again.count) == (1, 1), "redelivered"
    second = await escalate(escalations, engine, "agent://mallory/mallory-0")
    longest = await escalate(escalations, engine, "agent://mallory/mallory-0", "x + " * 700 + "x")
    assert (second.opened, second.count) == (False, 2) and second.escalation == first.escalation
    assert longest.opened and longest.decision.policy == "sympy-expression-length@1", "another policy"
    rows = {(p.origin, p.policy): p for p in await escalations.pending(expire=False)}
    assert {k: v.count for k, v in rows.items()} == {
        ("agent://mallory/mallory-0", DANGEROUS): 2,
        ("agent://mallory/mallory-0", "sympy-expression-length@1"): 1,
    }
    # ``l9 governance pending --json`` lists the count and the latest requests
    listed = await pending_json(agent_env)
    assert {(r["policy"], r["count"]) for r in listed} == {(DANGEROUS, 2), ("sympy-expression-length@1", 1)}
    assert next(r for r in listed if r["policy"] == DANGEROUS)["latest"][0] == envelope.id


async def pending_json(env: dict[str, str]) -> list[dict[str, Any]]:
    done = await anyio.run_process(
        [sys.executable, "-m", "l9", "governance", "pending", "--json"], env=env, cwd=ROOT
    )
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


async def test_after_an_answer_or_the_deadline_the_next_violation_opens_a_new_escalation(
    redis: RedisClient, keys: Keys, signer: Signer, tmp_path: Path
) -> None:
    engine = PolicyEngine.load(policy_file(tmp_path, deadline_s=1))
    escalations = desk(redis, keys, signer, engine)
    origin = "agent://mallory/mallory-0"
    first = [await escalate(escalations, engine, origin) for _ in range(3)]
    assert [r.opened for r in first] == [True, False, False] and first[0].escalation is not None
    answer = await escalations.resolve(first[0].escalation.id, approved=False, by="Igor", reason="hostile")
    assert answer.violations == 3, "the answer says how many violations it covered"
    after_answer = await escalate(escalations, engine, origin)
    assert after_answer.opened and after_answer.escalation != first[0].escalation
    await anyio.sleep(1.1)  # past its deadline: no longer pending, whoever lists it or not
    after_deadline = await escalate(escalations, engine, origin)
    assert after_deadline.opened and after_deadline.escalation != after_answer.escalation


async def test_an_origin_over_its_limit_is_denied_without_asking_anyone(
    redis: RedisClient, keys: Keys, signer: Signer, tmp_path: Path
) -> None:
    engine = PolicyEngine.load(policy_file(tmp_path, source_limit=2, source_window_s=600))
    escalations = desk(redis, keys, signer, engine)
    origin = "agent://mallory/mallory-0"
    for _ in range(2):  # opened, then answered: the next violation would open another
        raised = await escalate(escalations, engine, origin)
        assert raised.opened and raised.escalation is not None
        await escalations.resolve(raised.escalation.id, approved=False, by="Igor", reason="hostile")
    suppressed = await escalate(escalations, engine, origin)
    assert suppressed.suppressed and not suppressed.opened and suppressed.count == 2
    assert suppressed.decision.denied and suppressed.decision.anchors == ()
    assert suppressed.decision.reason.startswith(
        f"denied without asking Igor: {origin} opened 2 escalations in 600 s (escalation.source_limit 2); "
        f"escalated by {DANGEROUS}"
    )
    assert (await escalate(escalations, engine, "agent://bob/bob-0")).opened, "another origin's own limit"
    assert [p.origin for p in await escalations.pending(expire=False)] == ["agent://bob/bob-0"]
