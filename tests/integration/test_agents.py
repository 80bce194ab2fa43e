"""Agent processes on the real Redis: exchange, kill -9, poison, FLUSHALL, SIGTERM."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import pytest
from redis.exceptions import ResponseError

from agents.demo import Task, results_key
from bus import Keys, Publisher
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, encode
from tests.conftest import AgentProcess, stream_entries, wait_for
from tests.integration.ledger import Work, attempts_key, effects_count_key, effects_key

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster


def work(n: int, **kw: object) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/publisher", data=Work(n=n, **kw).model_dump()
    )


async def effects(redis: RedisClient, keys: Keys) -> int:
    return int(await redis.get(effects_count_key(keys)) or 0)


async def pending(redis: RedisClient, keys: Keys, stream: str, group: str) -> int:
    return int((await redis.xpending(keys.stream(stream), group))["pending"])


async def alive(redis: RedisClient, keys: Keys, consumer: str) -> bool:
    return bool(await redis.exists(keys.heartbeat(consumer)))


async def test_two_agent_processes_exchange_envelopes(
    redis: RedisClient, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    squarer, summer = spawn("squarer"), spawn("summer")
    run = "run-exchange"
    tasks = [
        PacketEnvelope.new(
            type="l9.demo.task.v1", source="agent://test/cli", correlation_id=run, data=Task(n=i).model_dump()
        )
        for i in range(1, 201)
    ]
    await Publisher(redis, keys, signer).publish_many(tasks)
    await wait_for(lambda: _hlen(redis, results_key(keys, run), 200))
    squares = [int(v) for v in await redis.hvals(results_key(keys, run))]
    assert sum(squares) == sum(i * i for i in range(1, 201))
    # every result names its cause, and results travelled on their own stream
    entries = stream_entries(await redis.xrange(keys.stream("demo.results")))
    assert len(entries) == 200
    assert {e[1][b"correlation_id"] for e in entries} == {run.encode()}
    assert squarer.terminate() == 0 and summer.terminate() == 0


async def _hlen(redis: RedisClient, key: str, n: int) -> bool:
    return int(await redis.hlen(key)) >= n


async def test_kill9_mid_batch_pending_reclaimed_effects_once(
    redis: RedisClient, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    small = {"L9_BATCH_SIZE": "16", "L9_CONCURRENCY": "4"}
    a = spawn("tests.integration.ledger:LedgerAgent", "--instance", "a", env=small)
    b = spawn("tests.integration.ledger:LedgerAgent", "--instance", "b", env=small)
    await wait_for(lambda: alive(redis, keys, "ledger-a"))
    await wait_for(lambda: alive(redis, keys, "ledger-b"))
    n = 400
    await Publisher(redis, keys, signer).publish_many([work(i, sleep_ms=15) for i in range(n)])

    async def a_holds_work() -> bool:
        try:
            rows = await redis.xpending_range(keys.stream("test"), "ledger", "-", "+", 100, "ledger-a")
        except ResponseError as exc:  # heartbeats start before the group is made (from entry 0)
            if "NOGROUP" in str(exc):
                return False
            raise
        return len(rows) >= 4 and await effects(redis, keys) >= 40

    await wait_for(a_holds_work)
    held = [
        cast(bytes, r["message_id"])
        for r in await redis.xpending_range(keys.stream("test"), "ledger", "-", "+", 100, "ledger-a")
    ]
    a.kill9()
    assert held, "the killed consumer held no pending entries"

    # a's entries come back once their lease lapses (L9_LEASE_MS): the deadlines only catch a hang
    await wait_for(lambda: _effects_at_least(redis, keys, n), timeout=240)
    await wait_for(lambda: _no_pending(redis, keys), timeout=240)
    assert await effects(redis, keys) == n
    assert int(await redis.hlen(effects_key(keys))) == n
    # what a held when it died was done by b, and no entry is left pending
    owners = await redis.hmget(
        effects_key(keys), [_envelope_id(e) for e in await _entries(redis, keys, held)]
    )
    assert all(o is not None for o in owners), "an entry held by the killed consumer had no effect"
    attempts = await redis.hvals(attempts_key(keys))
    assert sum(int(x) for x in attempts) >= n
    assert any(e.get("event") == "consumer.reclaimed" for e in b.log_events())
    assert b.terminate() == 0


async def _effects_at_least(redis: RedisClient, keys: Keys, n: int) -> bool:
    return await effects(redis, keys) >= n


async def _no_pending(redis: RedisClient, keys: Keys) -> bool:
    return await pending(redis, keys, "test", "ledger") == 0


async def _entries(redis: RedisClient, keys: Keys, ids: list[bytes]) -> list[dict[bytes, bytes]]:
    out = []
    for entry_id in ids:
        rows = stream_entries(await redis.xrange(keys.stream("test"), entry_id, entry_id))
        out.append(rows[0][1])
    return out


def _envelope_id(fields: dict[bytes, bytes]) -> bytes:
    return fields[b"id"]


async def test_poison_and_garbage_are_dead_lettered_and_the_group_moves_on(
    redis: RedisClient, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    proc = spawn("tests.integration.ledger:LedgerAgent", env={"L9_MAX_DELIVERIES": "3"})
    publisher = Publisher(redis, keys, signer)
    await publisher.publish_many([work(i) for i in range(5)])
    poison = work(100, poison=True)
    await publisher.publish(poison)
    stream = keys.stream("test")
    await redis.xadd(stream, {"id": "junk", "env": b"\xc1\x00not msgpack"})
    unknown = PacketEnvelope.new(type="l9.test.nobody_knows.v1", source="agent://test/x", data={})
    await redis.xadd(stream, encode(unknown, signer))  # type: ignore[arg-type]
    forged = encode(work(101), Signer({"dev": b"wrong secret"}, "dev"))
    await redis.xadd(stream, forged)  # type: ignore[arg-type]
    await publisher.publish_many([work(i) for i in range(5, 10)])

    await wait_for(lambda: _effects_at_least(redis, keys, 10))
    await wait_for(lambda: _dead_count(redis, keys, 4))
    await wait_for(lambda: _no_pending(redis, keys))
    dead = {f[b"dl_reason"].decode(): f for _, f in stream_entries(await redis.xrange(keys.dead("test")))}
    assert set(dead) == {"delivery_cap", "undecodable", "unknown_type", "bad_signature"}
    assert b"poison envelope n=100" in dead["delivery_cap"][b"dl_detail"]
    assert dead["delivery_cap"][b"dl_deliveries"] == b"3"
    assert dead["delivery_cap"][b"id"] == poison.id.encode()
    assert b"not msgpack" in dead["undecodable"][b"dl_detail"]
    assert b"l9.test.nobody_knows.v1" in dead["unknown_type"][b"dl_detail"]
    assert b"signature does not match" in dead["bad_signature"][b"dl_detail"]
    assert int(cast(bytes, await redis.hget(attempts_key(keys), poison.id))) == 3
    assert await effects(redis, keys) == 10
    # every log line about the poison envelope carries the bound context
    failures = [e for e in proc.log_events() if e.get("event") == "consumer.handler_failed"]
    assert len(failures) == 3
    for line in failures:
        assert line["envelope_id"] == poison.id and line["correlation_id"] == poison.correlation_id
        assert line["agent"] == "ledger" and line["consumer"] == "ledger-0"
        assert line["type"] == "l9.test.work.v1" and "poison envelope" in str(line["error"])
    assert proc.terminate() == 0


async def _dead_count(redis: RedisClient, keys: Keys, n: int) -> bool:
    return int(await redis.xlen(keys.dead("test"))) >= n


async def test_flushall_during_consumption_is_survived_without_a_hot_loop(
    redis: RedisClient, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    proc = spawn("tests.integration.ledger:LedgerAgent")
    publisher = Publisher(redis, keys, signer)
    await publisher.publish_many([work(i, sleep_ms=5) for i in range(200)])
    await wait_for(lambda: _effects_at_least(redis, keys, 20))
    errors_before = await _error_replies(redis)
    await redis.flushall()
    await wait_for(lambda: alive(redis, keys, "ledger-0"))  # heartbeat restored
    await wait_for(lambda: _group_exists(redis, keys))
    await publisher.publish_many([work(i) for i in range(1000, 1050)])
    await wait_for(lambda: _effects_at_least(redis, keys, 50))
    # no hot loop, counted rather than timed: a consumer spinning on the lost group would have
    # drawn an error reply (NOGROUP) and a log line per turn, thousands while the test waited
    nogroup = (await _error_replies(redis)).get("NOGROUP", 0) - errors_before.get("NOGROUP", 0)
    assert nogroup <= 10, nogroup
    missing = [e for e in proc.log_events() if e.get("event") == "consumer.group_missing"]
    assert 1 <= len(missing) <= 10
    assert proc.terminate() == 0


async def _error_replies(redis: RedisClient) -> dict[str, int]:
    """The server's error replies so far, by error prefix (``INFO errorstats``; FLUSHALL keeps them)."""
    stats = await redis.info("errorstats")
    return {name.removeprefix("errorstat_"): int(value["count"]) for name, value in stats.items()}


