"""Run one agent as its own OS process: ``l9 agent run NAME``.

Several processes of one agent share its consumer group, so they share the
work. SIGTERM/SIGINT stop reading and drain; a second signal aborts.
"""

from __future__ import annotations

import importlib
import signal
from typing import Protocol

import anyio
import structlog

from bus import DeliveryPolicy, Keys, StreamConsumer, claim_consumer_name, connect, hold_consumer_name
from envelope import Signer, Verifier
from governance import load_signer_acl
from l9.devstack import resolve_endpoints
from l9.settings import Settings

from .base import Agent
from .runtime import Runtime

#: Agents that ship with L9, by name.
BUILTIN: dict[str, str] = {
    "squarer": "agents.demo:SquarerAgent",
    "summer": "agents.demo:SummerAgent",
    "sympy": "agents.sympy.agent:SymPyAgent",
    "planner": "agents.extraction.planner_agent:PlannerAgent",
    "generator": "agents.extraction.generator.agent:GeneratorAgent",
    "enforcer": "agents.extraction.enforcer:EnforcerAgent",
    "validator": "agents.extraction.validator.agent:ValidatorAgent",
}
log = structlog.get_logger("l9.agent.runner")


def load_agent(spec: str) -> type[Agent]:
    """An agent class from a built-in name or ``package.module:Class``."""
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"unknown agent {spec!r}: use one of {sorted(BUILTIN)} or module:Class")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{target} is not an Agent subclass")
    if not cls.consumes:
        raise ValueError(f"agent {cls.name!r} consumes no stream")
    return cls


def policy_from(settings: Settings, concurrency: int | None = None) -> DeliveryPolicy:
    n = concurrency or settings.concurrency
    return DeliveryPolicy(
        max_in_flight=max(settings.batch_size, n),
        concurrency=n,
        block_ms=settings.block_ms,
        max_deliveries=settings.max_deliveries,
        retry_backoff_ms=settings.retry_backoff_ms,
        retry_backoff_max_ms=settings.retry_backoff_max_ms,
        lease_ms=settings.lease_ms,
        heartbeat_ms=settings.heartbeat_ms,
        drain_timeout_s=settings.drain_timeout_s,
    )


async def run_agent(
    agent_cls: type[Agent],
    settings: Settings,
    *,
    concurrency: int | None = None,
    instance: str | None = None,
) -> None:
    endpoints = resolve_endpoints(settings)
    redis = connect(endpoints.redis_url)
    keys, policy = Keys(settings.namespace), policy_from(settings, concurrency)
    keyring = settings.keyring()
    acl = load_signer_acl(settings.policy_file)  # None unless the policy file has a signer table
    try:
        name = await claim_consumer_name(
            redis, keys, agent_cls.name, policy.heartbeat_ttl_ms, instance=instance
        )
        runtime = Runtime(
            redis=redis,
            keys=keys,
            signer=Signer(keyring, settings.signing_key_id),
            verifier=Verifier(keyring),
            agent=agent_cls.name,
            instance=name,
        )
        agent = agent_cls(runtime)
        consumer = StreamConsumer(
            redis,
            keys,
            group=agent_cls.name,
            consumer=name,
            streams=agent_cls.consumes,
            handler=agent.handle,
            verifier=runtime.verifier,
            policy=policy,
            authorize=acl.authorize if acl is not None else None,
        )
        structlog.contextvars.bind_contextvars(agent=agent_cls.name, consumer=name)
        await _serve(agent, consumer)
    finally:
        await redis.aclose()


async def _serve(agent: Agent, consumer: StreamConsumer) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
        async with anyio.create_task_group() as holding:  # the name stays ours while starting
            holding.start_soon(
                hold_consumer_name,
                consumer.redis,
                consumer.keys,
                consumer.consumer,
                consumer.policy.heartbeat_ttl_ms,
            )
            await agent.on_start()
            holding.cancel_scope.cancel()
        log.info("agent.started", concurrency=consumer.policy.concurrency, streams=consumer.streams)
        await consumer.run()
        with anyio.CancelScope(shield=True):
            await agent.on_stop()
        log.info("agent.stopped")
        tg.cancel_scope.cancel()


class Stoppable(Protocol):
    """A delivery loop that drains on ``stop()`` (``StreamConsumer``, ``BatchConsumer``)."""

    in_flight: dict[tuple[str, str], float]

    @property
    def stopping(self) -> bool: ...

    def stop(self) -> None: ...


async def stop_on_signal(consumer: Stoppable, scope: anyio.CancelScope) -> None:
    """SIGTERM/SIGINT: stop reading and drain; a second signal cancels ``scope`` (abort)."""
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if consumer.stopping:
                log.warning("agent.aborting", signal=signal.Signals(signum).name)
                scope.cancel()
                return
            log.info("agent.draining", signal=signal.Signals(signum).name, in_flight=len(consumer.in_flight))
            consumer.stop()
