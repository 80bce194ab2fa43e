"""The base Agent: what it consumes, a handler per payload type, and emitting.

    class Squarer(Agent):
        name = "squarer"
        consumes = ("demo.tasks",)

        @handles(Task)
        async def on_task(self, ctx: Context[Task]) -> None:
            await ctx.emit(Result(n=ctx.payload.n, square=ctx.payload.n ** 2))

Whatever a handler emits carries the run's ``correlation_id`` and points at
the envelope it handled by ``causation_id``; nothing needs to set them. It is
published with the delivery's acknowledgement, in the same round trip (see
:meth:`Context.emit`).

Its id is derived from the envelope handled (``bus.dedupe.derived_id``: that
envelope's id, the agent, the emitted type, and how many envelopes of that type
the handler emitted before), not drawn afresh: a handler retried after a crash
between its emit and its ack emits the same ids, and the audit trail, the
consumers' windows of handled ids and any idempotent reader drop the repeat. That
holds for ``ctx.emit`` (``now=True`` too), ``ctx.reply`` and ``ctx.fail``, and for
``agent.envelope_for(payload, cause=ctx.envelope)`` called while the handler runs
(in any task it started). A handler that emits the same types in the same order
on every attempt gets the same ids on every attempt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, ClassVar, Generic, TypeVar

import structlog

from bus import Delivery, ErrorReply, send_reply
from bus.dedupe import derived_id
from envelope import Kind, PacketEnvelope, Payload

from .runtime import Runtime

P = TypeVar("P", bound=Payload)
A = TypeVar("A", bound="Agent")
HandlerMethod = Callable[[A, "Context[Any]"], Awaitable[None]]
log = structlog.get_logger("l9.agent")
#: The handler invocation under way (``Agent.handle`` sets it): what it emits is numbered there.
_HANDLING: ContextVar[Context[Any] | None] = ContextVar("l9_handling", default=None)


def handles(*models: type[Payload]) -> Callable[[HandlerMethod[A]], HandlerMethod[A]]:
    """Mark an agent method as the handler of these payload types."""

    def mark(method: HandlerMethod[A]) -> HandlerMethod[A]:
        method.__l9_handles__ = models  # type: ignore[attr-defined]
        return method

    return mark


class Context(Generic[P]):
    """A handler's view of one delivery, and how it answers."""

    def __init__(self, agent: Agent, delivery: Delivery) -> None:
        self.agent = agent
        self.delivery = delivery
        self.envelope = delivery.envelope
        self.payload: P = delivery.payload  # type: ignore[assignment]
        self.attempt = delivery.attempt
        self._emitted: dict[str, int] = {}  # envelope type -> how many this invocation emitted

    def next_id(self, type_: str) -> str:
        """The id of the next envelope of type ``type_`` this handler emits: derived from the
        envelope handled, the agent, the type and how many of that type went before, so the
        same on every attempt (see the module doc)."""
        n = self._emitted.get(type_, 0)
        self._emitted[type_] = n + 1
        return derived_id(self.envelope.id, self.agent.runtime.agent, type_, n)

    def envelope_for(self, payload: Payload, *, kind: Kind = "event", **fields: Any) -> PacketEnvelope:
        """The envelope of ``payload`` as this handler emits it: in the run of the envelope
        handled, pointing at it, its id derived (:meth:`next_id`). Not published."""
        envelope = self.agent._envelope(payload, self.envelope, kind, fields)
        return envelope.model_copy(update={"id": self.next_id(envelope.type)})

    async def emit(
        self, payload: Payload, *, stream: str | None = None, now: bool = False, **fields: Any
    ) -> PacketEnvelope:
        """Publish ``payload`` as caused by the envelope being handled.

        It goes out once the handler has returned, with the delivery's acknowledgement: the
        handler's envelopes and its XACK in one MULTI/EXEC, in one round trip however many
        it emits (:meth:`bus.Delivery.publish_with_ack`). A handler that fails publishes
        nothing, and a retry does not find a first attempt's envelopes already out.
        ``now=True`` publishes at once instead: progress that someone watching should see
        before the handler ends. Either way its id is derived (:meth:`next_id`): a retry
        emits the same envelope ids.
        """
        envelope = self.envelope_for(payload, **fields)
        if now:
            await self.agent.runtime.publisher.publish(envelope, stream)
        else:
            self.delivery.publish_with_ack(self.agent.runtime.publisher, [envelope], stream)
        return envelope

    async def reply(self, payload: Payload, *, kind: Kind = "response") -> PacketEnvelope:
        """Answer a request on its reply stream (its id derived, as for :meth:`emit`)."""
        envelope = self.envelope_for(payload, kind=kind, in_reply_to=self.envelope.id)
        await send_reply(self.agent.runtime.publisher, self.envelope, envelope)
        return envelope

    def with_ack(self, *commands: tuple[Any, ...]) -> None:
        """Redis commands to send with this delivery's acknowledgement, after the handler
        returned, in the same round trip (:meth:`bus.Delivery.with_ack`)."""
        self.delivery.with_ack(*commands)

    async def fail(self, error: str, detail: str = "") -> PacketEnvelope:
        """Answer a request with an error; the caller's ``call`` raises RemoteError."""
        return await self.reply(ErrorReply(error=error, detail=detail), kind="error")


