"""The bus in-process against the real Redis: retries, RPC deadlines, safe trimming, leases."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

import anyio
import pytest
from redis.exceptions import ResponseError

from agents import Agent, Context, Runtime, handles
from bus import (
    BatchConsumer,
    Delivery,
    Entry,
    Handler,
    Keys,
    NotReplicated,
    Publisher,
    Rejected,
    RemoteError,
    RpcClient,
    RpcTimeout,
    StreamConsumer,
    drop_finished_reply_streams,
    is_cluster,
    safe_trim_boundary,
    trim_acknowledged,
)
from bus.connection import RedisClient, execute_many, first_error
from bus.index import known_streams
from envelope import PacketEnvelope, Signer, Verifier
from tests.conftest import FAST, read_reply, stream_entries, wait_for
from tests.integration.ledger import LedgerAgent, Ping, Pong, Work

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster


def on_test_stream(
    redis: RedisClient, keys: Keys, verifier: Verifier, group: str, name: str, handler: Handler
) -> StreamConsumer:
    """A consumer of stream ``test`` with the quick test policy."""
    return StreamConsumer(
        redis,
        keys,
        group=group,
        consumer=name,
        streams=["test"],
        handler=handler,
        verifier=verifier,
        policy=FAST,
    )


@asynccontextmanager
async def consuming(consumer: StreamConsumer) -> AsyncIterator[StreamConsumer]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        yield consumer
        consumer.stop()


def work(n: int, **kw: object) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/p", data=Work(n=n, **kw).model_dump()
    )


async def test_failed_handler_is_retried_with_backoff_then_acked(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    seen: list[tuple[int, float]] = []

    async def flaky(d: Delivery) -> None:
        seen.append((d.attempt, time.monotonic()))
        if d.attempt < 3:
            raise ValueError(f"try {d.attempt}")

    consumer = on_test_stream(redis, keys, verifier, "g", "c1", flaky)
    async with consuming(consumer):
        await Publisher(redis, keys, signer).publish(work(1))
        await wait_for(lambda: len(seen) >= 3 and not consumer.in_flight, timeout=60)
        await wait_for(lambda: _pending_zero(redis, keys, "g"))
    assert [a for a, _ in seen] == [1, 2, 3]
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(seen)]
    # The backoff (50 ms, then 100 ms) runs from each delivery, which comes a little before its
    # handler starts (the read, the checks): handler to handler, a loaded machine may show a
    # few ms less. The second wait still exceeds the first's whole backoff.
    skew = 0.02
    assert gaps[0] >= 0.05 - skew and gaps[1] >= 0.1 - skew, f"backoff not exponential: {gaps}"
    assert not await redis.exists(keys.errors("test")) or await redis.hlen(keys.errors("test")) == 0
    assert await redis.xlen(keys.dead("test")) == 0


async def _pending_zero(redis: RedisClient, keys: Keys, group: str) -> bool:
    return int((await redis.xpending(keys.stream("test"), group))["pending"]) == 0


async def test_with_ack_commands_go_out_with_the_ack_only_for_a_handler_that_returned(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """``Delivery.with_ack``: sent after the handler, with its XACK; a failed attempt's are
    dropped (the retry queues its own); an error reply to one is logged, the entry acked."""
    counter, wrong = f"{keys.namespace}:after:count", f"{keys.namespace}:after:hash"
    await redis.hset(wrong, "f", "v")
    sent_before_return: list[object] = []

    async def handler(d: Delivery) -> None:
        n = Work.model_validate(d.envelope.data).n
        d.with_ack(("INCRBY", counter, 10**n))
        if n == 1:
            d.with_ack(("INCR", wrong))  # WRONGTYPE: logged, the entry still acked
        sent_before_return.append(await redis.get(counter))
        if n == 0 and d.attempt == 1:
            raise ValueError("first attempt fails")

    consumer = on_test_stream(redis, keys, verifier, "g", "c1", handler)
    async with consuming(consumer):
        await Publisher(redis, keys, signer).publish_many([work(0), work(1)])
        await wait_for(lambda: len(sent_before_return) == 3 and not consumer.in_flight, timeout=60)
        await wait_for(lambda: _pending_zero(redis, keys, "g"))
    assert int(cast(bytes, await redis.get(counter))) == 11, "the failed attempt's command was sent"
    assert sent_before_return[0] is None, "a with_ack command went out before its handler returned"
    assert await redis.hget(wrong, "f") == b"v"


async def test_execute_many_reads_every_reply_and_keeps_the_connection_in_step(
    redis: RedisClient, keys: Keys
) -> None:
    key = f"{keys.namespace}:many"
    replies = await execute_many(redis, [("SET", key, "1"), ("HSET", key, "f", "v"), ("INCR", key)])
    assert replies[0] == b"OK" and replies[2] == 2, "replies come unconverted, in order"
    assert isinstance(replies[1], ResponseError) and "WRONGTYPE" in str(replies[1])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        first_error(replies)
    assert await execute_many(redis, [("GET", key), ("PING",)]) == [b"2", b"PONG"]


async def test_long_handler_keeps_its_lease(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """A handler running 3x the lease is not stolen by a second live consumer."""
    calls: list[str] = []

    def handler(name: str) -> Handler:
        async def handle(d: Delivery) -> None:
            calls.append(name)
            await anyio.sleep(4.5)

        return handle

    c1 = on_test_stream(redis, keys, verifier, "g", "c1", handler("c1"))
    c2 = on_test_stream(redis, keys, verifier, "g", "c2", handler("c2"))
    async with consuming(c1):
        await Publisher(redis, keys, signer).publish(work(1))
        await wait_for(lambda: calls == ["c1"], timeout=60)
        async with consuming(c2):
            await wait_for(lambda: not c1.in_flight, timeout=60)
    assert calls == ["c1"]


async def test_rpc_replies_within_deadline_and_times_out_past_it(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    runtime = Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent="ledger", instance="r1")
    agent: Agent = LedgerAgent(runtime)
    consumer = on_test_stream(redis, keys, verifier, "ledger", "r1", agent.handle)
    async with consuming(consumer), RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        reply, pong = await rpc.call(Ping(text="hi"), source="agent://test/caller", deadline_s=30.0)
        assert isinstance(pong, Pong) and pong.text == "hi" and pong.by == "r1"
        assert reply.kind == "response" and reply.in_reply_to is not None

        started = time.monotonic()
        with pytest.raises(RpcTimeout, match=r"within 0\.3s"):  # not the reply, 3 s later
            await rpc.call(Ping(text="slow", sleep_ms=3000), source="agent://test/caller", deadline_s=0.3)
        assert time.monotonic() - started >= 0.3  # never before its deadline
        # the late reply arrives and is ignored; the next call still works
        await anyio.sleep(3.0)
        _, pong = await rpc.call(Ping(text="again"), source="agent://test/caller", deadline_s=30.0)
        assert pong.text == "again"  # type: ignore[attr-defined]


async def test_a_reply_stream_outlives_its_client_until_every_group_read_it(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """The auditor reads reply streams too: closing the client must not delete unread replies,
    nor replies on a stream no group has found yet (the auditor looks for new streams every
    second; a one-shot CLI call is over sooner)."""
    runtime = Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent="ledger", instance="r1")
    consumer = on_test_stream(redis, keys, verifier, "ledger", "r1", LedgerAgent(runtime).handle)
    async with consuming(consumer):
        async with RpcClient(redis, Publisher(redis, keys, signer), verifier, name="kept") as rpc:
            await redis.xgroup_create(keys.stream(rpc.reply_stream), "auditor", id="0", mkstream=True)
            await rpc.call(Ping(text="hi"), source="agent://test/caller", deadline_s=30.0)
        async with RpcClient(redis, Publisher(redis, keys, signer), verifier, name="gone") as rpc:
            key = keys.stream(rpc.reply_stream)
            await redis.xgroup_create(key, "auditor", id="0", mkstream=True)
            await rpc.call(Ping(text="hi"), source="agent://test/caller", deadline_s=30.0)
            ((_, ((entry_id, _),)),) = read_reply(await redis.xreadgroup("auditor", "a-0", {key: ">"}))
            await redis.xack(key, "auditor", entry_id)
        async with RpcClient(redis, Publisher(redis, keys, signer), verifier, name="unseen") as rpc:
            await rpc.call(Ping(text="hi"), source="agent://test/caller", deadline_s=30.0)
    kept, gone, unseen = keys.stream("rpc.kept"), keys.stream("rpc.gone"), keys.stream("rpc.unseen")
    assert await redis.xlen(kept) == 1 and not await redis.exists(gone)
    assert await redis.xlen(unseen) == 1, "a reply no group has seen was deleted with its client"
    assert await drop_finished_reply_streams(redis, keys, idle_s=3600) == []  # unread or recent
    await redis.xreadgroup("auditor", "a-0", {kept: ">"})
    assert await drop_finished_reply_streams(redis, keys, idle_s=3600) == []  # read, not acked, recent
    ((entry_id, _),) = stream_entries(await redis.xrange(kept))
    await redis.xack(kept, "auditor", entry_id)
    assert await drop_finished_reply_streams(redis, keys, idle_s=3600) == []  # finished but recent
    assert sorted(await drop_finished_reply_streams(redis, keys, idle_s=0)) == ["rpc.kept", "rpc.unseen"]
    assert not await redis.exists(kept) and not await redis.exists(unseen)
    assert (await known_streams(redis, keys)).isdisjoint({"rpc.kept", "rpc.gone", "rpc.unseen"})


async def test_rpc_error_reply_raises_remote_error(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    class Refuser(Agent):
        name = "refuser"
        consumes = ("test",)

        @handles(Ping)
        async def on_ping(self, ctx: Context[Ping]) -> None:
            await ctx.fail("refused", "no pings today")

    runtime = Runtime(
        redis=redis, keys=keys, signer=signer, verifier=verifier, agent="refuser", instance="r1"
    )
    consumer = on_test_stream(redis, keys, verifier, "r", "r1", Refuser(runtime).handle)
    async with consuming(consumer), RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        with pytest.raises(RemoteError, match="refused: no pings today"):
            await rpc.call(Ping(text="x"), source="agent://test/c", deadline_s=30.0)


async def test_trim_never_removes_what_a_group_has_not_acknowledged(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    key = keys.stream("test")
    ids = await Publisher(redis, keys, signer).publish_many([work(i) for i in range(100)])
    await redis.xgroup_create(key, "fast", id="0")
    await redis.xgroup_create(key, "slow", id="0")
    fast = read_reply(await redis.xreadgroup("fast", "f", {key: ">"}, count=100))
    await redis.xack(key, "fast", *[i for i, _ in fast[0][1]])
    slow = read_reply(await redis.xreadgroup("slow", "s", {key: ">"}, count=50))
    slow_ids = [i for i, _ in slow[0][1]]
    await redis.xack(key, "slow", *slow_ids[:40])  # 10 pending, 50 never delivered

    assert await safe_trim_boundary(redis, key) == ids[40]
    assert await trim_acknowledged(redis, key) == 40
    left = [i.decode() for i, _ in stream_entries(await redis.xrange(key))]
    assert left == ids[40:]

    await redis.xack(key, "slow", *slow_ids[40:])
    assert await trim_acknowledged(redis, key) == 10
    assert [i.decode() for i, _ in stream_entries(await redis.xrange(key))] == ids[50:]  # undelivered to slow

    await redis.xgroup_create(key, "new", id="0")  # a group that has read nothing yet
    rest = read_reply(await redis.xreadgroup("slow", "s", {key: ">"}, count=100))
    await redis.xack(key, "slow", *[i for i, _ in rest[0][1]])
    assert await trim_acknowledged(redis, key) == 0
    assert await redis.xlen(key) == 50


async def test_trim_respects_max_age(redis: RedisClient, keys: Keys, signer: Signer) -> None:
    key = keys.stream("test")
    await Publisher(redis, keys, signer).publish_many([work(i) for i in range(10)])
    await redis.xgroup_create(key, "g", id="0")
    got = read_reply(await redis.xreadgroup("g", "c", {key: ">"}, count=10))
    await redis.xack(key, "g", *[i for i, _ in got[0][1]])
    assert await trim_acknowledged(redis, key, max_age_s=3600) == 0  # all younger than an hour
    assert await trim_acknowledged(redis, key, max_age_s=0) == 10


async def test_nogroup_for_a_stream_without_group_is_created_on_start(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    """Entries published before the first consumer started are not lost (group starts at 0)."""
    await Publisher(redis, keys, signer).publish_many([work(i) for i in range(5)])
    got: list[int] = []

    async def collect(d: Delivery) -> None:
        got.append(d.payload.n)  # type: ignore[attr-defined]

    consumer = on_test_stream(redis, keys, verifier, "late", "c", collect)
    async with consuming(consumer):
        await wait_for(lambda: len(got) == 5, timeout=60)
    assert sorted(got) == [0, 1, 2, 3, 4]


# -- the batch delivery loop -----------------------------------------------------------------------


async def test_batch_consumer_isolates_a_poisoned_entry_and_acks_the_rest(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    """A batch that keeps failing is split: the one bad entry is dead-lettered, every other
    entry is handled once and acked; a stream created later is picked up without a restart."""
    publisher = Publisher(redis, keys, signer)
    ids = await publisher.publish_many([work(i) for i in range(30)], "test")
    poisoned = ids[7]
    handled: list[str] = []
    batches: list[int] = []

    async def handler(batch: Sequence[Entry]) -> Sequence[Rejected]:
        batches.append(len(batch))
        if any(e.entry_id == poisoned for e in batch):
            raise ValueError("cannot store this one")
        handled.extend(e.entry_id for e in batch)
        return []

    async def streams() -> list[str]:
        return sorted(await known_streams(redis, keys))

    consumer = BatchConsumer(
        redis,
        keys,
        group="batch",
        consumer="batch-0",
        streams=streams,
        handler=handler,
        policy=FAST,
        batch_size=10,
        discover_interval_s=0.1,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await wait_for(lambda: len(handled) == 29, timeout=60)
        later = await publisher.publish_many([work(i) for i in range(5)], "test.later")
        await wait_for(lambda: len(handled) == 34, timeout=60)
        consumer.stop()
    assert sorted(handled) == sorted(i for i in ids + later if i != poisoned)
    assert batches[0] == 10 and 1 in batches  # whole batches first, single entries after the split
    dead = stream_entries(await redis.xrange(keys.dead("test")))
    assert [(f[b"dl_entry_id"].decode(), f[b"dl_reason"]) for _, f in dead] == [(poisoned, b"delivery_cap")]
    assert b"cannot store this one" in dead[0][1][b"dl_detail"]
    for name in ("test", "test.later"):
        assert (await redis.xpending(keys.stream(name), "batch"))["pending"] == 0


async def test_a_publish_asking_for_a_missing_replica_is_written_but_not_acknowledged(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    if is_cluster(redis):
        pytest.skip("a standalone server has no replica to wait for (the cluster's is tested apart)")
    publisher = Publisher(redis, keys, signer, replicas=1, replica_timeout_ms=50)
    with pytest.raises(NotReplicated, match=r"written to .+ but acknowledged by 0 of the 1 replica"):
        await publisher.publish(work(1), "test")
    assert await redis.xlen(keys.stream("test")) == 1, "on its master it is: publishing again may repeat it"