async def _group_exists(redis: RedisClient, keys: Keys) -> bool:
    try:
        return any(g["name"] == b"ledger" for g in await redis.xinfo_groups(keys.stream("test")))
    except Exception:
        return False


async def test_sigterm_drains_in_flight_work(
    redis: RedisClient, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    proc = spawn(
        "tests.integration.ledger:LedgerAgent",
        "--instance",
        "d",
        env={"L9_CONCURRENCY": "4", "L9_BATCH_SIZE": "4"},
    )
    await wait_for(lambda: alive(redis, keys, "ledger-d"))
    await Publisher(redis, keys, signer).publish_many([work(i, sleep_ms=800) for i in range(4)])
    await wait_for(lambda: _attempts_at_least(redis, keys, 4))
    assert await effects(redis, keys) == 0  # all four are mid-handler
    assert proc.terminate(timeout=60) == 0
    assert await effects(redis, keys) == 4
    assert await pending(redis, keys, "test", "ledger") == 0
    assert not await alive(redis, keys, "ledger-d")  # released at once for others
    events = [e.get("event") for e in proc.log_events()]
    assert "agent.draining" in events and "agent.stopped" in events


async def test_sigterm_past_drain_timeout_leaves_work_pending_for_next_owner(
    redis: RedisClient, keys: Keys, signer: Signer, spawn: Callable[..., AgentProcess]
) -> None:
    env = {"L9_CONCURRENCY": "2", "L9_BATCH_SIZE": "2", "L9_DRAIN_TIMEOUT_S": "0.5"}
    first = spawn("tests.integration.ledger:LedgerAgent", "--instance", "x", env=env)
    await wait_for(lambda: alive(redis, keys, "ledger-x"))
    await Publisher(redis, keys, signer).publish_many([work(i, sleep_ms=4000) for i in range(2)])
    await wait_for(lambda: _attempts_at_least(redis, keys, 2))
    assert first.terminate(timeout=60) == 0  # a clean exit, before the 4 s handlers could finish:
    assert await effects(redis, keys) == 0  # the drain gave up at its timeout rather than wait
    assert await pending(redis, keys, "test", "ledger") == 2
    successor = spawn("tests.integration.ledger:LedgerAgent", "--instance", "x", env=env)
    await wait_for(lambda: _effects_at_least(redis, keys, 2), timeout=120)
    await wait_for(lambda: _no_pending(redis, keys))
    assert successor.terminate() == 0


async def _attempts_at_least(redis: RedisClient, keys: Keys, n: int) -> bool:
    return sum(int(v) for v in await redis.hvals(attempts_key(keys))) >= n
