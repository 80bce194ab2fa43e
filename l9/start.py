"""Process start-up of every agent: ``l9 agent run NAME``.

The one place where an agent process is wired: the endpoints are resolved once
(the embedded stack gives whatever the settings leave unset, and a database
only to an agent that needs one), each agent gets its own frozen config built
from the settings, its consumer name is claimed and held (heartbeat) while it
starts, and SIGTERM/SIGINT stop reading and drain; a second signal aborts.

With ``L9_ADMIN_PORT`` set, each process also serves ``/metrics``, ``/healthz`` and
``/readyz`` there (``l9.admin``), from before its agent starts until it stopped; the auditor's
also exports every group's lag and pending (``bus.metrics.GroupStats``), the enforcer's the
escalations pending (``governance.metrics.EscalationStats``).

Several processes of one agent share its consumer group, so they share the
work. The auditor (group ``auditor``, plus the reporter, group ``reporter`` on
stream ``run``) and the lineage projector run batch loops; the chain lock of the
trail (in PostgreSQL) keeps one audit chain, MERGEs make concurrent graph
writes safe.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import structlog

from agents.base import Agent
from agents.runtime import Runtime
from bus import (
    DEFAULT_TOPOLOGY,
    Backoff,
    BatchConsumer,
    BatchHandler,
    DeliveryPolicy,
    Keys,
    Publisher,
    StreamConsumer,
    StreamSource,
    claim_consumer_name,
    hold_consumer_name,
    open_client,
)
from bus.connection import RedisClient
from envelope import Signer, Verifier
from governance import RateLimitGate, load_policy_file, load_signer_acl
from memory.audit import AuditRecorder, AuditStoreUnavailable

from .devstack import StackEndpoints, resolve_endpoints
from .process import AUDITOR_YOUNG, settle_heap
from .settings import Settings

if TYPE_CHECKING:
    from agents.auditor.agent import Auditor
    from agents.auditor.ownership import ChainKeeper
    from bus.metrics import BatchMetrics, DeliveryMetrics, GroupStats
    from governance.metrics import EscalationStats

    from .admin import Admin, Check

log = structlog.get_logger("l9.agent.runner")


@dataclass(frozen=True)
class AgentEndpoints:
    """What one agent process connects to; ``database_url`` None: no database for it."""

    redis_url: str
    database_url: str | None


def agent_endpoints(settings: Settings, *, database: bool) -> AgentEndpoints:
    """The endpoints, resolved once. An agent that needs no database, given ``REDIS_URL``,
    never starts the embedded stack (nor its PostgreSQL); given nothing, it shares the
    whole embedded stack of ``L9_HOME`` as before."""
    if not database and settings.redis_url:
        return AgentEndpoints(settings.redis_url, settings.database_url or None)
    endpoints = resolve_endpoints(settings)
    return AgentEndpoints(endpoints.redis_url, endpoints.database_url)


def policy_from(settings: Settings, concurrency: int | None = None) -> DeliveryPolicy:
    return settings.delivery_policy(concurrency)


#: Built-in agents needing a database (a predicate of the settings) and their config.
Configure = Callable[[Settings, AgentEndpoints], object]
CONFIGS: dict[str, tuple[Callable[[Settings], bool], Configure]] = {
    "sympy": (lambda s: s.sympy_metrics, lambda s, e: s.sympy_config(e.database_url)),
    "planner": (lambda s: False, lambda s, e: s.planner_config(e.redis_url, e.database_url)),
    "generator": (lambda s: False, lambda s, e: s.generator_config()),
    "enforcer": (lambda s: False, lambda s, e: s.enforcer_config()),
    "validator": (lambda s: False, lambda s, e: s.validator_config()),
}


def build_agent(
    agent_cls: type[Agent], runtime: Runtime, settings: Settings, endpoints: AgentEndpoints
) -> Agent:
    """The agent with its own config (a built-in one), else with its runtime only."""
    entry = CONFIGS.get(agent_cls.name)
    if entry is None:
        return agent_cls(runtime)
    factory: Any = agent_cls  # the built-in agents take their config second
    agent: Agent = factory(runtime, entry[1](settings, endpoints))
    return agent


def needs_database(agent_cls: type[Agent], settings: Settings) -> bool:
    entry = CONFIGS.get(agent_cls.name)
    return entry is not None and entry[0](settings)


async def run_agent(
    agent_cls: type[Agent],
    settings: Settings,
    *,
    concurrency: int | None = None,
    instance: str | None = None,
) -> None:
    endpoints = agent_endpoints(settings, database=needs_database(agent_cls, settings))
    keys, policy = Keys(settings.namespace), policy_from(settings, concurrency)
    signer, verifier = settings.signer(), settings.verifier()
    acl = load_signer_acl(settings.policy_file)  # None unless the policy file has a signer table
    # The policy file's rate limits, applied where their types are consumed: by this agent's
    # consumer, unless its handler applies them itself (the planner).
    limits = () if agent_cls.checks_own_rate_limits else load_policy_file(settings.policy_file).rate_limits
    admin = open_admin(settings)
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)  # after the checks
    try:
        name = await claim_consumer_name(
            redis, keys, agent_cls.name, policy.heartbeat_ttl_ms, instance=instance
        )
        runtime = Runtime(
            redis=redis,
            keys=keys,
            signer=signer,
            verifier=verifier,
            agent=agent_cls.name,
            instance=name,
            replicas=settings.publish_replicas,
        )
        agent = build_agent(agent_cls, runtime, settings, endpoints)
        gate = RateLimitGate(redis, keys, limits, runtime.publisher, source=runtime.source)
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
            middlewares=[gate] if gate.limits else [],
            metrics=delivery_metrics(admin, agent_cls.name),
        )
        if admin is not None:
            admin.watch_stream(consumer)
        structlog.contextvars.bind_contextvars(agent=agent_cls.name, consumer=name)
        exports = admin is not None and agent_cls.name == "enforcer"  # it waits for the answers
        await _serve(agent, consumer, admin, _escalation_stats(redis, keys, settings) if exports else None)
    finally:
        await redis.aclose()
        if admin is not None:
            admin.close()


async def _serve(
    agent: Agent,
    consumer: StreamConsumer,
    admin: Admin | None = None,
    escalation_stats: EscalationStats | None = None,
) -> None:
    async with serving(admin), anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
        if escalation_stats is not None:
            tg.start_soon(escalation_stats.run)
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
        settle_heap()
        log.info("agent.started", concurrency=consumer.policy.concurrency, streams=consumer.streams)
        await consumer.run()
        with anyio.CancelScope(shield=True):
            await agent.on_stop()
        log.info("agent.stopped")
        tg.cancel_scope.cancel()


def open_admin(settings: Settings) -> Admin | None:
    """The admin port (``L9_ADMIN_PORT``), bound now; None when unset. One in use (or not an
    address of this machine) stops the process here, before it connects anywhere: exit 2,
    the reason logged (``agent.admin_port_unavailable``)."""
    if settings.admin_port is None:
        return None
    from .admin import Admin, AdminPortError  # late: start-up speed (uvicorn, starlette, prometheus)

    try:
        return Admin(settings.admin_host, settings.admin_port)
    except AdminPortError as exc:
        log.error("agent.admin_port_unavailable", error=str(exc), setting="L9_ADMIN_PORT")
        raise SystemExit(2) from None


def serving(admin: Admin | None) -> AbstractAsyncContextManager[None]:
    """The admin server for the block (nothing without an admin port)."""
    return nullcontext() if admin is None else admin.serving()


def delivery_metrics(admin: Admin | None, group: str) -> DeliveryMetrics | None:
    """A ``StreamConsumer``'s metrics when there is an admin port to show them."""
    if admin is None:
        return None
    from bus.metrics import DeliveryMetrics

    return DeliveryMetrics(group)


