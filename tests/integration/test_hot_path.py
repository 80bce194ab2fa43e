"""The per-envelope path against the real Redis: emits ride with the ack, the client's
lane and read deadline, and the streams index a publisher keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

import bus.connection
import bus.group
import bus.publisher
from agents import Agent, Context, Runtime, handles
from bus import Keys, Publisher, StreamConsumer, connect
from bus.connection import RedisClient
from bus.index import forget_stream, known_streams
from envelope import PacketEnvelope, Signer, Verifier, decode
from l9.devstack import StackEndpoints
from tests.conftest import FAST, stream_entries, wait_for
from tests.integration.ledger import Pong, Work

pytestmark = pytest.mark.integration
FANNED = "fanned"


class FanOut(Agent):
    """Emits ``n`` + 1 Pongs for Work ``n``; fails its first ``fail_times`` attempts after emitting."""

    name = "fanout"
    consumes = ("test",)

    def __init__(self, runtime: Runtime, hold: anyio.Event | None = None) -> None:
        super().__init__(runtime)
        self.hold = hold
        self.attempts: list[int] = []

    @handles(Work)
    async def on_work(self, ctx: Context[Work]) -> None:
        self.attempts.append(ctx.attempt)
        for i in range(ctx.payload.n + 1):
            await ctx.emit(Pong(text=f"{ctx.payload.n}.{i}", by=str(ctx.attempt)), stream=FANNED)
        if ctx.attempt <= ctx.payload.fail_times:
            raise RuntimeError("fails after emitting")
        if self.hold is not None and ctx.attempt == 1:
            await self.hold.wait()


def fan_out(redis: RedisClient, keys: Keys, verifier: Verifier, agent: FanOut) -> StreamConsumer:
    return StreamConsumer(
        redis, keys, group="fanout", consumer="f-0", streams=["test"], handler=agent.handle,
        verifier=verifier, policy=FAST,
    )  # fmt: skip


def runtime(redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier) -> Runtime:
    return Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent="fanout", instance="f-0")


def work(n: int, fail_times: int = 0) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/p", data=Work(n=n, fail_times=fail_times).model_dump()
    )


async def fanned(redis: RedisClient, keys: Keys, verifier: Verifier) -> list[Pong]:
    rows = stream_entries(await redis.xrange(keys.stream(FANNED)))
    out = []
    for _, fields in rows:
        _, pong = decode(fields, verifier)
        assert isinstance(pong, Pong)
        out.append(pong)
    return out


async def pending(redis: RedisClient, keys: Keys) -> int:
    info: Any = await redis.xpending(keys.stream("test"), "fanout")
    return int(info["pending"])


async def test_a_handlers_emits_go_with_its_ack_in_one_multi_exec_and_a_failed_attempt_publishes_nothing(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    round_trips: list[list[str]] = []
    real = bus.connection.execute_many

    async def recorded(client: RedisClient, commands: Sequence[Sequence[Any]], **kw: Any) -> list[Any]:
        round_trips.append([str(c[0]) for c in commands])
        return await real(client, commands, **kw)

    monkeypatch.setattr(bus.group, "execute_many", recorded)
    agent = FanOut(runtime(redis, keys, signer, verifier))
    publisher = Publisher(redis, keys, signer)
    await publisher.publish_many([work(2), work(1, fail_times=1)], "test")
    async with anyio.create_task_group() as tg:
        consumer = fan_out(redis, keys, verifier, agent)
        tg.start_soon(consumer.run)
        await consumer.wait_started()

        async def drained() -> bool:
            return await pending(redis, keys) == 0 and len(agent.attempts) == 3

        await wait_for(drained, timeout=60)
        consumer.stop()
    pongs = await fanned(redis, keys, verifier)
    # Work 2: three Pongs from attempt 1; Work 1: two Pongs, from attempt 2 only (attempt 1 failed)
    assert sorted((p.text, p.by) for p in pongs) == [
        ("1.0", "2"),
        ("1.1", "2"),
        ("2.0", "1"),
        ("2.1", "1"),
        ("2.2", "1"),
    ]
    assert sorted(agent.attempts) == [1, 1, 2]
    assert await redis.hlen(keys.errors("test")) == 0, "the retried entry's error note went with its ack"
    # each delivery's envelopes and its XACK in one MULTI/EXEC, sent in one round trip
    blocks = []
    for commands in round_trips:
        at = 0
        while "MULTI" in commands[at:]:
            start = commands.index("MULTI", at)
            end = commands.index("EXEC", start)
            blocks.append(commands[start + 1 : end])
            at = end + 1
    # (the first envelopes to a stream bring its streams-index SADD; the entry's envelope id
    # goes into the group's window of handled ids, whose expiry and trim come now and then; a
    # retried entry's error note goes in its transaction)
    maintenance = ("SADD", "PEXPIRE", "ZREMRANGEBYSCORE")
    shapes = sorted([c for c in block if c not in maintenance] for block in blocks)
    assert shapes == [
        ["XADD", "XADD", "XADD", "ZADD", "XACK"],
        ["XADD", "XADD", "ZADD", "XACK", "HDEL"],
    ]


async def test_a_refused_transaction_publishes_nothing_and_the_entry_is_handled_again(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    hold = anyio.Event()
    agent = FanOut(runtime(redis, keys, signer, verifier), hold)
    await Publisher(redis, keys, signer).publish(work(1), "test")
    config: Any = await redis.config_get("maxmemory", "maxmemory-policy")
    try:
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                consumer = fan_out(redis, keys, verifier, agent)
                tg.start_soon(consumer.run)
                await consumer.wait_started()
                await wait_for(lambda: agent.attempts == [1], timeout=60)
                # Redis is out of memory when the handler returns: the XADDs are refused
                await redis.config_set("maxmemory-policy", "noeviction")
                await redis.config_set("maxmemory", "1")
                hold.set()
                await wait_for(lambda: any(e["event"] == "consumer.emit_failed" for e in logs), timeout=60)
                assert await redis.xlen(keys.stream(FANNED)) == 0 and await pending(redis, keys) == 1
                await redis.config_set("maxmemory", config["maxmemory"])

                async def drained() -> bool:
                    return await pending(redis, keys) == 0

                await wait_for(drained, timeout=60)
                consumer.stop()
    finally:
        await redis.config_set("maxmemory", config["maxmemory"])
        await redis.config_set("maxmemory-policy", config["maxmemory-policy"])
    failed = next(e for e in logs if e["event"] == "consumer.emit_failed")
    assert "EXECABORT" in str(failed["error"])
    # handled again (more than once if a retry came before the memory was back): the
    # envelopes are those of the attempt whose transaction went through, once
    last = str(agent.attempts[-1])
    assert agent.attempts == list(range(1, len(agent.attempts) + 1)) and len(agent.attempts) >= 2
    assert sorted((p.text, p.by) for p in await fanned(redis, keys, verifier)) == [
        ("1.0", last),
        ("1.1", last),
    ]


async def test_concurrent_publishes_share_the_lane_and_the_pool_and_a_killed_connection_reconnects(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    publisher = Publisher(redis, keys, signer)
    envelopes = [work(i) for i in range(60)]  # the pool holds 100 connections
    async with anyio.create_task_group() as tg:
        ids: list[str] = []

        async def one(e: PacketEnvelope) -> None:
            ids.append(await publisher.publish(e, "test"))

        for e in envelopes:
            tg.start_soon(one, e)
    rows = stream_entries(await redis.xrange(keys.stream("test")))
    assert sorted(ids) == sorted(r[0].decode() for r in rows) and len(set(ids)) == 60
    assert sorted(r[1][b"id"].decode() for r in rows) == sorted(e.id for e in envelopes)
    # the lane's connection is killed under it: the next publish reconnects and goes through
    await redis.client_kill_filter(_type="normal", skipme=True)
    await publisher.publish(work(1000), "test")
    assert await redis.xlen(keys.stream("test")) == 61


async def test_a_reply_later_than_the_socket_timeout_fails_the_read_and_the_client_recovers(
    stack: StackEndpoints, keys: Keys
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the command arrives; no reply ever does
        await reader.read(1024)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}", socket_timeout=0.3, retry=None)
    try:
        with anyio.fail_after(30):  # a hang, not a speed
            with pytest.raises(RedisTimeoutError, match="Timeout reading from"):
                await client.ping()
    finally:
        await client.aclose()
        server.close()
    # and on a real server a read that waits too long times out, the next command works
    quick = connect(stack.redis_url, socket_timeout=0.3)
    try:
        with pytest.raises(RedisTimeoutError):
            await quick.xread({keys.stream("none"): "$"}, block=2000)
        assert await quick.ping() is True
    finally:
        await quick.aclose()


async def test_a_publisher_lists_a_stream_in_the_index_once_then_again_after_the_refresh(
    redis: RedisClient, keys: Keys, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(redis, keys, signer)
    await publisher.publish(work(1), "test")
    assert await known_streams(redis, keys) == {"test"}
    await forget_stream(redis, keys, "test")  # as retention forgets a dropped stream
    await publisher.publish(work(2), "test")
    assert await known_streams(redis, keys) == set(), "within the refresh the publisher trusts its memory"
    monkeypatch.setattr(bus.publisher, "INDEX_REFRESH_S", 0.0)
    fresh = Publisher(redis, keys, signer)
    await fresh.publish(work(3), "test")
    await fresh.publish(work(4), "other")
    assert await known_streams(redis, keys) == {"test", "other"}
    await forget_stream(redis, keys, "test")
    await forget_stream(redis, keys, "other")
    await fresh.publish_many([work(5), work(6)], "test")
    assert await known_streams(redis, keys) == {"test"}, (
        "a refresh of 0 s lists the stream with every publish"
    )


async def test_a_failed_publish_does_not_count_its_stream_as_indexed(
    redis: RedisClient, keys: Keys, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Publisher(redis, keys, signer)
    real = bus.connection.execute_many
    calls = 0

    async def first_fails(client: RedisClient, commands: Sequence[Sequence[Any]], **kw: Any) -> list[Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("Redis went away")
        return await real(client, commands, **kw)

    monkeypatch.setattr(bus.publisher, "execute_many", first_fails)
    with pytest.raises(ConnectionError):
        await publisher.publish(work(1), "test")
    await publisher.publish(work(1), "test")
    assert await known_streams(redis, keys) == {"test"}
