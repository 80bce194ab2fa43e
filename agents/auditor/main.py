"""``l9 agent run auditor``: the auditor as its own OS process.

Several auditor processes share the ``auditor`` group; the chain lock of the
trail (in PostgreSQL) keeps one chain. Each process also runs the reporter (group
``reporter`` on stream ``run``, see :mod:`.reporter`), which renders a run's
evidence report when the run ends. SIGTERM/SIGINT: stop reading, finish the
batch in hand and the reports being written, leave the rest pending; a
second signal aborts.
"""

from __future__ import annotations

import anyio
import redis.asyncio as aioredis
import structlog

from bus import (
    DEFAULT_TOPOLOGY,
    Backoff,
    BatchConsumer,
    DeliveryPolicy,
    Keys,
    Publisher,
    StreamConsumer,
    claim_consumer_name,
    connect,
)
from envelope import Signer, Verifier
from l9.devstack import StackEndpoints, resolve_endpoints
from l9.settings import Settings
from l9.trail import open_trail
from memory.audit import AuditRecorder, AuditStoreUnavailable

from ..runner import policy_from, stop_on_signal
from .agent import GROUP, Auditor, Checkpointer, Failpoint, is_transient, tune_gc
from .reporter import GROUP as REPORTER_GROUP
from .reporter import RUN_STREAM, Reporter
from .stream import AuditStream

log = structlog.get_logger("l9.auditor")


async def run_auditor(settings: Settings, *, instance: str | None = None) -> None:
    endpoints = resolve_endpoints(settings)
    redis = connect(endpoints.redis_url)
    keys, policy = Keys(settings.namespace), policy_from(settings)
    keyring = settings.keyring()
    failpoint = Failpoint(settings.audit_failpoint)
    store = await _open_trail(settings, endpoints, failpoint)
    try:
        name = await claim_consumer_name(redis, keys, GROUP, policy.heartbeat_ttl_ms, instance=instance)
        structlog.contextvars.bind_contextvars(agent=GROUP, consumer=name)
        source = f"agent://{GROUP}/{name}"
        stream = AuditStream(redis, keys, store, Signer(keyring, settings.signing_key_id), source)
        checkpointer = Checkpointer(
            store,
            settings.audit_signing_key(),
            settings.audit_checkpoint_every,
            settings.audit_checkpoint_interval_s,
        )
        auditor = Auditor(redis, keys, store, Verifier(keyring), stream, checkpointer, DEFAULT_TOPOLOGY)
        consumer = BatchConsumer(
            redis,
            keys,
            group=GROUP,
            consumer=name,
            streams=auditor.streams,
            handler=auditor.handle,
            policy=policy,
            batch_size=settings.audit_batch_size,
            is_transient=is_transient,
            before_ack=lambda: failpoint("before_xack"),
        )
        reporter = await _reporter(redis, keys, store, settings, policy, instance)
        tune_gc()
        await _serve(auditor, consumer, reporter)
    finally:
        await store.close()
        await redis.aclose()


async def _open_trail(settings: Settings, endpoints: StackEndpoints, failpoint: Failpoint) -> AuditRecorder:
    """The trail, waiting (with backoff) for its store to come up."""
    backoff = Backoff(cap=10.0)
    while True:
        try:
            return await open_trail(settings, endpoints, stage_hook=failpoint)
        except AuditStoreUnavailable as exc:
            log.warning("auditor.postgres_unavailable", error=str(exc), retry_in_s=backoff.next)
            await backoff.sleep()


async def _reporter(
    redis: aioredis.Redis,
    keys: Keys,
    store: AuditRecorder,
    settings: Settings,
    policy: DeliveryPolicy,
    instance: str | None,
) -> StreamConsumer:
    """The reporter's consumer (group ``reporter`` on stream ``run``) of this process."""
    # Named auditor-reporter-<n>: its heartbeat keys fall under the auditor's (hb:auditor-*),
    # so the auditor's Redis user (``l9 acl render``) covers both consumers of the process.
    base = f"{GROUP}-{REPORTER_GROUP}"
    name = await claim_consumer_name(redis, keys, base, policy.heartbeat_ttl_ms, instance=instance)
    keyring = settings.keyring()
    publisher = Publisher(redis, keys, Signer(keyring, settings.signing_key_id))
    reporter = Reporter(
        redis,
        keys,
        store,
        publisher,
        settings.audit_signing_key(),
        settings.home_dir / "reports",
        f"agent://{REPORTER_GROUP}/{name}",
    )
    return StreamConsumer(
        redis,
        keys,
        group=REPORTER_GROUP,
        consumer=name,
        streams=(RUN_STREAM,),
        handler=reporter.handle,
        verifier=Verifier(keyring),
        policy=policy,
    )


async def _serve(auditor: Auditor, consumer: BatchConsumer, reporter: StreamConsumer) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
        tg.start_soon(auditor.checkpointer.run)
        tg.start_soon(auditor.catch_up_loop)
        tg.start_soon(auditor.publish_loop)
        log.info("agent.started", batch_size=consumer.batch_size, reporter=reporter.consumer)
        async with anyio.create_task_group() as reporting:
            reporting.start_soon(reporter.run)
            await consumer.run()
            reporter.stop()  # drains the reports in hand, like the audit batch
        log.info("agent.stopped", **auditor.stats)
        tg.cancel_scope.cancel()
