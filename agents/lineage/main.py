"""``l9 agent run lineage``: the lineage projector as its own OS process.

Several processes share the ``lineage`` group (MERGEs make concurrent writes
safe). SIGTERM/SIGINT: stop reading, finish the batch in hand, leave the rest
pending; a second signal aborts.
"""

from __future__ import annotations

import anyio
import structlog

from bus import DEFAULT_TOPOLOGY, BatchConsumer, Keys, claim_consumer_name, connect
from envelope import Verifier
from l9.devstack import resolve_endpoints
from l9.settings import Settings
from memory.graph import open_graph

from ..runner import policy_from, stop_on_signal
from .projector import GROUP, Projector, is_transient

log = structlog.get_logger("l9.lineage")


async def run_lineage(settings: Settings, *, instance: str | None = None) -> None:
    endpoints = resolve_endpoints(settings)
    redis = connect(endpoints.redis_url)
    keys, policy = Keys(settings.namespace), policy_from(settings)
    graph = open_graph(settings, endpoints.redis_url)
    try:
        name = await claim_consumer_name(redis, keys, GROUP, policy.heartbeat_ttl_ms, instance=instance)
        structlog.contextvars.bind_contextvars(agent=GROUP, consumer=name)
        projector = Projector(redis, keys, graph, Verifier(settings.keyring()), DEFAULT_TOPOLOGY)
        consumer = BatchConsumer(
            redis,
            keys,
            group=GROUP,
            consumer=name,
            streams=projector.streams,
            handler=projector.handle,
            policy=policy,
            batch_size=settings.lineage_batch_size,
            is_transient=is_transient,
        )
        await _serve(projector, consumer, graph.kind, graph.where)
    finally:
        await graph.close()
        await redis.aclose()


async def _serve(projector: Projector, consumer: BatchConsumer, kind: str, where: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
        log.info("agent.started", batch_size=consumer.batch_size, graph=kind, graph_at=where)
        await consumer.run()
        log.info("agent.stopped", **projector.stats)
        tg.cancel_scope.cancel()
