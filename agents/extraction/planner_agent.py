"""The planner agent (``l9 agent run planner``): extraction requests in, phase 0-1 envelopes out.

For each ``l9.extract.request.v1`` on the ``extract`` stream it emits, caused
by the request and in its run:

1. ``l9.schema.parsed.v1`` - the collection as read (or, if it cannot be read
   or is invalid, only ``l9.plan.rejected.v1`` at stage ``request``/``schema``);
2. ``l9.plan.research.v1`` - DAG, cycles, order, waves (a cycle: rejected at
   ``research``);
3. ``l9.plan.baseline.v1`` - every phase 1 check with its result;
4. ``l9.plan.locked.v1`` - the plan and its hash, or ``l9.plan.rejected.v1``
   listing every baseline failure and (strict mode, ``L9_STRICT_MODE``) every
   unresolvable entry, at stage ``baseline`` or ``plan``.

It also rejects, at stage ``plan`` and whatever the strict mode, what the generator
could not write (an expression named like a keyword, a builtin or a name of the kernels
module; a memory setting named ``storage``: :func:`.check.generation_errors`).
After a rejection it also ends the run: ``l9.run.completed.v1`` (failed, phase
``plan``). Any exception while planning is a rejection too (stage ``plan``, naming the
exception; the traceback is in the planner's log): the run ends at once, on the record,
instead of the request being retried until it is dead-lettered.

A request over the policy file's rate limit for its requester
(``rate_limits``, e.g. ``extraction-requests-per-requester@1``) is rejected at
stage ``request`` ("rate limited by ..., retry after N s") before anything is
planned; a redelivered request is not counted twice. The planner applies the limits
on its requests itself (``checks_own_rate_limits``), so its consumer runs without the
consume-side ``governance.RateLimitGate``: a request is counted once.

:func:`plan_request` computes these from the request alone (the probes and
anchors given), so it is tested without a bus. The handler publishes them in
one pipelined round trip after all are computed; a redelivered request is
planned again and gives the same plan hash.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import ClassVar

import anyio

from agents.contracts.extraction.baseline import Probe, baseline_errors, run_baseline, stack_probes
from agents.contracts.extraction.collection import SchemaError, SchemaErrors, content_hash
from agents.contracts.extraction.payloads import (
    TEXT_MAX,
    ExtractRequest,
    PlanBaseline,
    PlanLocked,
    PlanRejected,
    PlanResearch,
    SchemaParsed,
    Stage,
)
from agents.contracts.extraction.phases import RunCompleted
from agents.contracts.lineage import DagHook
from bus.topology import EXTRACT_STREAM as REQUEST_STREAM
from envelope import Payload, utcnow
from governance import Decision, RateLimiter, Request, agent_of, load_policy_file

from ..base import Agent, Context, handles
from ..runtime import Runtime
from .check import generation_errors
from .config import PlannerConfig
from .crash import RETRIED, crash_reason
from .loader import load_collection
from .planner import build_plan, cycle_errors, research


class RequestError(Exception):
    """The request's collection cannot be had: unreadable, too large, or not the hashed content."""


