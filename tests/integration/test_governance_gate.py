"""The policy file's rate limits enforced where their types are consumed (real Redis): the SymPy
worker answers a request over ``sympy-requests-per-agent@1`` at once with a typed error, other
agents keep their own budget, every consumer and process shares the count, a redelivered
request counts once, and an event over a limit is acknowledged unhandled."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agents.demo import SquarerAgent
from agents.sympy import SymPyTool
from bus import Delivery, Keys, Publisher, RemoteError, RpcClient, open_client
from bus.connection import RedisClient
from envelope import PacketEnvelope, Payload, Signer, Verifier, decode
from governance import RATE_LIMITED, RateLimitGate, RateLimitSpec
from l9.devstack import StackEndpoints
from tests.conftest import AgentProcess, stream_entries, wait_for
from tests.integration.gated import policy_file, runtime, serving, sympy_limit, sympy_worker

pytestmark = [pytest.mark.integration, pytest.mark.cluster]  # also on the local cluster
RETRY = "rate limited by sympy-requests-per-agent@1 (2 per 60 s per agent '{agent}'), retry after "


@asynccontextmanager
async def caller(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, agent: str
) -> AsyncIterator[SymPyTool]:
    """A SymPyTool of agent ``agent`` (its RpcClient's task group lives in the test's own task)."""
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        yield SymPyTool(rpc, source=f"agent://{agent}/{agent}-0", deadline_s=60)


async def expand_each(tool: SymPyTool, texts: list[str]) -> list[str | RemoteError]:
    """Each request in turn: its result, or the error it was answered with."""
    out: list[str | RemoteError] = []
    for text in texts:
        try:
            out.append((await tool.expand(text)).expr)
        except RemoteError as exc:
            out.append(exc)
    return out


def refusals(outcomes: list[str | RemoteError], agent: str) -> list[RemoteError]:
    refused = [o for o in outcomes if isinstance(o, RemoteError)]
    for exc in refused:
        assert exc.error == RATE_LIMITED and exc.detail.startswith(RETRY.format(agent=agent)), exc
        assert exc.detail.endswith(" s") and 0 < int(exc.detail.split()[-2]) <= 60
    return refused


async def pending_entries(redis: RedisClient, keys: Keys, stream: str, group: str) -> int:
    return int((await redis.xpending(keys.stream(stream), group))["pending"])


async def served_events(redis: RedisClient, keys: Keys, verifier: Verifier) -> list[PacketEnvelope]:
    """The SymPy worker's per-operation events: one per request it handled."""
    entries = stream_entries(await redis.xrange(keys.stream("sympy.events")))
    return [decode(fields, verifier)[0] for _, fields in entries]


async def test_over_its_limit_an_agent_is_answered_rate_limited_at_once_and_others_are_served(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, tmp_path: Path
) -> None:
    policy = policy_file(tmp_path, rate_limits=[sympy_limit(2)])
    async with sympy_worker(redis, keys, signer, verifier, policy):
        async with caller(redis, keys, signer, verifier, "alpha") as alpha:
            outcomes = await expand_each(alpha, [f"x + {i}" for i in range(1, 6)])
        async with caller(redis, keys, signer, verifier, "beta") as beta:
            other = await expand_each(beta, ["y + 1", "y + 2"])
        await wait_for(lambda: _count(served_events(redis, keys, verifier), 4))
        await wait_for(lambda: _none_pending(redis, keys))  # the refused requests are acked too
    assert outcomes[:2] == ["x + 1", "x + 2"]
    assert len(refusals(outcomes, "alpha")) == 3, outcomes
    assert other == ["y + 1", "y + 2"], "another agent has its own budget"
    # the refused requests never reached the handler: one event per served request, none for them
    assert sorted(e.data["requester"] for e in await served_events(redis, keys, verifier)) == [
        "agent://alpha/alpha-0", "agent://alpha/alpha-0", "agent://beta/beta-0", "agent://beta/beta-0",
    ]  # fmt: skip


async def _count(found: Any, n: int) -> bool:
    return len(await found) >= n


async def _none_pending(redis: RedisClient, keys: Keys) -> bool:
    return await pending_entries(redis, keys, "sympy", "sympy") == 0


async def _stream_has(redis: RedisClient, key: str) -> bool:
    return int(await redis.xlen(key)) > 0


