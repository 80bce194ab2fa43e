"""``l9 dead list|replay``: a dead letter goes back on its stream and is handled once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from bus import Keys, Publisher, as_text
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer
from l9.dead import replay
from tests.conftest import AgentProcess, run_l9, wait_for
from tests.integration.ledger import Work, attempts_key, effects_count_key

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster


def work(n: int, fail_times: int = 0) -> PacketEnvelope:
    data = Work(n=n, fail_times=fail_times).model_dump()
    return PacketEnvelope.new(type="l9.test.work.v1", source="agent://test/p", data=data)


async def test_a_dead_letter_is_listed_then_replayed_and_handled_once(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    agent_env: dict[str, str],
) -> None:
    spawn("tests.integration.ledger:LedgerAgent", env={"L9_MAX_DELIVERIES": "2"})
    flaky, fine = work(1, fail_times=2), work(2)
    await Publisher(redis, keys, signer).publish_many([flaky, fine])
    await wait_for(lambda: redis.xlen(keys.dead("test")))
    await wait_for(lambda: redis.get(effects_count_key(keys)))

    listed = run_l9("dead", "list", "--json", env=agent_env)
    assert listed.returncode == 0, listed.stderr
    (letter,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (letter["stream"], letter["envelope_id"], letter["type"]) == ("test", flaky.id, "l9.test.work.v1")
    assert (letter["reason"], letter["group"], letter["deliveries"]) == ("delivery_cap", "ledger", 2)
    assert "planned failure 2 of 2" in letter["detail"]

    replayed = run_l9("dead", "replay", "test", letter["id"], env=agent_env)
    assert replayed.returncode == 0, replayed.stderr
    assert "1 dead letter(s) replayed on test" in replayed.stdout

    async def handled() -> bool:
        return await redis.get(effects_count_key(keys)) == b"2"

    await wait_for(handled)
    assert await redis.xlen(keys.dead("test")) == 0
    assert await redis.hget(attempts_key(keys), flaky.id) == b"3"  # the same envelope, a third attempt
    again = run_l9("dead", "replay", "test", letter["id"], env=agent_env)
    assert again.returncode == 1 and f"no dead letter {letter['id']} on stream 'test'" in again.stderr
    assert run_l9("dead", "list", env=agent_env).stdout.strip() == "no dead letters"


async def test_two_replays_at_once_put_a_letter_back_once(redis: RedisClient, keys: Keys) -> None:
    dead = await redis.xadd(keys.dead("test"), {"id": "e1", "type": "l9.test.work.v1", "dl_reason": "x"})
    results: list[dict[str, str]] = []

    async def one() -> None:
        results.append(await replay(redis, keys, "test"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
    assert sorted(len(r) for r in results) == [0, 1], "exactly one of the two replayed it"
    entries: Any = await redis.xrange(keys.stream("test"))
    assert [fields for _, fields in entries] == [{b"id": b"e1", b"type": b"l9.test.work.v1"}]  # no dl_*
    assert as_text(dead) in next(r for r in results if r)


def test_replay_needs_ids_or_all(agent_env: dict[str, str]) -> None:
    done = run_l9("dead", "replay", "test", env=agent_env)
    assert done.returncode == 2 and "name the dead-letter ids to replay, or --all" in done.stderr
