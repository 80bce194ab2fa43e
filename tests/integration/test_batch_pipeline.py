"""The batch delivery loop with a two-step (``Staged``) handler, against the real Redis:
the next batch is prepared while one commits, commits and acks keep the read order, an
entry is acked only after its batch committed, and a failing ``prepare`` is retried
(transient) or isolated and dead-lettered (poisoned) as a failing handler is."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import cast

import anyio
import pytest

from bus import BatchConsumer, Entry, Keys, Publisher, Rejected, Staged
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer
from tests.conftest import FAST, stream_entries, wait_for

pytestmark = pytest.mark.integration


class StoreAway(ConnectionError):
    """Stands for a store that is briefly unreachable (transient)."""


def work(i: int) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/0", data={"n": i}, correlation_id="r"
    )


async def pending_ids(redis: RedisClient, keys: Keys, group: str) -> set[str]:
    rows = await redis.xpending_range(keys.stream("test"), group, min="-", max="+", count=1000)
    return {cast(bytes, r["message_id"]).decode() for r in rows}


def consumer_of(
    redis: RedisClient, keys: Keys, group: str, handler: Staged[list[str]], batch_size: int = 10
) -> BatchConsumer:
    async def streams() -> list[str]:
        return ["test"]

    return BatchConsumer(
        redis,
        keys,
        group=group,
        consumer=f"{group}-0",
        streams=streams,
        handler=handler,
        policy=FAST,
        batch_size=batch_size,
        discover_interval_s=0.1,
        is_transient=lambda exc: isinstance(exc, StoreAway),
    )


async def test_the_next_batch_is_prepared_while_one_commits_and_commits_keep_the_read_order(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    ids = await Publisher(redis, keys, signer).publish_many([work(i) for i in range(40)], "test")
    events: list[tuple[str, str]] = []
    committed: list[str] = []
    unacked_at_commit: list[bool] = []

    async def prepare(batch: Sequence[Entry]) -> list[str]:
        events.append(("prepared", batch[0].entry_id))
        return [e.entry_id for e in batch]

    async def commit(batch: Sequence[Entry], prepared: list[str]) -> Sequence[Rejected]:
        assert prepared == [e.entry_id for e in batch]
        unacked_at_commit.append(set(prepared) <= await pending_ids(redis, keys, "staged"))
        events.append(("commit", batch[0].entry_id))
        await anyio.sleep(0.2)  # the store's COPY and COMMIT
        committed.extend(prepared)
        events.append(("committed", batch[0].entry_id))
        return []

    consumer = consumer_of(redis, keys, "staged", Staged(prepare, commit))
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await wait_for(lambda: len(committed) == 40, timeout=60)
        consumer.stop()
    assert committed == ids  # each batch once, in read order
    assert all(unacked_at_commit)  # nothing acked before its batch committed
    assert await pending_ids(redis, keys, "staged") == set()
    firsts = [ids[i] for i in range(0, 40, 10)]
    for this, following in itertools.pairwise(firsts):
        done = events.index(("committed", this))
        assert events.index(("prepared", following)) < done  # prepared while this one committed
        assert done < events.index(("commit", following))  # one commit at a time, in order


async def test_a_prepare_failing_transiently_is_retried_and_nothing_is_lost_or_acked_early(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    ids = await Publisher(redis, keys, signer).publish_many([work(i) for i in range(30)], "test")
    failures = {"left": 3}
    committed: list[str] = []
    unacked_at_commit: list[bool] = []

    async def prepare(batch: Sequence[Entry]) -> list[str]:
        if batch[0].entry_id == ids[10] and failures["left"]:
            failures["left"] -= 1
            raise StoreAway("the store is away")
        return [e.entry_id for e in batch]

    async def commit(batch: Sequence[Entry], prepared: list[str]) -> Sequence[Rejected]:
        unacked_at_commit.append(set(prepared) <= await pending_ids(redis, keys, "retry"))
        committed.extend(prepared)
        return []

    consumer = consumer_of(redis, keys, "retry", Staged(prepare, commit))
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await wait_for(lambda: len(committed) == 30, timeout=60)
        consumer.stop()
    assert failures["left"] == 0
    assert committed == ids  # the failing batch was retried in its place, before the next one
    assert all(unacked_at_commit)
    assert await redis.xlen(keys.dead("test")) == 0
    assert await pending_ids(redis, keys, "retry") == set()


async def test_a_prepare_that_keeps_failing_on_one_entry_dead_letters_only_that_entry(
    redis: RedisClient, keys: Keys, signer: Signer
) -> None:
    ids = await Publisher(redis, keys, signer).publish_many([work(i) for i in range(20)], "test")
    poisoned = ids[13]
    committed: list[str] = []

    async def prepare(batch: Sequence[Entry]) -> list[str]:
        if any(e.entry_id == poisoned for e in batch):
            raise ValueError("cannot decode this one")
        return [e.entry_id for e in batch]

    async def commit(batch: Sequence[Entry], prepared: list[str]) -> Sequence[Rejected]:
        committed.extend(prepared)
        return []

    consumer = consumer_of(redis, keys, "poison", Staged(prepare, commit))
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await wait_for(lambda: len(committed) == 19, timeout=120)
        await wait_for(lambda: redis.xlen(keys.dead("test")), timeout=60)
        consumer.stop()
    assert committed == [i for i in ids if i != poisoned]
    dead = stream_entries(await redis.xrange(keys.dead("test")))
    assert [(f[b"dl_entry_id"].decode(), f[b"dl_reason"]) for _, f in dead] == [(poisoned, b"delivery_cap")]
    assert b"cannot decode this one" in dead[0][1][b"dl_detail"]
    assert await pending_ids(redis, keys, "poison") == set()
