"""Any exception in a phase agent ends the run as failed, on the record, at once (no server).

Before, only the failures each agent expected were caught: anything else (the generator's
KeyError on a ``*_manifest.json``) made the handler raise, the envelope was retried up to
the delivery cap and dead-lettered, no failure reached the trail and ``l9 extract`` waited
for its timeout. Each agent is run in-process on one delivery, with an exception injected
where its work is done; what it publishes goes through an in-memory publisher that signs
and encodes like the bus (the enforcer's, which needs Redis scripts, is in
``tests/integration/test_extraction_passed.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from agents import Runtime
from agents.contracts.extraction.phases import EnforcementCompleted
from agents.extraction import (
    ExtractRequest,
    GenerationFailed,
    LockedPlan,
    PlanRejected,
    RunCompleted,
    load_file,
    lock,
)
from agents.extraction import planner_agent as planner_module
from agents.extraction.generator import agent as generator_module
from agents.extraction.planner_agent import PlannerAgent
from agents.extraction.validator import agent as validator_module
from agents.extraction.validator.agent import ValidatorAgent
from bus import Delivery, Keys
from envelope import PacketEnvelope, Payload, Signer, Verifier
from tests.unit.test_generator_agent import (
    KEYRING,
    SAMPLE,
    LocalTool,
    MemoryPublisher,
    deliver,
    generator,
    locked_envelope,
)


@pytest.fixture(scope="module")
def plan() -> LockedPlan:
    return lock(load_file(SAMPLE))


def boom(*args: Any, **kwargs: Any) -> Any:
    raise KeyError("code/L9/core/tensoraios/tensoraios_manifest.json")


async def test_an_exception_rendering_an_agent_fails_the_run_at_once(
    plan: LockedPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator_module, "render_agent", boom)
    agent, publisher = generator(LocalTool(), tmp_path)
    await deliver(agent, locked_envelope(plan, tmp_path / "out"))  # returns: nothing to retry
    sent = [p for _, _, p in publisher.sent()]
    assert [type(p) for p in sent] == [GenerationFailed, RunCompleted]
    failed, ended = sent
    assert isinstance(failed, GenerationFailed) and isinstance(ended, RunCompleted)
    assert failed.errors == (
        "agent 'tensoraios': the generator failed: KeyError:"
        " 'code/L9/core/tensoraios/tensoraios_manifest.json' (a bug: the generator's log has the traceback)",
    )
    assert (ended.result, ended.phase) == ("failed", "generate") and "KeyError" in ended.reason
    assert not (tmp_path / "out").exists()


async def test_an_exception_after_rendering_fails_the_run_too(
    plan: LockedPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_manifest(*args: Any, **kwargs: Any) -> bytes:
        raise TypeError("Object of type set is not JSON serializable")

    monkeypatch.setattr(generator_module, "manifest_bytes", broken_manifest)
    agent, publisher = generator(LocalTool(), tmp_path)
    await deliver(agent, locked_envelope(plan, tmp_path / "out"))
    sent = [p for _, _, p in publisher.sent()]
    assert [type(p).__name__ for p in sent] == ["AgentGenerated"] * 5 + ["GenerationFailed", "RunCompleted"]
    ended = sent[-1]
    assert isinstance(ended, RunCompleted) and ended.reason.startswith("the generator failed: TypeError: ")


async def test_redis_out_of_reach_is_retried_not_a_failed_run(
    plan: LockedPlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise RedisConnectionError("Connection refused")

    monkeypatch.setattr(generator_module, "render_agent", unreachable)
    agent, publisher = generator(LocalTool(), tmp_path)
    with pytest.raises(BaseException) as raised:  # the delivery loop retries it with backoff
        await deliver(agent, locked_envelope(plan, tmp_path / "out"))
    found = raised.value
    leaves = found.exceptions if isinstance(found, BaseExceptionGroup) else (found,)
    assert [type(e) for e in leaves] == [RedisConnectionError]
    assert publisher.sent() == []


def runtime(agent: str, redis: Any = None) -> tuple[Runtime, MemoryPublisher]:
    signer = Signer(KEYRING, "test")
    rt = Runtime(
        redis=cast(Any, redis),
        keys=Keys("unit"),
        signer=signer,
        verifier=Verifier(KEYRING),
        agent=agent,
        instance=f"{agent}-0",
    )
    publisher = MemoryPublisher(signer)
    rt.publisher = publisher
    return rt, publisher


async def handle(agent: Any, envelope: PacketEnvelope, payload: Payload, stream: str) -> None:
    delivery = Delivery(stream, "1-0", envelope, payload, 1, {})
    await agent.handle(delivery)
    cast(MemoryPublisher, agent.runtime.publisher).acked(delivery)


async def test_an_exception_while_planning_is_a_rejection_and_ends_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def crash(*args: Any, **kwargs: Any) -> list[Payload]:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(planner_module, "plan_request", crash)
    rt, publisher = runtime("planner", fakeredis.FakeAsyncRedis())
    agent = PlannerAgent(rt, probes={}, anchors=frozenset({"Igor"}))
    request = ExtractRequest.of_text(SAMPLE.read_text(), "tensoraios_ecosystem.md", "tester@host")
    envelope = PacketEnvelope.new(
        type="l9.extract.request.v1", source="agent://cli/t", data=request.model_dump(mode="json")
    )
    await handle(agent, envelope, request, "extract")
    sent = [p for _, _, p in publisher.sent()]
    assert [type(p) for p in sent] == [PlanRejected, RunCompleted]
    rejected, ended = sent
    assert isinstance(rejected, PlanRejected) and rejected.stage == "plan"
    assert rejected.errors[0].message.startswith("the planner failed: ZeroDivisionError: division by zero")
    assert isinstance(ended, RunCompleted) and (ended.result, ended.phase) == ("failed", "plan")


async def test_an_exception_while_validating_ends_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'coverage_percent'")

    monkeypatch.setattr(validator_module, "validate", crash)
    rt, publisher = runtime("validator")
    agent = ValidatorAgent(rt)
    enforced = EnforcementCompleted(
        outcome="allowed",
        collection="demo",
        plan_hash="a" * 64,
        folder=str(tmp_path),
        allowed=True,
        decisions=1,
    )
    envelope = PacketEnvelope.new(
        type="l9.enforce.completed.v1",
        source="agent://enforcer/enforcer-0",
        data=enforced.model_dump(mode="json"),
    )
    await handle(agent, envelope, enforced, "enforce")
    (stream, sent_envelope, ended), *_ = publisher.sent()
    assert isinstance(ended, RunCompleted) and len(publisher.sent()) == 1
    assert (ended.result, ended.phase, ended.folder) == ("failed", "validate", str(tmp_path))
    assert ended.reason.startswith("the validator failed: AttributeError: ")
    assert stream == "run" and sent_envelope.causation_id == envelope.id
