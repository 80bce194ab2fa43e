"""A batch entry that kills its consumer process on every delivery, against the real Redis.

The batch loop's try count is the pending list's delivery count, so it outlives the
process: a real OS process (``tests.integration.batch_crasher``) SIGKILLs itself whenever
its handler is handed the poisoned entry, and is started again each time, as a supervisor
would. After ``L9_MAX_DELIVERIES`` deliveries the entry is in the dead-letter stream, the
other entries of its batch are committed exactly once, and the consumer moves on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import anyio
import pytest

from bus import Keys, as_text
from bus.connection import RedisClient
from tests.conftest import ROOT, stream_entries, wait_for
from tests.integration.batch_crasher import GROUP, committed_key, tries_key

pytestmark = pytest.mark.integration
MAX_DELIVERIES = 3


class Crasher:
    """One life of the crasher process, its output in ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.batch_crasher"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.log_path.read_text().splitlines()
        return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e.get("event") == name]


@pytest.fixture
def crashers() -> Iterator[list[Crasher]]:
    lives: list[Crasher] = []
    yield lives
    for life in lives:
        if life.proc.poll() is None:
            life.proc.kill()
            life.proc.wait(10)


async def test_an_entry_that_kills_the_process_on_every_delivery_is_dead_lettered_at_the_cap(
    redis: RedisClient, keys: Keys, agent_env: dict[str, str], tmp_path: Path, crashers: list[Crasher]
) -> None:
    env = {**agent_env, "L9_MAX_DELIVERIES": str(MAX_DELIVERIES)}

    def start() -> Crasher:
        crashers.append(Crasher(env, tmp_path / f"crasher-{len(crashers)}.log"))
        return crashers[-1]

    stream = keys.stream("test")
    ids = [
        as_text(await redis.xadd(stream, {"n": str(i), **({"poison": "1"} if i == 4 else {})}))
        for i in range(10)
    ]
    poison, innocent = ids[4], [i for i in ids if i != ids[4]]

    for _ in range(MAX_DELIVERIES):  # each life ends when the poisoned entry is handed over
        life = start()
        code = await anyio.to_thread.run_sync(life.proc.wait, 120)
        assert code == -9, f"crasher exited {code}, see {life.log_path}"
    # handed over with its whole batch twice; the third time alone (tried through two crashes)
    poisoned = [life.events("crasher.poisoned") for life in crashers]
    assert [[e["entries"] for e in p] for p in poisoned] == [[10], [10], [1]]
    assert [p[0]["attempts"] for p in poisoned] == [[1] * 10, [2] * 10, [3]]

    survivor = start()
    await wait_for(lambda: redis.xlen(keys.dead("test")), timeout=120)
    await wait_for(lambda: _committed(redis, keys, innocent), timeout=120)
    later = [as_text(await redis.xadd(stream, {"n": str(i)})) for i in range(10, 15)]
    await wait_for(lambda: _committed(redis, keys, later), timeout=120)
    await wait_for(lambda: _nothing_pending(redis, keys), timeout=60)
    survivor.proc.terminate()
    assert await anyio.to_thread.run_sync(survivor.proc.wait, 60) == 0

    dead = stream_entries(await redis.xrange(keys.dead("test")))
    assert [(f[b"dl_entry_id"].decode(), f[b"dl_reason"]) for _, f in dead] == [(poison, b"delivery_cap")]
    assert dead[0][1][b"dl_deliveries"] == str(MAX_DELIVERIES).encode()
    assert dead[0][1][b"n"] == b"4"  # the entry itself, as it was
    counts = cast(dict[bytes, bytes], await redis.hgetall(committed_key(keys)))
    assert {k.decode(): int(v) for k, v in counts.items()} == dict.fromkeys(innocent + later, 1)
    assert int(cast(bytes, await redis.hget(tries_key(keys), poison))) == MAX_DELIVERIES


async def _committed(redis: RedisClient, keys: Keys, ids: list[str]) -> bool:
    return all(await redis.hmget(committed_key(keys), ids))


async def _nothing_pending(redis: RedisClient, keys: Keys) -> bool:
    return int((await redis.xpending(keys.stream("test"), GROUP))["pending"]) == 0
