"""Rate limits where their types are consumed: a middleware of the agent that handles them.

Every limit of the policy file (``rate_limits``) is checked by the consumer of the
agent whose envelopes it limits (the SymPy worker for ``l9.sympy.*``), before its
handler sees one, in the same Redis sliding windows as every other process
(:class:`~governance.RateLimiter`). A redelivered envelope is not counted twice (its
id is the window's member). The auditor and the lineage projector, which read every
stream, never install it: an envelope is counted once, by the agent meant to act on it.

A refused envelope is acknowledged without reaching the handler:

* a request with a ``reply_to`` is answered at once with an error reply
  (``ErrorReply(error="governance.rate_limited", detail="rate limited by ID (...),
  retry after N s")``): the caller's ``RpcClient.call`` raises ``RemoteError``;
* anything else (an event, a request nobody waits for) is logged
  (``governance.rate_limited``) and left unhandled. Its envelope stays on its stream,
  and in the audit trail, like every other; nothing is dead-lettered, so a flood never
  fills a dead-letter stream.

An agent that applies the limits on its types itself, with an answer of its own
(the planner: ``l9.plan.rejected.v1``), runs without the gate::

    gate = RateLimitGate(redis, keys, policy.rate_limits, runtime.publisher, source=runtime.source)
    StreamConsumer(..., middlewares=[gate] if gate.limits else [])
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from bus import Delivery, ErrorReply, Handler, Keys, Publisher, send_reply
from bus.connection import RedisClient
from envelope import PacketEnvelope, registry

from ._config import RateLimitSpec
from ._decision import Decision
from ._ratelimit import RateLimiter
from ._subjects import Request

#: The ``error`` of the reply to a request refused by a rate limit.
RATE_LIMITED = "governance.rate_limited"
log = structlog.get_logger("l9.governance.gate")


class RateLimitGate:
    """The consumer middleware (``async (delivery, call_next)``) that applies ``limits``."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        limits: Sequence[RateLimitSpec],
        publisher: Publisher,
        *,
        source: str,
    ) -> None:
        self.limiter = RateLimiter(redis, keys, limits)
        self.publisher, self.source = publisher, source

    @property
    def limits(self) -> tuple[RateLimitSpec, ...]:
        return self.limiter.limits

    async def __call__(self, d: Delivery, call_next: Handler) -> None:
        envelope = d.envelope
        if not self.limiter.limits_for(envelope.type):
            await call_next(d)
            return
        decision = await self.limiter.check(Request.from_envelope(envelope))
        if decision.allowed:
            await call_next(d)
            return
        await self.refuse(envelope, decision)

    async def refuse(self, envelope: PacketEnvelope, decision: Decision) -> PacketEnvelope | None:
        """Answer a refused request (its error reply, returned), or only log a refused event."""
        reply = None
        if envelope.reply_to:
            reply = self.reply_to(envelope, decision)
            if await send_reply(self.publisher, envelope, reply) is None:  # not an rpc.* stream
                reply = None
        log.info(
            "governance.rate_limited",
            policy=decision.policy,
            reason=decision.reason,
            retry_after_s=decision.retry_after_s,
            answered=reply is not None,
        )
        return reply

    def reply_to(self, envelope: PacketEnvelope, decision: Decision) -> PacketEnvelope:
        """The error reply to a refused request, caused by it and in its run."""
        error = ErrorReply(error=RATE_LIMITED, detail=decision.reason)
        return PacketEnvelope.new(
            type=registry.type_of(ErrorReply),
            source=self.source,
            data=error.model_dump(mode="json"),
            kind="error",
            correlation_id=envelope.correlation_id,
            causation_id=envelope.id,
            in_reply_to=envelope.id,
        )
