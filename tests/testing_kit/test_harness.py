"""The harness on the real Redis: an agent class of the test served in-process by its consumer
group, what it emits awaited, a timeout listing what arrived, dead letters, RPC."""

from __future__ import annotations

import pytest

from bus import open_client
from envelope import decode_envelope
from l9.settings import Settings
from l9.testing import HarnessFactory, HarnessTimeout
from tests.conftest import stream_entries
from tests.testing_kit.kit_agents import CALLS, Answer, Ask, Asker, Dictionary, Ping, Pong, Ponger

pytestmark = pytest.mark.integration


async def test_what_the_agent_emits_is_awaited(agent_harness: HarnessFactory, l9_settings: Settings) -> None:
    async with agent_harness(Ponger) as h:
        sent = await h.publish(Ping(n=8))
        got = await h.expect(Pong)
        assert got.payload == Pong(n=8, by="ponger-harness") and got.stream == "kit"
        assert got.envelope.causation_id == sent.id and got.envelope.source == "agent://ponger/ponger-harness"
        # on the real stream, signed with the test's key, handled by the agent's consumer group
        ((_, fields),) = [
            e
            for e in stream_entries(await h.redis.xrange(h.keys.stream("kit")))
            if e[0] == got.entry_id.encode()
        ]
        assert decode_envelope(fields, l9_settings.verifier()).id == got.envelope.id
        groups = await h.redis.xinfo_groups(h.keys.stream("kit"))
        assert [g["name"] for g in groups] == [b"ponger"]


async def test_a_timeout_lists_every_envelope_that_arrived(agent_harness: HarnessFactory) -> None:
    CALLS.pop(13, None)
    async with agent_harness(Ponger) as h:
        odd, even, bad = await h.publish(Ping(n=3)), await h.publish(Ping(n=4)), await h.publish(Ping(n=13))
        pong = await h.expect(Pong, where=lambda a: a.payload.n == 4)
        letter = await h.expect_dead_letter(Ping)  # 13 fails on every attempt: retried, then given up
        assert letter.envelope_id == bad.id and letter.reason == "delivery_cap"
        assert CALLS[13] == 3, "retried up to the test settings' delivery cap"
        with pytest.raises(HarnessTimeout) as timeout:
            await h.expect(Pong, where=lambda a: a.payload.n == 99, within=1)
    lines = str(timeout.value).splitlines()
    assert lines[0] == "no l9.kit.pong.v1 within 1s; 4 envelope(s) did arrive:"
    arrived = {line.split()[1]: line.split() for line in lines[1:5]}
    for envelope in (odd, even, bad):
        assert arrived[envelope.id][0] == "l9.kit.ping.v1" and arrived[envelope.id][3] == "kit"
    assert arrived[pong.envelope.id][:4] == ["l9.kit.pong.v1", pong.envelope.id, "on", "kit"]
    assert lines[5] == "dead letters:"
    assert lines[6].startswith(f"  l9.kit.ping.v1  {bad.id}  on kit: delivery_cap: failed 3 time(s)")
    assert "ValueError: 13 is unlucky (attempt 3)" in lines[6]


async def test_an_rpc_call_through_two_agents(agent_harness: HarnessFactory) -> None:
    async with agent_harness(Asker, Dictionary) as h:
        envelope, answer = await h.call(Ask(question="drawer"), Answer)
    assert answer == Answer(question="drawer", answer="reward") and envelope.kind == "response"


async def test_no_reply_is_a_timeout_naming_the_request(agent_harness: HarnessFactory) -> None:
    async with agent_harness(Ponger) as h:  # nobody answers an Ask
        with pytest.raises(HarnessTimeout, match=r"^no reply to l9\.kit\.ask\.v1 within 1s; 1 envelope"):
            await h.call(Ask(question="?"), Answer, within=1)


async def test_the_test_body_error_is_raised_as_it_is_once_the_agents_stopped(
    agent_harness: HarnessFactory, l9_settings: Settings
) -> None:
    with pytest.raises(ZeroDivisionError):
        async with agent_harness(Ponger) as h:
            await h.publish(Ping(n=2))
            await h.expect(Pong)
            1 / 0  # noqa: B018 (the failing test body)
    # the consumer stopped cleanly: its heartbeat released, nothing left pending
    redis = await open_client(l9_settings.redis_url or "")
    try:
        assert not await redis.exists(h.keys.heartbeat("ponger-harness"))
        assert (await redis.xpending(h.keys.stream("kit"), "ponger"))["pending"] == 0
    finally:
        await redis.aclose()
