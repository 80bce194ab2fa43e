"""The demo pair: ``squarer`` turns tasks into results, ``summer`` collects them.

Both handlers are idempotent, as at-least-once delivery requires: the summer
stores each result under the id of the task that caused it (HSET of the same
field and value twice is one effect).
"""

from __future__ import annotations

from bus import Keys
from envelope import Payload, payload

from .base import Agent, Context, handles


@payload("l9.demo.task.v1")
class Task(Payload):
    n: int


@payload("l9.demo.result.v1")
class Result(Payload):
    n: int
    square: int


def results_key(keys: Keys, run: str) -> str:
    """Hash of task id -> square for one demo run."""
    return f"{keys.namespace}:demo:{run}:results"


def handled_key(keys: Keys, run: str) -> str:
    """Hash of consumer name -> tasks it handled (a statistic, not an effect)."""
    return f"{keys.namespace}:demo:{run}:handled"


class SquarerAgent(Agent):
    name = "squarer"
    consumes = ("demo.tasks",)

    @handles(Task)
    async def on_task(self, ctx: Context[Task]) -> None:
        n = ctx.payload.n
        await ctx.emit(Result(n=n, square=n * n))
        rt = self.runtime
        await rt.redis.hincrby(handled_key(rt.keys, ctx.envelope.correlation_id), rt.instance, 1)


class SummerAgent(Agent):
    name = "summer"
    consumes = ("demo.results",)

    @handles(Result)
    async def on_result(self, ctx: Context[Result]) -> None:
        run = ctx.envelope.correlation_id
        task_id = ctx.envelope.causation_id or ctx.envelope.id
        await self.runtime.redis.hset(results_key(self.runtime.keys, run), task_id, ctx.payload.square)
