"""Derived envelope ids and the window of handled ids, without a real Redis (fakeredis: no
pending-entry semantics are under test here; ``tests/integration/test_idempotence.py`` has them)."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
import structlog
from structlog.testing import capture_logs

from agents import Agent, Context, Runtime, handles
from agents.auditor.reporter import notice_id
from bus import Delivery, DeliveryPolicy, Keys, Topology
from bus.connection import RedisClient, execute_many, slot_of
from bus.dedupe import HandledWindow, Repeat, derived_id
from envelope import PacketEnvelope, Payload, Signer, Verifier, payload
from envelope._model import UUID_PATTERN
from tests.conftest import stream_entries

KEYRING = {"k": b"unit-secret"}


@payload("l9.unit.asked.v1")
class Asked(Payload):
    n: int


@payload("l9.unit.told.v1")
class Told(Payload):
    n: int


@payload("l9.unit.noted.v1")
class Noted(Payload):
    n: int


@pytest.fixture
async def fake() -> AsyncIterator[RedisClient]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def test_a_derived_id_is_a_lowercase_uuid8_fixed_by_its_inputs() -> None:
    cause = "01a250f4-feee-707e-874d-1de03babb67e"
    made = derived_id(cause, "sympy", "l9.sympy.result.v1", 0)
    assert re.fullmatch(UUID_PATTERN, made)
    assert uuid.UUID(made).version == 8 and uuid.UUID(made).variant == uuid.RFC_4122
    assert made == derived_id(cause, "sympy", "l9.sympy.result.v1", 0)
    others = {
        derived_id("01a250f4-feee-707e-874d-1de03babb67f", "sympy", "l9.sympy.result.v1", 0),
        derived_id(cause, "planner", "l9.sympy.result.v1", 0),
        derived_id(cause, "sympy", "l9.sympy.error.v1", 0),
        derived_id(cause, "sympy", "l9.sympy.result.v1", 1),
    }
    assert made not in others and len(others) == 4
    # the reporter's notice is one such id: the reporter's first ReportReady for the completion
    assert notice_id(cause) == derived_id(cause, "reporter", "l9.report.ready.v1", 0)


def test_the_window_key_is_in_the_streams_slot_and_per_group() -> None:
    keys = Keys("ns")
    key = keys.handled("demo.tasks", "sympy")
    assert key == f"{keys.stream('demo.tasks')}:handled:sympy"
    assert slot_of(key) == slot_of(keys.stream("demo.tasks"))
    assert key != keys.handled("demo.tasks", "planner")


def test_the_policy_keeps_a_day_by_default_and_refuses_a_negative_window() -> None:
    assert DeliveryPolicy().dedupe_window_s == 3600
    assert DeliveryPolicy(dedupe_window_s=0).dedupe_window_s == 0
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match="dedupe_window_s"):
            DeliveryPolicy(dedupe_window_s=bad)


class Teller(Agent):
    name = "teller"
    consumes = ("unit",)

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.built: list[PacketEnvelope] = []

    @handles(Asked)
    async def on_asked(self, ctx: Context[Asked]) -> None:
        n = ctx.payload.n
        await ctx.emit(Told(n=n))
        await ctx.emit(Noted(n=n))
        await ctx.emit(Told(n=n + 1))
        self.built.append(self.envelope_for(Noted(n=n), cause=ctx.envelope))  # numbered too
        other = PacketEnvelope.new(type="l9.unit.asked.v1", source="agent://u/9", data={"n": 0})
        self.built.append(self.envelope_for(Noted(n=n), cause=other))  # not the one handled


def teller(fake: RedisClient) -> Teller:
    runtime = Runtime(
        redis=fake, keys=Keys("u"), signer=Signer(KEYRING, "k"), verifier=Verifier(KEYRING),
        agent="teller", instance="teller-3", topology=Topology(),
    )  # fmt: skip
    return Teller(runtime)


async def test_a_handlers_envelopes_get_the_same_ids_on_every_attempt(fake: RedisClient) -> None:
    asked = PacketEnvelope.new(type="l9.unit.asked.v1", source="agent://u/1", data={"n": 1})
    ids: list[list[str]] = []
    agent = teller(fake)
    for attempt in (1, 2):
        delivery = Delivery("unit", "1-0", asked, Asked(n=1), attempt, {})
        await agent.handle(delivery)
        await execute_many(fake, delivery.emits)
        ids.append([e.id for e in agent.built[-2:]])
    rows = stream_entries(await fake.xrange(Keys("u").stream("unit")))
    emitted = [fields[b"id"].decode() for _, fields in rows]
    told, noted = "l9.unit.told.v1", "l9.unit.noted.v1"
    once = [derived_id(asked.id, "teller", t, n) for t, n in ((told, 0), (noted, 0), (told, 1))]
    assert emitted == once * 2  # each type numbered on its own, the same on the retry
    assert ids[0][0] == ids[1][0] == derived_id(asked.id, "teller", noted, 1)
    # caused by an envelope the handler is not handling: a fresh UUIDv7 each time
    assert ids[0][1] != ids[1][1] and uuid.UUID(ids[0][1]).version == 7


async def test_outside_a_handler_envelope_for_draws_a_fresh_id(fake: RedisClient) -> None:
    agent = teller(fake)
    cause = PacketEnvelope.new(type="l9.unit.asked.v1", source="agent://u/1", data={"n": 1})
    a, b = (agent.envelope_for(Told(n=1), cause=cause) for _ in range(2))
    assert a.id != b.id and uuid.UUID(a.id).version == 7 and a.causation_id == cause.id


async def test_the_window_records_looks_up_and_forgets_after_its_ttl(fake: RedisClient) -> None:
    now = [1_800_000_000.0]
    window = HandledWindow(fake, Keys("u"), "g", 60, log=structlog.get_logger(), clock=lambda: now[0])
    first = window.record("unit", ["a", "b"])
    key = window.key("unit")
    assert first == [
        ("ZADD", key, 1_800_000_000_000, "a", 1_800_000_000_000, "b"),
        ("PEXPIRE", key, 60_000 + 60_000),  # a window and a trim interval ahead
        ("ZREMRANGEBYSCORE", key, "-inf", f"({1_800_000_000_000 - 60_000}"),
    ]
    assert [c[0] for c in window.record("unit", ["c"])] == ["ZADD"]  # expiry and trim: a minute ago
    await execute_many(fake, first)
    now[0] += 30
    found = await window.lookup({"unit": [b"a", b"x", "b"]})  # ids as Redis returns them, or text
    assert found == {("unit", "a"): 1_800_000_000.0, ("unit", "b"): 1_800_000_000.0}
    now[0] += 31
    assert await window.lookup({"unit": [b"a", b"b"]}) == {}  # older than the window: not handled


async def test_a_window_key_of_another_type_finds_nothing_and_is_logged(fake: RedisClient) -> None:
    await fake.set(Keys("u").handled("unit", "g"), "not a sorted set")
    window = HandledWindow(fake, Keys("u"), "g", 60, log=structlog.get_logger())
    with capture_logs() as logs:
        assert await window.lookup({"unit": [b"a"]}) == {}
    assert [e["event"] for e in logs] == ["consumer.window_failed"]
    assert window.on("unit")  # only a NOPERM turns it off (tests/integration/test_idempotence.py)


def test_a_repeat_says_why_in_its_log_fields() -> None:
    at: dict[str, Any] = Repeat(handled_at=1_800_000_000.5).log_fields()
    assert at == {"handled_at": "2027-01-15T08:00:00.500000+00:00"}
    assert Repeat(in_hand="5-0").log_fields() == {"in_hand": "5-0"}
