"""The in-memory mode (no servers: fakeredis): handlers, emits, RPC between agents, and a
failure reported at once, never retried."""

from __future__ import annotations

import time

import pytest

from agents.demo import Result, SquarerAgent, SummerAgent, Task, results_key
from bus import Publisher
from envelope import PacketEnvelope, Signer
from l9.testing import HandlerFailed, HarnessFactory, HarnessTimeout
from tests.testing_kit.kit_agents import CALLS, Answer, Ask, Asker, Dictionary, Lookup, Ping, Pong, Ponger


async def test_handlers_emit_and_the_next_agent_handles_it(memory_harness: HarnessFactory) -> None:
    async with memory_harness(SquarerAgent, SummerAgent) as h:
        task = await h.publish(Task(n=12))
        got = await h.expect(Result, within=10)
        assert got.payload == Result(n=12, square=144) and got.stream == "demo.results"
        assert got.envelope.causation_id == task.id and got.envelope.correlation_id == task.id
        # the summer handled the result: its own key, in the fake Redis
        assert await h.redis.hget(results_key(h.keys, task.id), task.id) == b"144"


async def test_an_agent_calls_another_over_rpc(memory_harness: HarnessFactory) -> None:
    async with memory_harness(Asker, Dictionary) as h:
        envelope, answer = await h.call(Ask(question="stressed"), Answer, within=10)
        assert answer == Answer(question="stressed", answer="desserts")
        assert envelope.kind == "response" and envelope.source.startswith("agent://asker/")
        lookups = await h.arrived("l9.kit.lookup.v1", stream="kit.dictionary")
        assert [a.payload for a in lookups] == [Lookup(word="stressed")]


async def test_a_failing_handler_is_reported_at_once_and_never_retried(
    memory_harness: HarnessFactory,
) -> None:
    CALLS.pop(13, None)
    async with memory_harness(Ponger) as h:
        await h.publish(Ping(n=13))
        await h.publish(Ping(n=14))
        started = time.monotonic()
        with pytest.raises(
            HandlerFailed, match=r"the handler of ponger failed on l9\.kit\.ping\.v1"
        ) as failed:
            await h.expect(Pong, within=60)
        assert time.monotonic() - started < 30, "reported when it happened, not at the timeout"
        assert isinstance(failed.value.__cause__, ValueError)
        assert "attempt 1" in str(failed.value.__cause__)
        pong = await h.expect(Pong, within=10)  # the agent went on with the next envelope
        assert pong.payload.n == 14
    assert CALLS[13] == 1, "the memory mode retries nothing"


async def test_an_envelope_with_a_bad_signature_is_refused(memory_harness: HarnessFactory) -> None:
    async with memory_harness(Ponger) as h:
        forged = PacketEnvelope.new(type="l9.kit.ping.v1", source="agent://x/y", data={"n": 2})
        await Publisher(h.redis, h.keys, Signer({"dev": b"not the key"}, "dev")).publish(forged)
        with pytest.raises(HandlerFailed, match=r"ponger refused entry .* on kit: .*bad_signature"):
            await h.expect(Pong, within=10)


async def test_a_timeout_lists_what_arrived(memory_harness: HarnessFactory) -> None:
    async with memory_harness(Ponger) as h:
        odd = await h.publish(Ping(n=7))
        with pytest.raises(HarnessTimeout) as timeout:
            await h.expect(Pong, within=0.5)
    message = str(timeout.value)
    assert message.startswith("no l9.kit.pong.v1 within 0.5s; 1 envelope(s) did arrive:")
    assert f"l9.kit.ping.v1  {odd.id}  on kit  from agent://test/harness" in message


def test_the_memory_mode_takes_no_delivery_policy(memory_harness: HarnessFactory) -> None:
    from bus import DeliveryPolicy

    with pytest.raises(ValueError, match="no delivery policy"):
        memory_harness(Ponger, policy=DeliveryPolicy())