class Agent:
    """Subclass, set ``name`` and ``consumes``, decorate handlers with ``@handles``."""

    name: ClassVar[str] = "agent"
    consumes: ClassVar[tuple[str, ...]] = ()
    #: True: its handlers apply the policy's rate limits themselves (the planner), so its
    #: consumer runs without the rate-limit gate (``governance.RateLimitGate``).
    checks_own_rate_limits: ClassVar[bool] = False
    _handlers: ClassVar[dict[type[Payload], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type[Payload], str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                for model in getattr(value, "__l9_handles__", ()):
                    table[model] = attr
        cls._handlers = table

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.log = log.bind(agent=self.name, instance=runtime.instance)

    async def on_start(self) -> None:
        """Called once before the first envelope is read."""

    async def on_stop(self) -> None:
        """Called once after the last envelope was handled."""

    async def handle(self, delivery: Delivery) -> None:
        attr = self._handlers.get(type(delivery.payload))
        if attr is None:
            self.log.debug("agent.not_handled", type=delivery.envelope.type)
            return
        ctx: Context[Any] = Context(self, delivery)
        token = _HANDLING.set(ctx)
        try:
            await getattr(self, attr)(ctx)
        finally:
            _HANDLING.reset(token)

    def envelope_for(
        self, payload: Payload, *, cause: PacketEnvelope | None = None, kind: Kind = "event", **fields: Any
    ) -> PacketEnvelope:
        """The envelope of ``payload`` from this agent; with ``cause``, in its run and pointing
        at it. Caused by the envelope a handler of this agent is handling, its id is derived
        (:meth:`Context.next_id`); otherwise it is a fresh UUIDv7."""
        handling = _HANDLING.get()
        if (
            cause is not None
            and handling is not None
            and handling.agent is self
            and handling.envelope.id == cause.id
        ):
            return handling.envelope_for(payload, kind=kind, **fields)
        return self._envelope(payload, cause, kind, fields)

    def _envelope(
        self, payload: Payload, cause: PacketEnvelope | None, kind: Kind, fields: dict[str, Any]
    ) -> PacketEnvelope:
        rt = self.runtime
        return PacketEnvelope.new(
            type=rt.types.type_of(type(payload)),
            source=rt.source,
            data=payload.model_dump(mode="json"),
            correlation_id=cause.correlation_id if cause else fields.pop("correlation_id", None),
            causation_id=cause.id if cause else None,
            kind=kind,
            sequence=rt.next_sequence(),
            **fields,
        )

    async def emit(
        self,
        payload: Payload,
        *,
        cause: PacketEnvelope | None = None,
        stream: str | None = None,
        **fields: Any,
    ) -> PacketEnvelope:
        """Publish ``payload``; with ``cause``, in its run and pointing at it."""
        envelope = self.envelope_for(payload, cause=cause, **fields)
        await self.runtime.publisher.publish(envelope, stream)
        return envelope