async def request_text(request: ExtractRequest) -> str:
    """The collection text of ``request``, read from its path if it carries none."""
    if request.text is not None:
        return request.text
    path = anyio.Path(request.path or "")
    try:
        data = await path.read_bytes()
    except OSError as exc:
        raise RequestError(f"cannot read {request.path}: {exc.strerror or exc}") from None
    if len(data) > TEXT_MAX * 4:
        raise RequestError(f"{request.path} is {len(data)} bytes long (at most {TEXT_MAX * 4})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{request.path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if content_hash(text) != request.content_hash:
        actual = content_hash(text)
        raise RequestError(
            f"{request.path} has changed: SHA-256 {actual}, the request names {request.content_hash}"
        )
    return text


def stamp_of(moment: datetime) -> str:
    """``moment`` in UTC as the extraction folder's suffix, e.g. ``20261121T093000Z``."""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


async def plan_request(
    request: ExtractRequest,
    *,
    probes: Mapping[str, Probe],
    anchors: Set[str],
    strict: bool = True,
    timeout_s: float = 5.0,
    requested_at: datetime | None = None,
) -> list[Payload]:
    """The payloads the planner emits for ``request``, in order (see the module docstring)."""
    out = await _plan_payloads(request, probes, anchors, strict, timeout_s, requested_at or utcnow())
    return _end_if_rejected(out)


def refusal_payloads(request: ExtractRequest, refusal: Decision) -> list[Payload]:
    """A request over its rate limit: rejected at stage ``request`` with the refusal's reason
    (``rate limited by ID (...), retry after N s``), and the run ended; nothing is planned."""
    origin = PurePosixPath(request.file)
    error = SchemaError(origin.name, 0, "request", refusal.reason)
    return _end_if_rejected([PlanRejected.of(origin.stem, "request", [error])])


def crash_payloads(request: ExtractRequest, exc: Exception) -> list[Payload]:
    """The planner failed on ``request`` (a bug, not the collection's fault): rejected at stage
    ``plan`` with the exception named, and the run ended."""
    origin = PurePosixPath(request.file)
    error = SchemaError(origin.name, 0, "request", crash_reason("planner", exc))
    return _end_if_rejected([PlanRejected.of(origin.stem, "plan", [error])])


#: Errors of a rejection the run's ``reason`` names (the rejection itself lists them all).
REASON_ERRORS = 3


def _end_if_rejected(out: list[Payload]) -> list[Payload]:
    last = out[-1]
    if isinstance(last, PlanRejected):
        more = len(last.errors) - REASON_ERRORS
        reason = "; ".join(e.text for e in last.errors[:REASON_ERRORS])
        reason += f"; and {more} more (every error is in the rejection)" if more > 0 else ""
        out.append(
            RunCompleted(
                outcome=f"failed at plan: {last.outcome}",
                collection=last.collection,
                result="failed",
                phase="plan",
                reason=reason,
            )
        )
    return out


async def _plan_payloads(
    request: ExtractRequest,
    probes: Mapping[str, Probe],
    anchors: Set[str],
    strict: bool,
    timeout_s: float,
    requested_at: datetime,
) -> list[Payload]:
    origin = PurePosixPath(request.file)
    try:
        collection = load_collection(await request_text(request), request.file)
    except RequestError as exc:
        return [PlanRejected.of(origin.stem, "request", [SchemaError(origin.name, 0, "request", str(exc))])]
    except SchemaErrors as exc:
        return [PlanRejected.of(origin.stem, "schema", exc.errors)]
    found = research(collection)
    out: list[Payload] = [SchemaParsed.of(collection), PlanResearch.of(collection.name, found)]
    if not found.acyclic:
        return [*out, PlanRejected.of(collection.name, "research", cycle_errors(collection, found))]
    baseline = await run_baseline(collection, probes=probes, anchors=anchors, timeout_s=timeout_s)
    out.append(PlanBaseline.of(collection.name, baseline))
    plan, unresolved = build_plan(collection, found)
    errors = baseline_errors(collection, baseline, anchors) + generation_errors(collection)
    errors += unresolved if strict else []
    if errors:
        stage: Stage = "plan" if baseline.ok else "baseline"
        return [*out, PlanRejected.of(collection.name, stage, errors)]
    return [*out, PlanLocked.of(plan, stamp=stamp_of(requested_at), out_dir=request.out_dir)]


def planner_probes(config: PlannerConfig) -> dict[str, Probe]:
    """The baseline's probes of the stack the config names; none without a Redis URL. With no
    database URL the PostgreSQL probe fails: the planner never starts a database of its own."""
    if config.redis_url is None:
        return {}
    probes = stack_probes(config.redis_url, config.database_url or "", config.graph)
    if config.database_url is None:

        async def no_postgres() -> None:
            raise LookupError("no PostgreSQL configured (DATABASE_URL is not set)")

        probes["postgres"] = no_postgres
    return probes


class PlannerAgent(Agent):
    name = "planner"
    consumes = (REQUEST_STREAM,)
    #: The handler applies the policy file's rate limits itself, answering with a rejection
    #: (``refusal_payloads``): ``l9 agent run`` installs no ``RateLimitGate`` before it.
    checks_own_rate_limits: ClassVar[bool] = True

    def __init__(
        self,
        runtime: Runtime,
        config: PlannerConfig | None = None,
        *,
        probes: Mapping[str, Probe] | None = None,
        anchors: Set[str] | None = None,
    ) -> None:
        super().__init__(runtime)
        self.config = config or PlannerConfig()
        self.probes = probes
        self.anchors = anchors
        #: Each research's DAG to the graph store at once (bounded; the lineage projector catches up).
        self.dags = DagHook.open(self.config.graph, runtime.redis)
        self.limiter: RateLimiter | None = None

    async def on_start(self) -> None:
        if self.probes is None:
            self.probes = planner_probes(self.config)
        policy = load_policy_file(self.config.policy_file)
        if self.anchors is None:
            self.anchors = frozenset(a.name for a in policy.anchors)
        self.limiter = RateLimiter(self.runtime.redis, self.runtime.keys, policy.rate_limits)

    async def on_stop(self) -> None:
        await self.dags.close()

    @handles(ExtractRequest)
    async def on_request(self, ctx: Context[ExtractRequest]) -> None:
        log = self.log.bind(correlation_id=ctx.envelope.correlation_id, envelope=ctx.envelope.id)
        refusal = await self.rate_limit(ctx)
        if refusal is not None:
            await self.runtime.publisher.publish_many(
                [self.envelope_for(p, cause=ctx.envelope) for p in refusal_payloads(ctx.payload, refusal)]
            )
            log.info("planner.rate_limited", file=ctx.payload.file, reason=refusal.reason)
            return
        try:
            payloads = await plan_request(
                ctx.payload,
                probes=self.probes or {},
                anchors=self.anchors or frozenset(),
                strict=self.config.strict_mode,
                requested_at=ctx.envelope.time,
            )
        except RETRIED:
            raise  # Redis unreachable: the delivery loop tries again
        except Exception as exc:
            log.exception("planner.crashed", file=ctx.payload.file)
            payloads = crash_payloads(ctx.payload, exc)
        envelopes = [self.envelope_for(p, cause=ctx.envelope) for p in payloads]
        await self.runtime.publisher.publish_many(envelopes)
        await self.dags.record(envelopes)  # after publishing: a graph outage never holds a plan up
        outcome = getattr(payloads[-1], "outcome", "")
        log.info("planner.planned", file=ctx.payload.file, result=envelopes[-1].type, outcome=outcome)

    async def rate_limit(self, ctx: Context[ExtractRequest]) -> Decision | None:
        """The refusal when the requester (the envelope's ``auth``, else the request's ``requester``)
        is over the policy file's rate limit for extraction requests; None when admitted."""
        if self.limiter is None:
            return None
        envelope = ctx.envelope
        request = Request(
            type=envelope.type,
            requester=envelope.auth or ctx.payload.requester,
            agent=agent_of(envelope.source),
            envelope_id=envelope.id,
        )
        decision = await self.limiter.check(request)
        return decision if decision.denied else None


__all__ = [
    "REQUEST_STREAM",
    "PlannerAgent",
    "RequestError",
    "crash_payloads",
    "plan_request",
    "refusal_payloads",
    "request_text",
    "stamp_of",
]
