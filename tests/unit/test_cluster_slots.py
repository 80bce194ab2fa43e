"""Every Lua script and MULTI of L9 touches one Redis Cluster slot: the slots of their keys,
computed from the keys the code really passes (captured without a server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

import l9.dead
from bus import Keys
from bus.connection import key_of, slot_of
from bus.deadletter import DeadLetters
from bus.publisher import Publisher
from envelope import PacketEnvelope, Signer
from governance import RateLimiter, RateLimitSpec, Request

KEYS = Keys("prod")


def one_slot(keys: Sequence[Any]) -> bool:
    return len({slot_of(k if isinstance(k, bytes | str) else str(k)) for k in keys}) == 1


class Scripts:
    """``register_script`` of a client that records the keys of every script call."""

    def __init__(self, reply: Any) -> None:
        self.calls: list[list[Any]] = []
        self.reply = reply

    def register_script(self, _source: str) -> Any:
        async def call(keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
            self.calls.append(list(keys))
            return self.reply

        return call


async def test_the_rate_limit_script_checks_every_limit_of_a_request_in_one_slot() -> None:
    limits = [
        RateLimitSpec(id=f"limit-{n}@1", types=("l9.extract.*",), per=per, limit=5, window_s=60)
        for n, per in enumerate(["requester", "agent", "requester"])
    ]
    scripts = Scripts([1, 0, 0, 0])
    limiter = RateLimiter(scripts, KEYS, limits)  # type: ignore[arg-type]
    request = Request(type="l9.extract.request.v1", requester="user:ann", agent="planner")
    await limiter.check(request)
    (keys,) = scripts.calls
    assert len(keys) == 3 and one_slot(keys)


async def test_dead_lettering_is_one_multi_in_the_stream_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    stacks: list[list[Any]] = []

    async def execute(self: Pipeline, raise_on_error: bool = True) -> list[Any]:
        stacks.append([command[0] for command in self.command_stack])  # (args, options) each
        return []

    monkeypatch.setattr(Pipeline, "execute", execute)
    client = aioredis.Redis()
    await DeadLetters(client, KEYS, "g", "c").letter("plan", "1-0", {b"f": b"v"}, "r", "d", 3)
    (stack,) = stacks
    keys = [key_of(args) for args in stack]
    assert [str(a[0]).upper() for a in stack] == ["XADD", "XACK", "HDEL"]
    assert one_slot([k for k in keys if k is not None])


async def test_a_replay_script_touches_the_stream_and_its_dead_letters_in_one_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripts = Scripts(b"2-0")

    class Client:
        register_script = scripts.register_script

        async def xrange(self, *_: Any, **__: Any) -> list[Any]:
            return [(b"1-0", {b"type": b"x", b"dl_reason": b"r"})]

    await l9.dead.replay(Client(), KEYS, "generated")  # type: ignore[arg-type]
    (keys,) = scripts.calls
    assert keys == [KEYS.stream("generated"), KEYS.dead("generated")] and one_slot(keys)


def test_the_escalation_script_keys_share_the_resolutions_stream_slot() -> None:
    resolutions = "governance.resolutions"
    keys = [
        KEYS.escalations_pending(resolutions),
        KEYS.escalations_resolved(resolutions),
        KEYS.stream(resolutions),
    ]
    assert one_slot(keys)


def test_an_emitted_envelope_and_its_index_entry_are_in_one_slot() -> None:
    publisher = Publisher(aioredis.Redis(), KEYS, Signer({"k": b"secret"}, "k"))
    envelope = PacketEnvelope.new(type="l9.demo.task.v1", source="agent://t/0", data={"n": 1})
    for stream in ("plan", "generated", "rpc.0a1b"):
        commands = publisher.commands([envelope], stream)
        assert [c[0] for c in commands] == ["XADD", "SADD"]
        assert one_slot([key_of(c) for c in commands])
