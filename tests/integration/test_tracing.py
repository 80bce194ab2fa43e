"""W3C trace context across the bus's hops, against the real Redis (``bus.tracing``).

Spans go to the OpenTelemetry SDK's in-memory exporter: a publish is a PRODUCER span whose
context the envelopes carry, a delivery a CONSUMER span child of it, and what a handler
emits, replies or dead-letters stays in the same trace. Off (the default), envelopes carry
no trace context and no span is made."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import bus.tracing
from agents import Agent, Context, Runtime, handles
from agents.auditor.agent import prepare_batch
from bus import Entry, Keys, Publisher, RpcClient, StreamConsumer
from bus.connection import RedisClient
from envelope import PacketEnvelope, Signer, Verifier, decode, decode_envelope, encode
from tests.conftest import FAST, stream_entries, wait_for
from tests.integration.ledger import Ping, Pong, Work

pytestmark = pytest.mark.integration
EMITTED = "traced-out"


class Tracer(Agent):
    """Emits n + 1 Pongs for Work n, fails its first ``fail_times`` attempts; answers a Ping."""

    name = "tracer"
    consumes = ("test",)

    @handles(Work)
    async def on_work(self, ctx: Context[Work]) -> None:
        for i in range(ctx.payload.n + 1):
            await ctx.emit(Pong(text=str(i), by=str(ctx.attempt)), stream=EMITTED)
        if ctx.attempt <= ctx.payload.fail_times:
            raise RuntimeError("fails on purpose")

    @handles(Ping)
    async def on_ping(self, ctx: Context[Ping]) -> None:
        await ctx.reply(Pong(text=ctx.payload.text, by="tracer"))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus.tracing.enable(provider)
    try:
        yield exporter
    finally:
        bus.tracing.disable()
        provider.shutdown()


def consumer(redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier) -> StreamConsumer:
    runtime = Runtime(
        redis=redis, keys=keys, signer=signer, verifier=verifier, agent="tracer", instance="t-0"
    )
    agent = Tracer(runtime)
    return StreamConsumer(
        redis, keys, group="tracer", consumer="t-0", streams=["test"], handler=agent.handle,
        verifier=verifier, policy=FAST,
    )  # fmt: skip


def work(n: int, fail_times: int = 0) -> PacketEnvelope:
    return PacketEnvelope.new(
        type="l9.test.work.v1", source="agent://test/p", data=Work(n=n, fail_times=fail_times).model_dump()
    )


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def context_of(envelope: PacketEnvelope) -> trace.SpanContext:
    context = bus.tracing.span_context_of(envelope)
    assert context is not None, envelope
    return context


async def read(redis: RedisClient, keys: Keys, stream: str, verifier: Verifier) -> list[PacketEnvelope]:
    return [
        decode(fields, verifier)[0] for _, fields in stream_entries(await redis.xrange(keys.stream(stream)))
    ]


async def run_until(c: StreamConsumer, done: Callable[[], object]) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.run)
        await wait_for(done, timeout=60)
        c.stop()


async def test_publish_process_and_emit_are_one_trace_of_linked_spans(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, spans: InMemorySpanExporter
) -> None:
    await Publisher(redis, keys, signer).publish(work(1), "test")
    c = consumer(redis, keys, signer, verifier)

    async def emitted() -> bool:
        return len(await read(redis, keys, EMITTED, verifier)) == 2 and not c.in_flight

    await run_until(c, emitted)

    (request,) = await read(redis, keys, "test", verifier)
    (send,) = [s for s in named(spans, "send test") if s.kind is SpanKind.PRODUCER]
    assert context_of(request).span_id == send.context.span_id  # what the envelope carries
    assert send.attributes is not None and send.attributes["messaging.message.id"] == request.id

    (process,) = named(spans, "process test")
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id
    assert process.attributes is not None
    assert process.attributes["messaging.destination.name"] == "test"
    assert process.attributes["messaging.consumer.group.name"] == "tracer"
    assert process.attributes["messaging.message.id"] == request.id
    assert process.status.status_code is not StatusCode.ERROR

    out = await read(redis, keys, EMITTED, verifier)
    sends = named(spans, f"send {EMITTED}")
    assert len(sends) == 2
    for envelope in out:  # each emit: a PRODUCER span in the handler's span, carried
        carried = context_of(envelope)
        assert carried.trace_id == send.context.trace_id
        (its,) = [s for s in sends if s.context.span_id == carried.span_id]
        assert its.parent is not None and its.parent.span_id == process.context.span_id

    client_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert any(  # the publish's round trip (execute_many bypasses redis-py): a span in the send's
        s.parent is not None and s.parent.span_id == send.context.span_id and "XADD" in s.name
        for s in client_spans
    ), [(s.name, s.parent) for s in client_spans]


async def test_a_failed_attempt_and_its_retry_are_spans_of_the_same_trace(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, spans: InMemorySpanExporter
) -> None:
    await Publisher(redis, keys, signer).publish(work(0, fail_times=1), "test")
    c = consumer(redis, keys, signer, verifier)
    await run_until(c, lambda: len(named(spans, "process test")) == 2 and not c.in_flight)

    first, second = sorted(named(spans, "process test"), key=lambda s: s.start_time or 0)
    assert first.context.trace_id == second.context.trace_id
    assert first.attributes is not None and first.attributes["l9.attempt"] == 1
    assert second.attributes is not None and second.attributes["l9.attempt"] == 2
    assert first.status.status_code is StatusCode.ERROR
    assert "RuntimeError: fails on purpose" in (first.status.description or "")
    assert [e.name for e in first.events] == ["exception"]
    assert second.status.status_code is not StatusCode.ERROR


async def test_a_dead_letter_is_a_failed_process_span_and_a_dead_letter_span_in_its_trace(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, spans: InMemorySpanExporter
) -> None:
    # The payload fails validation: dead-lettered at once.
    bad = PacketEnvelope.new(type="l9.test.work.v1", source="agent://test/p", data={"n": "not a number"})
    await Publisher(redis, keys, signer).publish(bad, "test")
    c = consumer(redis, keys, signer, verifier)
    await run_until(c, lambda: named(spans, "dead_letter test") and not c.in_flight)

    (process,) = named(spans, "process test")
    (dead,) = named(spans, "dead_letter test")
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes is not None
    assert process.attributes["l9.dead_letter.reason"] == "invalid_payload"
    ((_, fields),) = stream_entries(await redis.xrange(keys.stream("test")))
    sent = decode_envelope(fields, verifier)  # the envelope only: its payload is what is refused
    assert dead.context.trace_id == process.context.trace_id == context_of(sent).trace_id
    assert dead.attributes is not None and dead.attributes["l9.dead_letter.reason"] == "invalid_payload"


async def test_a_forged_envelope_naming_a_trace_gets_no_span_in_it(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, spans: InMemorySpanExporter
) -> None:
    victim = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
    forged = work(0).model_copy(update={"traceparent": victim})
    await redis.xadd(keys.stream("test"), encode(forged, Signer({"dev": b"not the key"}, "dev")))  # type: ignore[arg-type]
    c = consumer(redis, keys, signer, verifier)
    await run_until(c, lambda: named(spans, "dead_letter test") and not c.in_flight)

    assert named(spans, "process test") == []  # refused before its trace context is believed
    (dead,) = named(spans, "dead_letter test")
    assert dead.attributes is not None and dead.attributes["l9.dead_letter.reason"] == "bad_signature"
    assert dead.parent is None and dead.context.trace_id != int(victim.split("-")[1], 16)


async def test_an_rpc_reply_continues_the_callers_trace(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, spans: InMemorySpanExporter
) -> None:
    c = consumer(redis, keys, signer, verifier)
    provider_tracer = bus.tracing.tracer()
    assert provider_tracer is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(c.run)
        await c.wait_started()
        async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
            with provider_tracer.start_as_current_span("caller") as caller:
                reply, pong = await rpc.call(
                    Ping(text="hi"), source="agent://test/caller", deadline_s=30, stream="test"
                )
        c.stop()
    assert isinstance(pong, Pong) and pong.text == "hi"
    carried = context_of(reply)
    assert carried.trace_id == caller.get_span_context().trace_id
    (process,) = named(spans, "process test")
    assert process.context.trace_id == caller.get_span_context().trace_id


async def test_off_no_span_is_made_and_envelopes_carry_no_trace_context(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus.tracing.enable(provider)
    bus.tracing.disable()  # on, then off again: as a process that never turned it on
    c = consumer(redis, keys, signer, verifier)
    assert [m.__name__ for m in c.middlewares if "trace" in m.__name__] == []
    await Publisher(redis, keys, signer).publish(work(0), "test")

    async def emitted() -> bool:
        return len(await read(redis, keys, EMITTED, verifier)) == 1 and not c.in_flight

    await run_until(c, emitted)
    for envelope in [*await read(redis, keys, "test", verifier), *await read(redis, keys, EMITTED, verifier)]:
        assert envelope.traceparent is None and envelope.tracestate is None
    assert exporter.get_finished_spans() == ()


def test_log_lines_carry_the_current_trace_and_span_ids(spans: InMemorySpanExporter) -> None:
    tracer = bus.tracing.tracer()
    assert tracer is not None
    assert bus.tracing.add_trace_ids(None, "info", {"event": "outside"}) == {"event": "outside"}
    with tracer.start_as_current_span("work") as span:
        line = bus.tracing.add_trace_ids(None, "info", {"event": "inside"})
    context = span.get_span_context()
    assert line == {
        "event": "inside",
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
    }


async def test_an_audit_batch_is_one_span_linked_to_the_trace_of_each_envelope(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, spans: InMemorySpanExporter
) -> None:
    tracer = bus.tracing.tracer()
    assert tracer is not None
    publisher = Publisher(redis, keys, signer)
    for text in ("a", "b"):  # two traces
        with tracer.start_as_current_span(f"origin {text}"):
            ping = Ping(text=text).model_dump()
            await publisher.publish(
                PacketEnvelope.new(type="l9.test.ping.v1", source="agent://test/p", data=ping), "test"
            )
    rows = stream_entries(await redis.xrange(keys.stream("test")))
    batch = [Entry("test", entry_id.decode(), fields, 1) for entry_id, fields in rows]
    prepared = prepare_batch(batch, verifier)
    sent = [decode_envelope(fields, verifier) for _, fields in rows]
    assert prepared.traced == [(e.id, e.traceparent, e.tracestate) for e in sent]
    with bus.tracing.batch_span("audit commit", "auditor", prepared.traced):
        pass
    (commit,) = named(spans, "audit commit")
    assert commit.kind is SpanKind.CONSUMER
    assert [(link.context.trace_id, link.context.span_id) for link in commit.links] == [
        (context_of(e).trace_id, context_of(e).span_id) for e in sent
    ]
    origins = {s.context.trace_id for s in spans.get_finished_spans() if s.name.startswith("origin")}
    assert {link.context.trace_id for link in commit.links} == origins and len(origins) == 2

    bus.tracing.disable()
    assert prepare_batch(batch, verifier).traced == []  # off: nothing collected


async def test_a_batch_to_several_streams_is_one_send_span_per_stream_each_carried_by_its_own(
    redis: RedisClient, keys: Keys, signer: Signer, spans: InMemorySpanExporter
) -> None:
    tracer = bus.tracing.tracer()
    assert tracer is not None
    publisher = Publisher(redis, keys, signer)
    batch = [
        PacketEnvelope.new(type=f"l9.{area}.thing.v1", source="agent://test/p", data={"i": i})
        for i, area in enumerate(("plan", "schema", "plan"))
    ]
    streams = [publisher.stream_of(e) for e in batch]
    assert streams[0] == streams[2] != streams[1]
    with tracer.start_as_current_span("caller") as caller:
        await publisher.publish_many(batch)
    sends = {s.name: s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER}
    assert set(sends) == {f"send {streams[0]}", f"send {streams[1]}"}
    for send in sends.values():  # siblings, both children of the caller
        assert send.parent is not None and send.parent.span_id == caller.get_span_context().span_id
    assert sends[f"send {streams[0]}"].attributes == {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": streams[0],
        "messaging.batch.message_count": 2,
    }
    for stream in set(streams):
        for _, fields in stream_entries(await redis.xrange(keys.stream(stream))):
            carried = context_of(decode_envelope(fields, None))
            assert carried.span_id == sends[f"send {stream}"].context.span_id