def metered(
    admin: Admin | None, group: str, source: StreamSource, handler: BatchHandler
) -> tuple[StreamSource, BatchHandler, BatchMetrics | None]:
    """A ``BatchConsumer``'s stream source and handler, wrapped by its metrics when there is an
    admin port to show them (``Admin.watch_batch`` then watches the loop)."""
    if admin is None:
        return source, handler, None
    from bus.metrics import BatchMetrics

    metrics = BatchMetrics(group)
    return metrics.source(source), metrics.handler(handler), metrics


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


# The lineage projector: ``l9 agent run lineage`` (graph writes; no database).


async def run_lineage(settings: Settings, *, instance: str | None = None) -> None:
    from agents.lineage.projector import GROUP, Projector, is_transient
    from memory.graph import open_graph

    endpoints = agent_endpoints(settings, database=False)
    admin = open_admin(settings)
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
    keys, policy = Keys(settings.namespace), policy_from(settings)
    graph = open_graph(settings.graph_config(), redis=redis)
    try:
        name = await claim_consumer_name(redis, keys, GROUP, policy.heartbeat_ttl_ms, instance=instance)
        structlog.contextvars.bind_contextvars(agent=GROUP, consumer=name, partitions=settings.partitions)
        projector = Projector(
            redis, keys, graph, settings.verifier(), DEFAULT_TOPOLOGY, settings.partition_set()
        )
        streams, handle, metrics = metered(admin, GROUP, projector.streams, projector.handle)
        consumer = BatchConsumer(
            redis,
            keys,
            group=GROUP,
            consumer=name,
            streams=streams,
            handler=handle,
            policy=policy,
            batch_size=settings.lineage_batch_size,
            is_transient=is_transient,
        )
        if admin is not None and metrics is not None:
            admin.watch_batch(consumer, metrics)
        settle_heap()
        async with serving(admin), anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
            log.info("agent.started", batch_size=consumer.batch_size, graph=graph.kind, graph_at=graph.where)
            await consumer.run()
            log.info("agent.stopped", **projector.stats)
            tg.cancel_scope.cancel()
    finally:
        await graph.close()
        await redis.aclose()
        if admin is not None:
            admin.close()


