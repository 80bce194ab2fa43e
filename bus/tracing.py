"""W3C trace context on the bus: spans per the OpenTelemetry messaging conventions.

Off until :func:`enable` is given a tracer provider (``l9.telemetry`` does it when the
standard ``OTEL_TRACES_EXPORTER`` names an exporter): until then nothing here runs on the
hot path (the publisher and ``execute_many`` test one module global, the consumer's
chain has no tracing step), and envelopes go out without a ``traceparent``.

Once on:

* a publish is a PRODUCER span ``send {stream}`` per stream it writes to (siblings; one
  of many envelopes carries ``messaging.batch.message_count``), child of the current span
  or, with none, of the stream's first envelope's own ``traceparent``; every envelope
  carries its stream's span context in its ``traceparent`` / ``tracestate`` fields,
  signed with it (one signed already keeps its own);
* a delivery is a CONSUMER span ``process {stream}`` (:func:`trace_step`, in the chain
  once the envelope's signature held), child of the envelope's ``traceparent``: the
  handler runs in it, so what it emits, replies or calls continues the trace; an error or
  a refusal (a dead letter) marks it failed;
* a batch handled at once (the auditor's commit) is one CONSUMER span with a link to the
  context of each envelope it holds (:func:`batch_span`);
* a dead letter is a span ``dead_letter {stream}`` in the envelope's trace, or a trace of
  its own when its envelope is not known to be genuine (:func:`dead_lettered`);
* a round trip of :func:`bus.connection.execute_many` (the bus's own pipelined path,
  outside redis-py's command layer) inside one of those is a CLIENT span named after its
  commands (:func:`redis_span`); commands sent through redis-py itself are not spanned
  (its instrumentation would make every idle blocking read a trace of its own).

Log lines carry ``trace_id`` and ``span_id`` of the current span
(:func:`add_trace_ids`, a structlog processor).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.typing import EventDict

from .errors import DeadLetter

if TYPE_CHECKING:
    from envelope import PacketEnvelope

    from .consumer import Delivery, Handler
    from .middleware import Middleware

#: ``messaging.system``: what carries the messages (the value FastStream uses for Redis).
SYSTEM = "redis"
#: The most links a batch span carries (the SDK's default span limit).
MAX_LINKS = 128

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None


def enable(provider: trace.TracerProvider) -> None:
    """Trace the bus with ``provider``'s tracer from now on (consumers built from now on)."""
    global _tracer
    _tracer = provider.get_tracer("l9.bus")


def disable() -> None:
    """Stop tracing (consumers built before keep their step, which then traces nothing)."""
    global _tracer
    _tracer = None


def tracer() -> trace.Tracer | None:
    """The bus's tracer, None while tracing is off."""
    return _tracer


def parent_of(envelope: PacketEnvelope) -> otel_context.Context | None:
    """The trace context an envelope carries (None: it carries none, or a malformed one)."""
    if not envelope.traceparent:
        return None
    carrier = {"traceparent": envelope.traceparent}
    if envelope.tracestate:
        carrier["tracestate"] = envelope.tracestate
    ctx = _PROPAGATOR.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def span_context_of(envelope: PacketEnvelope) -> trace.SpanContext | None:
    ctx = parent_of(envelope)
    return None if ctx is None else trace.get_current_span(ctx).get_span_context()


# -- publishing --------------------------------------------------------------------------------


@contextmanager
def send_spans(
    by_stream: dict[str, list[PacketEnvelope]],
) -> Iterator[dict[str, tuple[str, str | None]]]:
    """The PRODUCER spans of publishing ``by_stream`` (envelopes by the stream they go to),
    one per stream, siblings: yields, per stream, the (traceparent, tracestate) its envelopes
    are to carry (empty when tracing is off). With one stream, its span is the current one
    for the block (the round trip's span goes inside it). A failure marks them all failed."""
    tracer_ = _tracer
    if tracer_ is None or not by_stream:
        yield {}
        return
    current = otel_context.get_current()
    spans: list[trace.Span] = []
    carried: dict[str, tuple[str, str | None]] = {}
    for stream, envelopes in by_stream.items():
        parent = current
        if not trace.get_current_span(current).get_span_context().is_valid:
            parent = parent_of(envelopes[0]) or current
        attributes = _send_attributes(stream, envelopes)
        kind = SpanKind.PRODUCER
        span = tracer_.start_span(f"send {stream}", context=parent, kind=kind, attributes=attributes)
        spans.append(span)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span, parent))
        carried[stream] = (carrier["traceparent"], carrier.get("tracestate"))
    token = otel_context.attach(trace.set_span_in_context(spans[0])) if len(spans) == 1 else None
    try:
        yield carried
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        if token is not None:
            otel_context.detach(token)
        for span in spans:
            span.end()


def _send_attributes(stream: str, envelopes: Sequence[PacketEnvelope]) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": stream,
    }
    if len(envelopes) == 1:
        attributes["messaging.message.id"] = envelopes[0].id
        attributes["messaging.message.conversation_id"] = envelopes[0].correlation_id
        attributes["l9.envelope.type"] = envelopes[0].type
    else:
        attributes["messaging.batch.message_count"] = len(envelopes)
    return attributes