async def test_every_consumer_of_the_worker_shares_the_count(
    stack: StackEndpoints, redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, tmp_path: Path
) -> None:
    """Two workers, each with its own connection, gate and agent (nothing shared but Redis): the
    first serves two of alpha's requests, the second refuses the next three."""
    policy = policy_file(tmp_path, rate_limits=[sympy_limit(2)])
    async with (
        sympy_worker(redis, keys, signer, verifier, policy, "sympy-0"),
        caller(redis, keys, signer, verifier, "alpha") as alpha,
    ):
        first = await expand_each(alpha, ["x + 1", "x + 2"])
    other = await open_client(stack.redis_url)
    try:
        async with (
            sympy_worker(other, keys, signer, verifier, policy, "sympy-1"),
            caller(redis, keys, signer, verifier, "alpha") as alpha,
        ):
            then = await expand_each(alpha, ["x + 3", "x + 4", "x + 5"])
    finally:
        await other.aclose()
    assert first == ["x + 1", "x + 2"]
    assert len(refusals(then, "alpha")) == 3, then


async def test_a_redelivered_request_is_counted_once(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    limit = RateLimitSpec(id="one@1", types=("l9.sympy.*",), per="agent", limit=1, window_s=60)
    rt = runtime(redis, keys, signer, verifier, "sympy", "sympy-0")
    gate = RateLimitGate(redis, keys, [limit], rt.publisher, source=rt.source)
    handled: list[tuple[str, int]] = []

    async def handler(d: Delivery) -> None:
        handled.append((d.envelope.id, d.attempt))

    def delivery(envelope: PacketEnvelope, attempt: int) -> Delivery:
        return Delivery("sympy", "1-0", envelope, Payload(), attempt, {})

    first, second = (
        PacketEnvelope.new(type="l9.sympy.expand.v1", source="agent://alpha/alpha-0", data={"expr": "x"})
        for _ in range(2)
    )
    for attempt in (1, 2, 3):  # the first request, delivered again after failed attempts
        await gate(delivery(first, attempt), handler)
    await gate(delivery(second, 1), handler)  # no reply_to: refused and only logged
    assert handled == [(first.id, 1), (first.id, 2), (first.id, 3)]
    assert await redis.zcard(keys.rate_limit("one@1", "alpha")) == 1


async def test_an_event_over_its_limit_is_acknowledged_unhandled(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, tmp_path: Path
) -> None:
    limit = {"id": "demo-tasks@1", "types": ["l9.demo.task.*"], "per": "agent", "limit": 1, "window_s": 60}
    policy = policy_file(tmp_path, rate_limits=[limit])
    tasks = [
        PacketEnvelope.new(type="l9.demo.task.v1", source="agent://cli/cli-0", data={"n": n})
        for n in (2, 3, 4)
    ]
    squarer = SquarerAgent(runtime(redis, keys, signer, verifier, "squarer", "squarer-0"))
    async with serving(squarer, verifier, policy):
        await Publisher(redis, keys, signer).publish_many(tasks)

        async def all_acked() -> bool:
            info: Any = await redis.xinfo_groups(keys.stream("demo.tasks"))
            group = next(g for g in info if g["name"] in ("squarer", b"squarer"))
            return bool(group["pending"] == 0 and group["entries-read"] == 3)

        await wait_for(all_acked)
        await wait_for(lambda: _stream_has(redis, keys.stream("demo.results")))
    results = [
        decode(f, verifier)[1] for _, f in stream_entries(await redis.xrange(keys.stream("demo.results")))
    ]
    # one of the three within the limit: handled concurrently, whichever reached the gate first
    # (on a loaded machine not always the first one read)
    assert [(r.n, r.square) for r in results] in ([(2, 4)], [(3, 9)], [(4, 16)])  # type: ignore[attr-defined]
    assert await redis.xlen(keys.dead("demo.tasks")) == 0, "refused events are not dead letters"


async def test_agent_processes_share_the_limit(
    spawn: Callable[..., AgentProcess], redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier,
    tmp_path: Path,
) -> None:  # fmt: skip
    """``l9 agent run sympy`` installs the gate (l9.start): two worker processes, one after the
    other, share alpha's count of 2 per minute."""
    # no signer table: the tests' signing key is no agent's (signers: test_governance_identity.py)
    policy = policy_file(tmp_path, rate_limits=[sympy_limit(2)], signers={})
    env = {"L9_POLICY_FILE": str(policy), "L9_SYMPY_WORKERS": "1"}
    first = spawn("sympy", "--instance", "a", env=env)
    async with caller(redis, keys, signer, verifier, "alpha") as alpha:
        served = await expand_each(alpha, ["x + 1", "x + 2"])
    assert first.terminate() == 0
    second = spawn("sympy", "--instance", "b", env=env)
    async with caller(redis, keys, signer, verifier, "alpha") as alpha:
        refused = await expand_each(alpha, ["x + 3", "x + 4", "x + 5"])
    assert second.terminate() == 0
    assert served == ["x + 1", "x + 2"]
    assert len(refusals(refused, "alpha")) == 3, refused
    limited = [e for e in second.log_events() if e.get("event") == "governance.rate_limited"]
    assert len(limited) == 3, limited
    assert all(e["policy"] == "sympy-requests-per-agent@1" and e["answered"] is True for e in limited)