# The auditor: ``l9 agent run auditor`` (the trail in PostgreSQL, and the reporter).


async def run_auditor(settings: Settings, *, instance: str | None = None) -> None:
    from agents.auditor.agent import Failpoint

    endpoints = resolve_endpoints(settings)
    admin = open_admin(settings)
    redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
    signer, verifier = settings.signer(), settings.verifier(full_proofs=True)  # it stores the proofs
    failpoint = Failpoint(settings.audit_failpoint)
    try:
        async with serving(admin):  # already while the trail's store is awaited
            if admin is not None:
                admin.ready_when("postgres", _postgres_answers(settings, endpoints))
            store = await _open_trail(settings, endpoints, failpoint)
            try:
                await _audit(settings, redis, store, (signer, verifier), failpoint, admin, instance)
            finally:
                await store.close()
    finally:
        await redis.aclose()
        if admin is not None:
            admin.close()


async def _audit(
    settings: Settings,
    redis: RedisClient,
    store: AuditRecorder,
    keyring: tuple[Signer, Verifier],
    failpoint: Callable[[str], None],
    admin: Admin | None,
    instance: str | None,
) -> None:
    """The auditor's consumer and the reporter's (``keyring``: what signs the audit stream,
    what checks the envelopes), until stopped."""
    from agents.auditor.agent import GROUP, Auditor, Checkpointer
    from agents.auditor.ownership import ChainKeeper
    from agents.auditor.stream import AuditStream

    keys, policy = Keys(settings.namespace), policy_from(settings)
    signer, verifier = keyring
    name = await claim_consumer_name(redis, keys, GROUP, policy.heartbeat_ttl_ms, instance=instance)
    structlog.contextvars.bind_contextvars(agent=GROUP, consumer=name, partitions=settings.partitions)
    source = f"agent://{GROUP}/{name}"
    stream = AuditStream(redis, keys, store, signer, source)
    checkpointer = Checkpointer(
        store,
        settings.audit_signing_key(),
        settings.audit_checkpoint_every,
        settings.audit_checkpoint_interval_s,
    )
    keeper = ChainKeeper(await store.leases(), store.layout, drain_s=policy.lease_ms / 1000)
    try:
        await keeper.rebalance()  # the chains to read, before the first read
        auditor = Auditor(redis, keys, store, verifier, stream, checkpointer, DEFAULT_TOPOLOGY, keeper)
        await _run_auditor(settings, redis, keys, policy, (name, instance), auditor, keeper, failpoint, admin)
    finally:
        await keeper.close()


