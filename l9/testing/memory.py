"""The in-memory mode: the agents' handlers, with no server, for handler logic.

    async with run_in_memory(AreaAgent, FakeSymPy) as h:
        envelope, result = await h.call(AreaRequest(expr="x**2", lower="0", upper="3"), AreaResult)

The same :class:`~l9.testing.harness.AgentHarness` as on the real stack (publish, call,
expect), over an in-process fake Redis (``fakeredis``): envelopes are signed, encoded,
appended to streams, decoded, verified and validated by the real code, and a handler
emits, replies, calls another agent over RPC and keeps its own keys as it would.

What it does not have, and must not be trusted for:

* no consumer group and no pending list: each agent reads its streams with plain XREAD
  from the start, so there is no acknowledgement, no reclaim from a dead consumer, no
  lease, no delivery count (``ctx.attempt`` is always 1);
* no retry, no backoff, no delivery cap, no dead letters: a handler that raises is
  reported to the test at its next ``expect`` or ``call`` (:class:`HandlerFailed`, the
  handler's exception as its cause), and the agent goes on with the next envelope; an
  envelope a check refuses (bad signature, unknown type, data failing its model) too;
* no window of handled ids: an envelope published twice is handled twice;
* no concurrency within an agent: one envelope at a time, in stream order (each agent
  has its own loop, so one agent can wait on another's RPC reply);
* no signer table, no rate limits, no graceful drain; what ``ctx.with_ack`` queues and what
  ``ctx.emit`` holds back runs right after the handler returns, without a transaction.

Whatever depends on those runs on the real stack (:func:`l9.testing.harness.run_agents`).
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import structlog

from agents.base import Agent
from bus import DeadLetter as Refused
from bus import Keys, as_text
from bus.connection import RedisClient
from bus.consumer import UNDECODED, UNTYPED, Delivery
from bus.middleware import compose, decode, load_payload, log_context, verify
from l9.settings import Settings
from l9.start import AgentEndpoints, build_agent

from .harness import AgentHarness, AgentSpec, Build, resolve_agents, runtime_of

log = structlog.get_logger("l9.testing.memory")
#: How long one XREAD of an agent's loop blocks (the loop is cancelled when the block ends).
BLOCK_MS = 200


def memory_settings(namespace: str = "memory") -> Settings:
    """Settings for the memory mode: a namespace, a fresh HMAC key ``dev`` (the default
    policy's shared development key), a home under the temporary folder (made only if an
    agent writes there); no server is used."""
    home = Path(tempfile.gettempdir()) / "l9-memory"
    return Settings(
        namespace=namespace,
        signing_scheme="hmac",
        signing_keys={"dev": secrets.token_hex(32)},
        signing_key_id="dev",
        home=home,
    )


def fake_redis() -> RedisClient:
    """An in-process fake Redis (``fakeredis``, a development dependency of L9)."""
    try:
        import fakeredis
    except ImportError:
        raise RuntimeError("the memory mode needs fakeredis: pip install fakeredis (or l9[dev])") from None
    client: RedisClient = fakeredis.FakeAsyncRedis()
    return client


@asynccontextmanager
async def run_in_memory(
    *agents: AgentSpec, settings: Settings | None = None, build: Build | None = None
) -> AsyncIterator[AgentHarness]:
    """Run ``agents``' handlers in this process over a fake Redis until the block ends (see the
    module doc for what this mode lacks). An exception of the block is raised as it is."""
    classes = resolve_agents(agents)
    settings = settings or memory_settings()
    redis, keys = fake_redis(), Keys(settings.namespace)
    consumed = tuple(dict.fromkeys(s for cls in classes for s in cls.consumes))
    harness = AgentHarness(redis, keys, settings.signer(), settings.verifier(), consumed)
    endpoints = AgentEndpoints(settings.redis_url or "", settings.database_url)
    made = build or (lambda cls, rt: build_agent(cls, rt, settings, endpoints))
    started: list[Agent] = []
    failure: Exception | None = None
    try:
        for cls in classes:
            agent = made(cls, runtime_of(cls, redis, keys, settings, f"{cls.name}-memory"))
            await agent.on_start()
            started.append(agent)
        async with anyio.create_task_group() as tg:
            for agent in started:
                tg.start_soon(_dispatch, agent, harness)
            try:
                yield harness
            except Exception as exc:  # the test's own failure: raised as it is
                failure = exc
            finally:
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            for agent in started:
                await agent.on_stop()
            await redis.aclose()
    if failure is not None:
        raise failure


async def _dispatch(agent: Agent, harness: AgentHarness) -> None:
    """The agent's loop: every entry of its streams, in order, through the checks and its handler."""
    rt = agent.runtime
    bound = log.bind(agent=agent.name)
    chain = compose([decode, verify(rt.verifier), load_payload(rt.types), log_context(bound)], agent.handle)
    names = {rt.keys.stream(s): s for s in agent.consumes}
    last: dict[Any, Any] = dict.fromkeys(names, "0-0")
    while True:
        reply: Any = await rt.redis.xread(last, block=BLOCK_MS)
        for key, entries in reply or ():
            stream = names[as_text(key)]
            for entry_id, fields in entries:
                last[as_text(key)] = entry_id
                d = Delivery(stream, as_text(entry_id), UNDECODED, UNTYPED, 1, fields)
                await _deliver(agent, harness, chain, d)
        await anyio.lowlevel.checkpoint()


async def _deliver(agent: Agent, harness: AgentHarness, chain: Any, d: Delivery) -> None:
    """One entry through the checks and the handler; what it holds back for the acknowledgement
    is sent after, a failure is handed to the test."""
    try:
        await chain(d)
    except Refused as exc:
        harness.failed(f"{agent.name} refused entry {d.entry_id} on {d.stream}: {exc}", exc)
        return
    except Exception as exc:
        what = f"{d.envelope.type} {d.envelope.id} on {d.stream}"
        harness.failed(f"the handler of {agent.name} failed on {what}: {exc!r}", exc)
        return
    for command in (*d.after, *d.emits):
        await agent.runtime.redis.execute_command(*command)
