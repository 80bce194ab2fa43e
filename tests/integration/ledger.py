"""A test agent whose effect is idempotent and countable: the ledger.

Each ``Work`` envelope's effect is recorded once (HSETNX on the envelope id,
plus a counter, in one Lua script); every attempt is counted separately, so a
test can tell redeliveries from effects.
"""

from __future__ import annotations

import anyio

from agents import Agent, Context, handles
from bus import Keys
from envelope import Payload, payload

EFFECT = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('INCR', KEYS[2])
end
return 1
"""


@payload("l9.test.work.v1")
class Work(Payload):
    n: int
    sleep_ms: int = 0
    fail_times: int = 0
    poison: bool = False


@payload("l9.test.ping.v1")
class Ping(Payload):
    text: str
    sleep_ms: int = 0


@payload("l9.test.pong.v1")
class Pong(Payload):
    text: str
    by: str


def effects_key(keys: Keys) -> str:
    return f"{keys.namespace}:{{{keys.namespace}.test}}:effects"


def effects_count_key(keys: Keys) -> str:
    return f"{keys.namespace}:{{{keys.namespace}.test}}:effects:count"


def attempts_key(keys: Keys) -> str:
    return f"{keys.namespace}:{{{keys.namespace}.test}}:attempts"


class LedgerAgent(Agent):
    name = "ledger"
    consumes = ("test",)

    @handles(Work)
    async def on_work(self, ctx: Context[Work]) -> None:
        rt, work = self.runtime, ctx.payload
        attempts = await rt.redis.hincrby(attempts_key(rt.keys), ctx.envelope.id, 1)
        if work.poison:
            raise RuntimeError(f"poison envelope n={work.n}")
        if attempts <= work.fail_times:
            raise RuntimeError(f"planned failure {attempts} of {work.fail_times}")
        if work.sleep_ms:
            await anyio.sleep(work.sleep_ms / 1000)
        await rt.redis.eval(
            EFFECT, 2, effects_key(rt.keys), effects_count_key(rt.keys), ctx.envelope.id, rt.instance
        )

    @handles(Ping)
    async def on_ping(self, ctx: Context[Ping]) -> None:
        if ctx.payload.sleep_ms:
            await anyio.sleep(ctx.payload.sleep_ms / 1000)
        await ctx.reply(Pong(text=ctx.payload.text, by=self.runtime.instance))