async def _run_auditor(
    settings: Settings,
    redis: RedisClient,
    keys: Keys,
    policy: DeliveryPolicy,
    names: tuple[str, str | None],
    auditor: Auditor,
    keeper: ChainKeeper,
    failpoint: Callable[[str], None],
    admin: Admin | None,
) -> None:
    """The auditor's consumer of the streams of the chains ``keeper`` holds, the reporter's,
    and their side loops, until stopped (``names``: the consumer name, the instance asked for)."""
    from agents.auditor.agent import GROUP, is_transient

    store, (name, instance) = auditor.store, names
    streams, handle, metrics = metered(admin, GROUP, auditor.streams, auditor.handle)
    consumer = BatchConsumer(
        redis,
        keys,
        group=GROUP,
        consumer=name,
        streams=streams,
        handler=handle,
        policy=policy,
        batch_size=settings.audit_batch_size,
        is_transient=is_transient,
        before_ack=lambda: failpoint("before_xack"),
    )
    reporter = await _reporter(redis, keys, store, settings, policy, instance, GROUP, admin)
    if admin is not None and metrics is not None:
        admin.watch_batch(consumer, metrics)
        admin.watch_stream(reporter)
    keeper.consumer = consumer
    settle_heap(AUDITOR_YOUNG, 20, 10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, consumer, tg.cancel_scope)
        tg.start_soon(keeper.run)
        tg.start_soon(auditor.checkpointer.run)
        tg.start_soon(auditor.catch_up_loop)
        tg.start_soon(auditor.publish_loop)
        if admin is not None:
            tg.start_soon(_group_stats(redis, keys, settings).run)
        log.info("agent.started", batch_size=consumer.batch_size, reporter=reporter.consumer)
        async with anyio.create_task_group() as reporting:
            reporting.start_soon(reporter.run)
            await consumer.run()
            reporter.stop()  # drains the reports in hand, like the audit batch
        log.info("agent.stopped", **auditor.stats)
        tg.cancel_scope.cancel()


def _postgres_answers(settings: Settings, endpoints: StackEndpoints) -> Check:
    """/readyz's check of the trail's PostgreSQL, as the auditor's writer connects to it."""
    from memory.postgres import writer_dsn

    from .admin import postgres_answers

    return postgres_answers(writer_dsn(endpoints.database_url, settings.database_writer_url))


def _escalation_stats(redis: RedisClient, keys: Keys, settings: Settings) -> EscalationStats:
    """The escalations pending, exported by the enforcer's process (it waits for the answers)."""
    from governance.metrics import EscalationStats

    return EscalationStats.of(redis, keys, load_policy_file(settings.policy_file))


def _group_stats(redis: RedisClient, keys: Keys, settings: Settings) -> GroupStats:
    """Every group's lag and pending, exported by the auditor's process (of its partitions:
    the auditors of a deployment export each stream once)."""
    from bus.metrics import GroupStats

    return GroupStats(redis, keys, settings.partition_set().partitions())


async def _open_trail(
    settings: Settings, endpoints: StackEndpoints, failpoint: Callable[[str], None]
) -> AuditRecorder:
    """The trail, waiting (with backoff) for its store to come up."""
    from .trail import open_trail

    backoff = Backoff(cap=10.0)
    while True:
        try:
            return await open_trail(settings, endpoints, stage_hook=failpoint)
        except AuditStoreUnavailable as exc:
            log.warning("auditor.postgres_unavailable", error=str(exc), retry_in_s=backoff.next)
            await backoff.sleep()


async def _reporter(
    redis: RedisClient,
    keys: Keys,
    store: AuditRecorder,
    settings: Settings,
    policy: DeliveryPolicy,
    instance: str | None,
    group: str,
    admin: Admin | None = None,
) -> StreamConsumer:
    """The reporter's consumer (group ``reporter`` on stream ``run``) of this process."""
    from agents.auditor.reporter import GROUP as REPORTER_GROUP
    from agents.auditor.reporter import Reporter
    from bus.topology import RUN_STREAM

    # Named auditor-reporter-<n>: its heartbeat keys fall under the auditor's (hb:auditor-*),
    # so the auditor's Redis user (``l9 acl render``) covers both consumers of the process.
    base = f"{group}-{REPORTER_GROUP}"
    name = await claim_consumer_name(redis, keys, base, policy.heartbeat_ttl_ms, instance=instance)
    publisher = Publisher(redis, keys, settings.signer())
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
        verifier=settings.verifier(),
        policy=policy,
        metrics=delivery_metrics(admin, REPORTER_GROUP),
    )
