"""Agents of the testing kit's tests: the kind an author writes, on stream ``kit``."""

from __future__ import annotations

from collections import Counter

from agents import Agent, Context, handles
from bus import RpcClient
from envelope import Payload, payload


@payload("l9.kit.ping.v1")
class Ping(Payload):
    n: int


@payload("l9.kit.pong.v1")
class Pong(Payload):
    n: int
    by: str


@payload("l9.kit.ask.v1")
class Ask(Payload):
    question: str


@payload("l9.kit.answer.v1")
class Answer(Payload):
    question: str
    answer: str


@payload("l9.kit.lookup.v1")
class Lookup(Payload):
    word: str


@payload("l9.kit.found.v1")
class Found(Payload):
    word: str
    meaning: str


#: Handler calls by ping number, across the tests of one process (each test uses its own numbers).
CALLS: Counter[int] = Counter()


class Ponger(Agent):
    """Answers an even ping with a pong, ignores an odd one, fails on 13 (always)."""

    name = "ponger"
    consumes = ("kit",)

    @handles(Ping)
    async def on_ping(self, ctx: Context[Ping]) -> None:
        n = ctx.payload.n
        CALLS[n] += 1
        if n == 13:
            raise ValueError(f"13 is unlucky (attempt {ctx.attempt})")
        if n % 2 == 0:
            await ctx.emit(Pong(n=n, by=self.runtime.instance))


class Asker(Agent):
    """Answers an RPC request by asking the dictionary agent over RPC, as an agent calls a tool."""

    name = "asker"
    consumes = ("kit",)

    @handles(Ask)
    async def on_ask(self, ctx: Context[Ask]) -> None:
        rt = self.runtime
        async with RpcClient(rt.redis, rt.publisher, rt.verifier) as rpc:
            _, found = await rpc.call(
                Lookup(word=ctx.payload.question), source=rt.source, deadline_s=30, stream="kit.dictionary"
            )
        assert isinstance(found, Found)
        await ctx.reply(Answer(question=ctx.payload.question, answer=found.meaning))


class Dictionary(Agent):
    name = "dictionary"
    consumes = ("kit.dictionary",)

    @handles(Lookup)
    async def on_lookup(self, ctx: Context[Lookup]) -> None:
        await ctx.reply(Found(word=ctx.payload.word, meaning=ctx.payload.word[::-1]))
