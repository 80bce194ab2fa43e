"""Agents served in the test's process as ``l9 agent run`` serves them: a consumer of the agent's
streams with the consume-side rate-limit gate (``governance.RateLimitGate``) before its handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import yaml

from agents.base import Agent
from agents.runtime import Runtime
from agents.sympy.agent import SymPyAgent
from bus import Keys, StreamConsumer
from bus.connection import RedisClient
from envelope import Signer, Verifier
from governance import DEFAULT_POLICY_FILE, RateLimitGate, load_policy_file
from l9.settings import Settings
from tests.conftest import FAST


def policy_file(
    tmp_path: Path,
    *,
    rate_limits: list[dict[str, Any]] | None = None,
    signers: dict[str, list[str]] | None = None,
    **escalation: Any,
) -> Path:
    """The shipped policy file with these ``rate_limits``, ``identity.signers`` (default: the
    shipped ones) and ``escalation`` settings changed, written under ``tmp_path``."""
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    if rate_limits is not None:
        policy["rate_limits"] = rate_limits
    if signers is not None:
        policy["identity"]["signers"] = signers
    policy["escalation"].update(escalation)
    path = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def sympy_limit(limit: int, window_s: float = 60) -> dict[str, Any]:
    return {"id": "sympy-requests-per-agent@1", "types": ["l9.sympy.*"], "per": "agent",
            "limit": limit, "window_s": window_s}  # fmt: skip


def gated_consumer(agent: Agent, verifier: Verifier, policy: Path) -> StreamConsumer:
    """The agent's consumer as ``l9 agent run`` builds it, the rate-limit gate installed."""
    rt = agent.runtime
    gate = RateLimitGate(
        rt.redis, rt.keys, load_policy_file(policy).rate_limits, rt.publisher, source=rt.source
    )
    return StreamConsumer(
        rt.redis,
        rt.keys,
        group=agent.name,
        consumer=rt.instance,
        streams=agent.consumes,
        handler=agent.handle,
        verifier=verifier,
        policy=FAST,
        middlewares=[gate] if gate.limits else [],
    )


def runtime(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, agent: str, instance: str
) -> Runtime:
    return Runtime(redis=redis, keys=keys, signer=signer, verifier=verifier, agent=agent, instance=instance)


@asynccontextmanager
async def serving(agent: Agent, verifier: Verifier, policy: Path) -> AsyncIterator[StreamConsumer]:
    """``agent`` started and consuming until the block ends, then drained and stopped."""
    consumer = gated_consumer(agent, verifier, policy)
    await agent.on_start()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer.run)
            await consumer.wait_started()
            yield consumer
            consumer.stop()
    finally:
        with anyio.CancelScope(shield=True):
            await agent.on_stop()


@asynccontextmanager
async def sympy_worker(
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    policy: Path,
    instance: str = "sympy-0",
) -> AsyncIterator[SymPyAgent]:
    """A SymPy worker (one pool process) serving the tool stream under ``policy``."""
    settings = Settings(policy_file=policy, sympy_workers=1)
    agent = SymPyAgent(runtime(redis, keys, signer, verifier, "sympy", instance), settings.sympy_config())
    async with serving(agent, verifier, policy):
        yield agent