def traced(
    envelopes: Sequence[PacketEnvelope], streams: Sequence[str], carried: dict[str, tuple[str, str | None]]
) -> list[PacketEnvelope]:
    """``envelopes`` (going to ``streams``, one each) carrying the trace context of their
    stream's send span (copies, the same ids); one signed already keeps what it carries (its
    signature covers it)."""
    out = []
    for envelope, stream in zip(envelopes, streams, strict=True):
        context = carried.get(stream)
        if context is None or envelope.signature is not None:
            out.append(envelope)
        else:
            update = {"traceparent": context[0], "tracestate": context[1]}
            out.append(envelope.model_copy(update=update))
    return out


# -- consuming ---------------------------------------------------------------------------------


def _process_attributes(d: Delivery, group: str) -> dict[str, Any]:
    env = d.envelope
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": d.stream,
        "messaging.consumer.group.name": group,
        "messaging.message.id": env.id,
        "messaging.message.conversation_id": env.correlation_id,
        "l9.envelope.type": env.type,
        "l9.entry_id": d.entry_id,
        "l9.attempt": d.attempt,
        "l9.source": env.source,
    }


def trace_step(group: str) -> Middleware:
    """The chain's step that handles each delivery in a CONSUMER span ``process {stream}``,
    child of the trace context its envelope carries (see the module doc)."""

    async def traced_delivery(d: Delivery, call_next: Handler) -> None:
        tracer_ = _tracer
        if tracer_ is None:
            await call_next(d)
            return
        with tracer_.start_as_current_span(
            f"process {d.stream}",
            context=parent_of(d.envelope),
            kind=SpanKind.CONSUMER,
            attributes=_process_attributes(d, group),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await call_next(d)
            except DeadLetter as refusal:
                span.set_attribute("l9.dead_letter.reason", refusal.reason)
                span.set_status(Status(StatusCode.ERROR, f"dead letter: {refusal.reason}"))
                raise
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            if d.repeat is not None:
                span.set_attribute("l9.repeat", True)

    return traced_delivery


def batch_span(
    name: str, group: str, carried: Sequence[tuple[str, str | None, str | None]], **attributes: Any
) -> Any:
    """A context manager: the CONSUMER span ``name`` of handling many envelopes at once,
    linked to the trace context each carries (``carried``: (envelope id, traceparent,
    tracestate); at most :data:`MAX_LINKS` links); nothing when off."""
    tracer_ = _tracer
    if tracer_ is None:
        return nullcontext()
    links = []
    for envelope_id, traceparent, tracestate in carried:
        if not traceparent:
            continue
        carrier = {"traceparent": traceparent}
        if tracestate:
            carrier["tracestate"] = tracestate
        context = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
        if context.is_valid:
            links.append(Link(context, {"messaging.message.id": envelope_id}))
            if len(links) >= MAX_LINKS:
                break
    return tracer_.start_as_current_span(
        name,
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": group,
            "messaging.batch.message_count": len(carried),
            **attributes,
        },
    )


#: Dead-letter reasons that leave an envelope's trace context unproven (forged, or unread):
#: their span starts a trace of its own, not one a forger names.
UNPROVEN = frozenset({"undecodable", "invalid_envelope", "bad_signature"})


def dead_lettered(d: Delivery, group: str, reason: str, detail: str) -> None:
    """A span ``dead_letter {stream}``: ``d`` was set aside. In the trace of its envelope,
    unless the reason leaves the envelope unproven (:data:`UNPROVEN`)."""
    tracer_ = _tracer
    if tracer_ is None:
        return
    attributes = _process_attributes(d, group)
    attributes.update({"messaging.operation.type": "settle", "messaging.operation.name": "dead_letter"})
    attributes.update({"l9.dead_letter.reason": reason, "l9.dead_letter.detail": detail[:500]})
    with tracer_.start_as_current_span(
        f"dead_letter {d.stream}",
        context=otel_context.Context() if reason in UNPROVEN else parent_of(d.envelope),
        kind=SpanKind.PRODUCER,
        attributes=attributes,
    ) as span:
        span.set_status(Status(StatusCode.ERROR, f"dead letter: {reason}"))


# -- Redis round trips -------------------------------------------------------------------------


def redis_span(commands: Sequence[Sequence[Any]], where: str | None = None) -> Any:
    """A context manager: the CLIENT span of one ``execute_many`` round trip made inside a
    traced operation (a publish, a handler), named after its distinct commands (``redis XADD
    SADD``); nothing when off or outside one (acks, heartbeats: no trace of their own)."""
    tracer_ = _tracer
    if tracer_ is None or not trace.get_current_span().get_span_context().is_valid:
        return nullcontext()
    names: list[str] = []
    for command in commands:
        word = command[0]
        name = (word.decode() if isinstance(word, bytes | bytearray) else str(word)).upper()
        if name not in names:
            names.append(name)
            if len(names) >= 8:
                break
    attributes: dict[str, Any] = {
        "db.system.name": "redis",
        "db.operation.name": " ".join(names),
        "db.operation.batch.size": len(commands),
    }
    if where:
        attributes["server.address"] = where
    return tracer_.start_as_current_span(
        f"redis {' '.join(names)}", kind=SpanKind.CLIENT, attributes=attributes
    )


# -- logs -------------------------------------------------------------------------------------


def add_trace_ids(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: ``trace_id`` and ``span_id`` (hex) of the current span, while
    tracing is on and a span is current."""
    if _tracer is None:
        return event_dict
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict
