"""The SymPy worker agent (``l9 agent run sympy``): requests on the tool stream, answers by RPC.

Each request is parsed and computed in the worker pool (never in this
process) within one deadline: ``L9_SYMPY_TIMEOUT_S`` (within the request's own
deadline) bounds the key parse, the parse and the computation together; a kernel's
compilers run outside the pool, in build slots, within ``L9_SYMPY_COMPILE_TIMEOUT_S``
(:mod:`.service`, :mod:`.builds`). Results are cached in Redis under the canonical
form (:mod:`.cache`). A result is
the typed reply; a failure is an ``ErrorReply`` (``sympy.<kind>``, see
:mod:`.errors`). Forbidden constructs, limit breaches and runaways are governance
events besides: before the caller hears, the policy engine's decision on the
request (``l9.governance.decision.v1``), caused by the request, is published and, when a
policy escalates, an escalation to its anchors opened, or the requester's pending one
under that policy counted on (:mod:`.violations`): a hostile batch leaves one escalation.

A request over one of the policy file's rate limits (``sympy-requests-per-agent@1``)
never reaches this handler: ``l9 agent run`` puts ``governance.RateLimitGate`` before it,
which answers ``governance.rate_limited`` at once, the count shared by every worker process.

Once the caller has its answer, every operation is published on ``sympy.events``
(:mod:`.telemetry`), its reply copied to ``sympy.results`` (so the audit trail
keeps it for ``l9 sympy export``, :mod:`.session`), both in the round trip that
acknowledges the request (written before its XACK: a crash re-runs it), and
its metric rows are buffered for PostgreSQL (written in batches in the background
by :class:`memory.postgres.metrics.MetricsWriter`; PostgreSQL away never slows a reply).
Prometheus' metrics (:mod:`.metrics`, on the admin port) are kept in this process: each
operation's time (its event's), by operation, backend and outcome; the cache's hits and
misses as they happen; the pool's worker restarts, with their reason.
"""

from __future__ import annotations

import contextlib
import time
from functools import partial

from agents.contracts.sympy.errors import ToolError
from agents.contracts.sympy.graph import ExpressionGraphHook
from agents.contracts.sympy.payloads import (
    Compile,
    Cse,
    Diff,
    Evaluate,
    Expand,
    Factor,
    GenerateCode,
    Integrate,
    Series,
    Simplify,
    Solve,
    SymPyRequest,
    SymPyResult,
)
from bus import TRANSIENT
from bus.topology import SYMPY_EVENTS_STREAM as EVENTS_STREAM
from bus.topology import SYMPY_RESULTS_STREAM as RESULTS_STREAM
from bus.topology import SYMPY_STREAM as TOOL_STREAM
from envelope import PacketEnvelope
from governance import Escalations, PolicyEngine
from memory.postgres.metrics import MetricsWriter

from ..base import Agent, Context, handles
from ..runtime import Runtime
from .cache import ResultCache
from .config import SymPyConfig
from .metrics import count_lookup, count_restart, observe_operation
from .operations import execute
from .pool import WorkerPool
from .service import SymPyService
from .telemetry import OperationEvent, metric_rows
from .violations import ViolationDesk


class SymPyAgent(Agent):
    name = "sympy"
    consumes = (TOOL_STREAM,)

    def __init__(self, runtime: Runtime, config: SymPyConfig | None = None) -> None:
        super().__init__(runtime)
        self.config = config or SymPyConfig()
        handler = partial(execute, self.config.tool)
        self.pool = WorkerPool(
            handler,
            size=self.config.workers,
            timeout_s=self.config.timeout_s,
            memory_mb=self.config.memory_mb,
            on_replace=count_restart,
        )
        self.cache = ResultCache(
            runtime.redis,
            runtime.keys,
            ttl_s=self.config.cache_ttl_s,
            max_bytes=self.config.cache_max_bytes,
            on_lookup=count_lookup,
        )
        #: the cache, one deadline per request, the pool and the build slots
        self.service = SymPyService(self.pool, self.cache, self.config, runtime.redis, runtime.keys)
        engine = PolicyEngine.load(self.config.policy_file, strict_mode=self.config.strict_mode)
        desk = Escalations(
            runtime.redis,
            runtime.publisher,
            spec=engine.escalation,
            anchors=engine.anchors,
            source=runtime.source,
        )
        self.violations = ViolationDesk(engine, desk)
        self.metrics: MetricsWriter | None = None
        #: cse / generate_code / compile results to the graph store (after the reply, bounded).
        self.expressions = ExpressionGraphHook.open(self.config.graph, runtime.redis)

    async def on_start(self) -> None:
        await self.pool.__aenter__()
        metrics = self.config.metrics
        if metrics is not None:
            self.metrics = MetricsWriter(
                metrics.dsn,
                admin_dsn=metrics.admin_dsn,
                capacity=metrics.capacity,
                interval_s=metrics.interval_s,
            )
            await self.metrics.start()

    async def on_stop(self) -> None:
        await self.pool.__aexit__(None, None, None)
        with contextlib.suppress(*TRANSIENT):  # counters are statistics: never block a shutdown
            await self.cache.flush()
        if self.metrics is not None:
            await self.metrics.close()
        await self.expressions.close()

    @handles(Evaluate, Simplify, Expand, Factor, Diff, Integrate, Series, Solve, Cse, GenerateCode, Compile)
    async def on_request(self, ctx: Context[SymPyRequest]) -> None:
        request, started = ctx.payload, time.perf_counter()
        try:
            reply = await self.compute(request, ctx.envelope)
        except ToolError as exc:
            answer = await self._refuse(ctx, exc)
            await self._record(ctx, started, answer, error=exc)
            return
        answer = await ctx.reply(reply)
        await self._record(ctx, started, answer, reply=reply)
        await self.expressions.record(request, reply)  # expression graph: best effort, off the reply path

    async def _record(
        self,
        ctx: Context[SymPyRequest],
        started: float,
        answer: PacketEnvelope,
        *,
        reply: SymPyResult | None = None,
        error: ToolError | None = None,
    ) -> None:
        """After the reply (off the caller's path): the operation's event on ``sympy.events``,
        the reply's copy on ``sympy.results`` and the cache's hit and miss counts go out
        with the request's XACK, in one round trip (``ctx.with_ack``); its metric rows go to
        the buffer; its time to Prometheus (``l9_sympy_operation_duration_seconds``)."""
        seconds = time.perf_counter() - started
        ms = round(seconds * 1000, 3)
        request = ctx.payload
        event = OperationEvent(
            op=request.op,
            backend=getattr(reply, "backend", request.backend_name),
            expr_hash=reply.expr_hash if reply is not None else None,
            duration_ms=ms,
            cached=reply.cached if reply is not None else False,
            outcome="ok" if error is None else "error",
            error=None if error is None else f"{error.kind}.{error.rule}",
            requester=ctx.envelope.auth or ctx.envelope.source,
        )
        observe_operation(event.op, event.backend, "ok" if error is None else error.kind, seconds)
        envelope = self.envelope_for(event, cause=ctx.envelope)
        publisher = self.runtime.publisher
        ctx.with_ack(
            *publisher.commands([envelope], EVENTS_STREAM),
            *publisher.commands([answer], RESULTS_STREAM),
            *self.cache.counted(),
        )
        if self.metrics is not None:
            for row in metric_rows(envelope, event, ctx.envelope):
                self.metrics.add(row)
        self.log.debug("sympy.served", op=request.op, ms=ms, cached=event.cached, outcome=event.outcome)

    async def compute(self, request: SymPyRequest, envelope: PacketEnvelope) -> SymPyResult:
        """The reply to ``request``: from the cache, or computed within one deadline (:mod:`.service`)."""
        return await self.service.compute(request, envelope)

    async def _refuse(self, ctx: Context[SymPyRequest], exc: ToolError) -> PacketEnvelope:
        """Governance first for a violation (when the caller hears, the decision is out), then fail."""
        if exc.violation:
            await self.violations.report(exc, ctx.envelope)
        else:
            self.log.info("sympy.refused", op=ctx.payload.op, kind=exc.kind, rule=exc.rule, detail=exc.detail)
        return await ctx.fail(*exc.reply_fields())


__all__ = ["TOOL_STREAM", "SymPyAgent"]
