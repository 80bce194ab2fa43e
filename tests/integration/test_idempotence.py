"""Identity and idempotence against the real Redis (issue 21): a retried handler emits the same
envelope ids, and a consumer group handles an envelope id once within its window of handled ids,
whichever of its consumers reads it and however often it is added to the stream."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import pytest
from redis.exceptions import NoPermissionError
from structlog.testing import capture_logs

from agents import Agent, Context, Runtime, handles
from bus import Delivery, DeliveryPolicy, Keys, Publisher, StreamConsumer, open_client
from bus.connection import RedisClient, as_text
from bus.dedupe import derived_id
from envelope import PacketEnvelope, Signer, Verifier, decode
from envelope._model import UUID_PATTERN
from l9.devstack import StackEndpoints
from tests.conftest import FAST, ON_CLUSTER, stream_entries, wait_for
from tests.integration.ledger import Ping, Pong, Work

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster
OUT = "echoed"
PONG = "l9.test.pong.v1"


class Echo(Agent):
    """For each Work: a Pong published at once (``now=True``), one built with ``envelope_for`` and
    published directly, and one emitted with the ack; then it fails its first ``fail_times``
    attempts, or waits on ``hold`` in its first. Answers a Ping, then fails its first attempt."""

    name = "echo"
    consumes = ("test",)

    def __init__(self, runtime: Runtime, hold: anyio.Event | None = None) -> None:
        super().__init__(runtime)
        self.hold = hold
        self.attempts: list[int] = []

    @handles(Work)
    async def on_work(self, ctx: Context[Work]) -> None:
        self.attempts.append(ctx.attempt)
        by = str(ctx.attempt)
        await ctx.emit(Pong(text="progress", by=by), stream=OUT, now=True)
        direct = self.envelope_for(Pong(text="direct", by=by), cause=ctx.envelope)
        await self.runtime.publisher.publish(direct, OUT)
        await ctx.emit(Pong(text="final", by=by), stream=OUT)
        if ctx.attempt <= ctx.payload.fail_times:
            raise RuntimeError("fails after emitting")
        if self.hold is not None and ctx.attempt == 1:
            await self.hold.wait()

    @handles(Ping)
    async def on_ping(self, ctx: Context[Ping]) -> None:
        self.attempts.append(ctx.attempt)
        await ctx.reply(Pong(text=ctx.payload.text, by=str(ctx.attempt)))
        if ctx.attempt == 1:
            raise RuntimeError("fails after replying")


def echo(redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, name: str, **kw: Any) -> Echo:
    runtime = Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent="echo", instance=name)
    return Echo(runtime, **kw)


def consumer_of(
    redis: RedisClient,
    verifier: Verifier,
    keys: Keys,
    handler: Callable[[Delivery], Any],
    *,
    stream: str = "test",
    group: str = "echo",
    name: str = "e-0",
    policy: DeliveryPolicy = FAST,
) -> StreamConsumer:
    return StreamConsumer(
        redis, keys, group=group, consumer=name, streams=[stream], handler=handler, verifier=verifier,
        policy=policy,
    )  # fmt: skip


@asynccontextmanager
async def running(consumer: StreamConsumer) -> AsyncIterator[StreamConsumer]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        yield consumer
        consumer.stop()


def work(**kw: Any) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/p", data=Work(n=1, **kw).model_dump()
    )


async def entries(redis: RedisClient, keys: Keys, verifier: Verifier, stream: str) -> list[PacketEnvelope]:
    return [
        decode(fields, verifier)[0] for _, fields in stream_entries(await redis.xrange(keys.stream(stream)))
    ]


async def settled(redis: RedisClient, keys: Keys, stream: str = "test", group: str = "echo") -> bool:
    """The group has read every entry of the stream (no lag) and acked it (nothing pending)."""
    for info in await redis.xinfo_groups(keys.stream(stream)):
        if as_text(info["name"]) == group:
            return int(info["pending"]) == 0 and info["lag"] == 0
    return False


def by_attempt(envelopes: list[PacketEnvelope]) -> dict[str, list[tuple[str, str]]]:
    """attempt -> [(Pong text, envelope id)] in stream order."""
    out: dict[str, list[tuple[str, str]]] = {}
    for e in envelopes:
        out.setdefault(str(e.data["by"]), []).append((str(e.data["text"]), e.id))
    return out


def check_derived(envelopes: list[PacketEnvelope], cause: PacketEnvelope) -> None:
    """Every id is a lowercase UUID (v8) derived from the cause, the agent, the type and the emit's
    number; every envelope points at the cause, in its run."""
    for e in envelopes:
        assert re.fullmatch(UUID_PATTERN, e.id) and e.id[14] == "8", e.id
        assert e.causation_id == cause.id and e.correlation_id == cause.correlation_id
    expected = {"progress": 0, "direct": 1, "final": 2}
    assert {e.id for e in envelopes} == {
        derived_id(cause.id, "echo", PONG, expected[str(e.data["text"])]) for e in envelopes
    }


async def test_a_handler_retried_after_emitting_emits_the_same_ids_and_downstream_handles_each_once(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    agent = echo(redis, keys, signer, verifier, "e-0")
    cause = work(fail_times=1)
    await Publisher(redis, keys, signer).publish(cause, "test")
    downstream: list[str] = []

    async def count(d: Delivery) -> None:
        downstream.append(d.envelope.id)

    async with (
        running(consumer_of(redis, verifier, keys, agent.handle)),
        running(consumer_of(redis, verifier, keys, count, stream=OUT, group="downstream", name="d-0")),
    ):
        await wait_for(lambda: agent.attempts == [1, 2], timeout=60)
        await wait_for(lambda: settled(redis, keys), timeout=60)
        await wait_for(lambda: len(downstream) == 3, timeout=60)
        await wait_for(lambda: settled(redis, keys, OUT, "downstream"), timeout=60)
    out = await entries(redis, keys, verifier, OUT)
    tries = by_attempt(out)
    # attempt 1 published two Pongs at once, then failed (its ack-bound one never went out);
    # attempt 2 published the same two again, with the same ids, and the third with its ack
    assert [t for t, _ in tries["1"]] == ["progress", "direct"]
    assert [t for t, _ in tries["2"]] == ["progress", "direct", "final"]
    assert tries["1"] == tries["2"][:2]
    check_derived(out, cause)
    # the downstream group handled each id once: the repeats were acked unhandled
    assert sorted(downstream) == sorted({e.id for e in out}) and len(out) == 5


async def test_a_reply_sent_again_by_a_retried_handler_has_the_same_id(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    agent = echo(redis, keys, signer, verifier, "e-0")
    request = PacketEnvelope.new(
        type="l9.test.ping.v1", source="agent://test/client", data=Ping(text="hi").model_dump(),
        kind="request", reply_to="rpc.client-1",
    )  # fmt: skip
    await Publisher(redis, keys, signer).publish(request, "test")
    async with running(consumer_of(redis, verifier, keys, agent.handle)):
        await wait_for(lambda: agent.attempts == [1, 2], timeout=60)
        await wait_for(lambda: settled(redis, keys), timeout=60)
    first, second = await entries(redis, keys, verifier, "rpc.client-1")
    assert (first.data["by"], second.data["by"]) == ("1", "2")
    assert first.id == second.id == derived_id(request.id, "echo", PONG, 0)
    assert first.in_reply_to == second.in_reply_to == request.id and first.kind == "response"


async def test_a_consumer_dying_before_its_ack_leaves_a_retry_that_emits_the_same_ids(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """The first consumer is torn down mid-handler, after its first emits went out and before its
    ack (no stop, no drain, no release of its name: as a killed process leaves things); another
    consumer of the group, with a fresh agent, reclaims the entry once the first one's heartbeat
    lapsed and handles it again."""
    hold = anyio.Event()
    first = echo(redis, keys, signer, verifier, "e-0", hold=hold)
    cause = work()
    await Publisher(redis, keys, signer).publish(cause, "test")

    async def two_out() -> bool:
        return int(await redis.xlen(keys.stream(OUT))) >= 2

    with anyio.CancelScope() as crash:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer_of(redis, verifier, keys, first.handle).run)
            await wait_for(two_out, timeout=60)
            crash.cancel()
    assert first.attempts == [1] and not await settled(redis, keys)
    second = echo(redis, keys, signer, verifier, "e-1")
    async with running(consumer_of(redis, verifier, keys, second.handle, name="e-1")):
        await wait_for(lambda: second.attempts == [2], timeout=60)
        await wait_for(lambda: settled(redis, keys), timeout=60)
    out = await entries(redis, keys, verifier, OUT)
    tries = by_attempt(out)
    assert [t for t, _ in tries["1"]] == ["progress", "direct"]
    assert tries["1"] == tries["2"][:2] and len(tries["2"]) == 3
    check_derived(out, cause)


async def test_the_same_envelope_added_to_a_stream_again_and_again_is_handled_once(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Three entries of one envelope in one read (the first in hand, the others repeats of it),
    then three more after it was handled (repeats of an id in the window): one handling."""
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.entry_id)

    same = work()
    publisher = Publisher(redis, keys, signer)
    consumer = consumer_of(redis, verifier, keys, handler)
    await consumer.ensure_groups()
    with capture_logs() as logs:
        await publisher.publish_many([same, same, same], "test")
        async with running(consumer):
            await wait_for(lambda: settled(redis, keys), timeout=60)
            for _ in range(3):
                await publisher.publish(same, "test")
            await wait_for(lambda: sum(e["event"] == "consumer.duplicate" for e in logs) == 5, timeout=60)
            await wait_for(lambda: settled(redis, keys), timeout=60)
    assert len(handled) == 1 and await redis.xlen(keys.stream("test")) == 6
    repeats = [e for e in logs if e["event"] == "consumer.duplicate"]
    assert {e["envelope_id"] for e in repeats} == {same.id} and all(e["log_level"] == "info" for e in repeats)
    assert sum("in_hand" in e for e in repeats) == 2 and sum("handled_at" in e for e in repeats) == 3
    assert await redis.zscore(keys.handled("test", "echo"), same.id) is not None


