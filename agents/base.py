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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

import structlog

from bus import Delivery, ErrorReply, send_reply
from envelope import Kind, PacketEnvelope, Payload

from .runtime import Runtime

P = TypeVar("P", bound=Payload)
A = TypeVar("A", bound="Agent")
HandlerMethod = Callable[[A, "Context[Any]"], Awaitable[None]]
log = structlog.get_logger("l9.agent")


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

    async def emit(
        self, payload: Payload, *, stream: str | None = None, now: bool = False, **fields: Any
    ) -> PacketEnvelope:
        """Publish ``payload`` as caused by the envelope being handled.

        It goes out once the handler has returned, with the delivery's acknowledgement: the
        handler's envelopes and its XACK in one MULTI/EXEC, in one round trip however many
        it emits (:meth:`bus.Delivery.publish_with_ack`). A handler that fails publishes
        nothing, and a retry does not find a first attempt's envelopes already out.
        ``now=True`` publishes at once instead: progress that someone watching should see
        before the handler ends.
        """
        if now:
            return await self.agent.emit(payload, cause=self.envelope, stream=stream, **fields)
        envelope = self.agent.envelope_for(payload, cause=self.envelope, **fields)
        self.delivery.publish_with_ack(self.agent.runtime.publisher, [envelope], stream)
        return envelope

    async def reply(self, payload: Payload, *, kind: Kind = "response") -> PacketEnvelope:
        """Answer a request on its reply stream."""
        envelope = self.agent.envelope_for(
            payload, cause=self.envelope, kind=kind, in_reply_to=self.envelope.id
        )
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
        await getattr(self, attr)(Context(self, delivery))

    def envelope_for(
        self, payload: Payload, *, cause: PacketEnvelope | None = None, kind: Kind = "event", **fields: Any
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