async def test_one_group_handles_an_envelope_once_whichever_of_its_consumers_reads_it(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """The window is the group's, in Redis: a consumer that never saw the first entry acks the
    repeats unhandled, and another group on the same stream handles the envelope itself."""
    handled: dict[str, list[str]] = {"e-0": [], "e-1": [], "other": []}

    def by(name: str) -> Callable[[Delivery], Any]:
        async def handler(d: Delivery) -> None:
            handled[name].append(d.entry_id)

        return handler

    same = work()
    publisher = Publisher(redis, keys, signer)
    async with running(consumer_of(redis, verifier, keys, by("e-0"), name="e-0")):
        await publisher.publish(same, "test")
        await wait_for(lambda: settled(redis, keys), timeout=60)
    async with (
        running(consumer_of(redis, verifier, keys, by("e-1"), name="e-1")),
        running(consumer_of(redis, verifier, keys, by("other"), group="other", name="o-0")),
    ):
        await publisher.publish_many([same, same], "test")
        await wait_for(lambda: settled(redis, keys), timeout=60)
        await wait_for(lambda: settled(redis, keys, group="other"), timeout=60)
    assert (len(handled["e-0"]), len(handled["e-1"]), len(handled["other"])) == (1, 0, 1)


async def test_an_id_is_handled_again_once_it_is_older_than_the_window_and_then_trimmed(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    now = [1_800_000_000.0]
    consumer = consumer_of(redis, verifier, keys, handler, policy=replace(FAST, dedupe_window_s=60))
    assert consumer.window is not None
    consumer.window.clock = lambda: now[0]
    consumer.window.trim_every_s = 0  # trim with every record
    same, other = work(), work()
    publisher = Publisher(redis, keys, signer)

    async def publish_and_settle(envelope: PacketEnvelope, at: float) -> None:
        now[0] = at
        await publisher.publish(envelope, "test")
        await wait_for(lambda: settled(redis, keys), timeout=60)

    window = keys.handled("test", "echo")
    async with running(consumer):
        await publish_and_settle(same, 1_800_000_000.0)
        await publish_and_settle(same, 1_800_000_059.0)  # inside the window: a repeat
        assert handled == [same.id]
        await publish_and_settle(same, 1_800_000_061.0)  # past it: handled again
        assert handled == [same.id, same.id]
        assert await redis.zscore(window, same.id) == 1_800_000_061_000
        await publish_and_settle(other, 1_800_000_122.0)  # its record trims what is older
    assert handled == [same.id, same.id, other.id]
    assert await redis.zscore(window, same.id) is None and await redis.zcard(window) == 1
    ttl = int(await redis.pttl(window))
    assert 0 < ttl <= 60_000  # the key goes a window (and a trim interval: here none) after its last trim


async def test_without_a_window_every_entry_is_handled(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    same = work()
    consumer = consumer_of(redis, verifier, keys, handler, policy=replace(FAST, dedupe_window_s=0))
    assert consumer.window is None
    await Publisher(redis, keys, signer).publish(same, "test")
    async with running(consumer):
        await wait_for(lambda: len(handled) == 1 and settled(redis, keys), timeout=60)
        await Publisher(redis, keys, signer).publish_many([same, same], "test")
        await wait_for(lambda: len(handled) == 3, timeout=60)
        await wait_for(lambda: settled(redis, keys), timeout=60)
    assert handled == [same.id] * 3
    assert not await redis.exists(keys.handled("test", "echo"))


async def test_a_failed_handler_marks_nothing_so_a_later_entry_of_the_envelope_is_handled(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Dead-lettered after failing every attempt, the envelope is not in the window: the same
    envelope added again (a replay, say) is handled."""
    handled: list[int] = []
    failing = True

    async def handler(d: Delivery) -> None:
        if failing:
            raise RuntimeError("not yet")
        handled.append(d.attempt)

    same = work()
    publisher = Publisher(redis, keys, signer)
    policy = replace(FAST, max_deliveries=2)
    async with running(consumer_of(redis, verifier, keys, handler, policy=policy)):
        await publisher.publish(same, "test")

        async def dead() -> bool:
            return int(await redis.xlen(keys.dead("test"))) == 1

        await wait_for(dead, timeout=60)
        assert await redis.zscore(keys.handled("test", "echo"), same.id) is None
        failing = False
        await publisher.publish(same, "test")
        await wait_for(lambda: handled == [1], timeout=60)
        await wait_for(lambda: settled(redis, keys), timeout=60)
    assert await redis.zscore(keys.handled("test", "echo"), same.id) is not None


@pytest.mark.skipif(ON_CLUSTER, reason="ACL users are set up on the standalone Redis")
async def test_a_redis_user_without_the_window_key_turns_the_window_off_and_loses_nothing(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, stack: StackEndpoints
) -> None:
    """A consumer whose Redis user may use the stream but not its window (an ACL rendered before
    the window existed) says so once, loudly, and handles and acks every entry."""
    user, password = f"{keys.namespace}-old", "window-test-password"
    stream = keys.stream("test")
    rules = ["reset", "on", f">{password}", "+@all", f"~{stream}", f"~{stream}:errors", f"~{stream}:dead"]
    await redis.execute_command("ACL", "SETUSER", user, *rules, f"~{keys.namespace}:hb:*")
    limited = await open_client(f"redis://{user}:{password}@{stack.redis_url.removeprefix('redis://')}")
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.envelope.id)

    same = work()
    try:
        with pytest.raises(NoPermissionError):
            await limited.zadd(keys.handled("test", "echo"), {"x": 1})
        with capture_logs() as logs:
            async with running(consumer_of(limited, verifier, keys, handler)):
                await Publisher(redis, keys, signer).publish(same, "test")
                await wait_for(lambda: handled == [same.id] and settled(redis, keys), timeout=60)
                await Publisher(redis, keys, signer).publish(same, "test")
                await wait_for(lambda: len(handled) == 2, timeout=60)
                await wait_for(lambda: settled(redis, keys), timeout=60)
    finally:
        await limited.aclose()
        await redis.execute_command("ACL", "DELUSER", user)
    assert [e["stream"] for e in logs if e["event"] == "consumer.window_off"] == ["test"]
    assert not [e for e in logs if e["event"] in ("consumer.ack_failed", "consumer.window_failed")]


@pytest.mark.skipif(ON_CLUSTER, reason="CONFIG SET on the standalone Redis")
async def test_an_out_of_memory_redis_refusing_the_record_does_not_hold_the_ack_back(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Redis refuses the ZADD (a write that may grow memory) but not the XACK after it: the entry
    is acked, its id not recorded, and the refusal logged."""
    hold, started = anyio.Event(), anyio.Event()

    async def handler(d: Delivery) -> None:
        started.set()
        await hold.wait()

    same = work()
    await Publisher(redis, keys, signer).publish(same, "test")
    config: Any = await redis.config_get("maxmemory", "maxmemory-policy")
    try:
        with capture_logs() as logs:
            async with running(consumer_of(redis, verifier, keys, handler)):
                await started.wait()
                await redis.config_set("maxmemory-policy", "noeviction")
                await redis.config_set("maxmemory", "1")
                hold.set()
                await wait_for(lambda: settled(redis, keys), timeout=60)
    finally:
        await redis.config_set("maxmemory", config["maxmemory"])
        await redis.config_set("maxmemory-policy", config["maxmemory-policy"])
    (failed,) = [e for e in logs if e["event"] == "consumer.window_failed"]
    assert "OOM" in str(failed["error"]) and failed["stream"] == "test"
    assert await redis.zscore(keys.handled("test", "echo"), same.id) is None
