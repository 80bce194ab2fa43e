"""bus.metrics and the verdicts of l9.admin, without Redis servers: the counters move with what the
loops do to entries, and /healthz says which loop is stuck."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import fakeredis
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

import bus.metrics
from bus import DeadLetter, Delivery, DeliveryPolicy, Entry, Keys, Rejected, Staged, StreamConsumer
from bus.connection import RedisClient
from bus.consumer import UNDECODED, UNTYPED
from bus.metrics import BATCH_TYPES, BatchMetrics, DeliveryMetrics
from envelope import PacketEnvelope, Payload, Signer, Verifier, encode, payload
from l9.admin import Admin, Loop, stale_after_s

KEYRING = {"k": b"metrics-unit-secret"}
SIGNER = Signer(KEYRING, "k")
TYPE = "l9.unit.measured.v1"
POLICY = DeliveryPolicy(max_in_flight=8, concurrency=2, max_deliveries=3, dedupe_window_s=0)


@payload(TYPE)
class Measured(Payload):
    outcome: str = "ok"


@pytest.fixture
async def fake() -> AsyncIterator[RedisClient]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


@pytest.fixture
def group() -> str:
    """A group of its own per test: the metrics live in the process-wide default registry."""
    return f"g{uuid.uuid4().hex[:8]}"


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def entry_fields(outcome: str = "ok", type_: str = TYPE) -> dict[bytes, bytes]:
    envelope = PacketEnvelope.new(type=type_, source="agent://unit/0", data={"outcome": outcome})
    return {k.encode(): v.encode() if isinstance(v, str) else v for k, v in encode(envelope, SIGNER).items()}


async def handler(d: Delivery) -> None:
    outcome = d.envelope.data["outcome"]
    if outcome == "fail":
        raise RuntimeError("planned failure")
    if outcome == "refuse":
        raise DeadLetter("refused_by_handler", "the handler wants none of it")


def measured_consumer(fake: RedisClient, group: str) -> tuple[StreamConsumer, DeliveryMetrics]:
    metrics = DeliveryMetrics(group)
    consumer = StreamConsumer(
        fake,
        Keys("u"),
        group=group,
        consumer="c-0",
        streams=["unit"],
        handler=handler,
        verifier=Verifier(KEYRING),
        policy=POLICY,
        metrics=metrics,
    )
    return consumer, metrics


async def deliver(consumer: StreamConsumer, fields: dict[bytes, bytes], attempt: int = 1) -> None:
    entry_id = f"{uuid.uuid4().int % 10**9}-0"
    consumer.in_flight[("unit", entry_id)] = 0.0
    await consumer._process(Delivery("unit", entry_id, UNDECODED, UNTYPED, attempt, fields))


async def test_the_counters_follow_handled_failed_retried_and_dead_lettered_entries(
    fake: RedisClient, group: str
) -> None:
    consumer, metrics = measured_consumer(fake, group)
    labels = {"stream": "unit", "group": group, "type": TYPE}
    last = consumer.middlewares[-1]  # after the checks: a check of its own (no coroutine)
    assert getattr(last, "check", None) == metrics.reached

    await deliver(consumer, entry_fields())
    await deliver(consumer, entry_fields(), attempt=2)  # a retry that succeeds
    assert value("l9_envelopes_received_total", **labels) == 2
    assert value("l9_envelopes_handled_total", **labels) == 2
    assert value("l9_envelopes_retried_total", **labels) == 1
    assert value("l9_handler_duration_seconds_count", **labels) == 2
    assert value("l9_handler_duration_seconds_sum", **labels) > 0

    await deliver(consumer, entry_fields("fail"))  # retried later: failed, not dead
    await deliver(consumer, entry_fields("fail"), attempt=POLICY.max_deliveries)  # the last try
    assert value("l9_envelopes_failed_total", **labels) == 2
    assert value("l9_envelopes_handled_total", **labels) == 2
    assert value("l9_handler_duration_seconds_count", **labels) == 4  # failed runs are timed too
    assert value("l9_envelopes_dead_lettered_total", **labels, reason="delivery_cap") == 1

    await deliver(consumer, entry_fields("refuse"))
    assert value("l9_envelopes_dead_lettered_total", **labels, reason="refused_by_handler") == 1
    assert value("l9_handler_duration_seconds_count", **labels) == 5  # a handler's refusal timed once
    assert value("l9_envelopes_failed_total", **labels) == 2  # a refusal is no failed attempt
    assert await fake.xlen(Keys("u").dead("unit")) == 2


async def test_entries_refused_by_the_checks_are_dead_letters_of_type_dash_unless_known(
    fake: RedisClient, group: str
) -> None:
    consumer, _ = measured_consumer(fake, group)
    await deliver(consumer, {b"env": b"\xc1 not msgpack"})
    await deliver(consumer, entry_fields(type_="l9.unit.nobody_knows.v1"))  # no label per unknown type
    forged = entry_fields()
    forged[b"sig"] = b"k:" + b"0" * 64
    await deliver(consumer, forged)
    dash = {"stream": "unit", "group": group, "type": "-"}
    assert value("l9_envelopes_dead_lettered_total", **dash, reason="undecodable") == 1
    assert value("l9_envelopes_dead_lettered_total", **dash, reason="unknown_type") == 1
    known = {"stream": "unit", "group": group, "type": TYPE}
    assert value("l9_envelopes_dead_lettered_total", **known, reason="bad_signature") == 1
    assert value("l9_envelopes_received_total", **known) == 0  # none reached the handlers
    text = generate_latest(REGISTRY).decode()
    assert "nobody_knows" not in text


async def test_without_metrics_nothing_is_added_to_the_chain(fake: RedisClient, group: str) -> None:
    with_metrics, metrics = measured_consumer(fake, group)
    consumer = StreamConsumer(
        fake,
        Keys("u"),
        group=group,
        consumer="c-1",
        streams=["unit"],
        handler=handler,
        verifier=Verifier(KEYRING),
        policy=POLICY,
    )
    assert consumer.metrics is None
    names = [getattr(step, "__name__", None) for step in consumer.middlewares]
    assert [getattr(step, "__name__", None) for step in with_metrics.middlewares] == [*names, "reached"]
    assert metrics.last_round is None and consumer.on_round is None
    assert with_metrics.on_round is not None
    with_metrics.on_round()  # what the read loop calls at the top of each round
    assert metrics.last_round is not None


def batch(group_fields: Sequence[tuple[str, int]]) -> list[Entry]:
    return [
        Entry("unit", f"{n}-0", {b"type": type_.encode()}, attempt)
        for n, (type_, attempt) in enumerate(group_fields)
    ]


async def test_a_batch_loops_handler_and_source_are_counted_and_tell_its_rounds(group: str) -> None:
    metrics = BatchMetrics(group)
    refuse_second = True

    async def commit(entries: Sequence[Entry], prepared: int) -> Sequence[Rejected]:
        assert prepared == len(entries)
        if not refuse_second:
            raise RuntimeError("store down")
        return [Rejected(entries[1], "bad_signature", "forged")]

    async def prepare(entries: Sequence[Entry]) -> int:
        return len(entries)

    async def source() -> list[str]:
        return ["unit"]

    wrapped = metrics.handler(Staged(prepare, commit))
    assert isinstance(wrapped, Staged) and wrapped.prepare is prepare  # still pipelined
    assert list(await metrics.source(source)()) == ["unit"] and metrics.last_round is not None
    entries = batch([(TYPE, 1), (TYPE, 1), (TYPE, 2)])
    assert await wrapped(entries) == [Rejected(entries[1], "bad_signature", "forged")]
    labels = {"stream": "unit", "group": group, "type": TYPE}
    assert value("l9_envelopes_received_total", **labels) == 3
    assert value("l9_envelopes_handled_total", **labels) == 2
    assert value("l9_envelopes_retried_total", **labels) == 1
    assert value("l9_envelopes_dead_lettered_total", **labels, reason="bad_signature") == 1
    refuse_second = False
    with pytest.raises(RuntimeError, match="store down"):
        await wrapped(entries)
    assert value("l9_envelopes_failed_total", **labels) == 3
    assert value("l9_envelopes_handled_total", **labels) == 2


async def test_a_batch_loop_labels_a_bounded_number_of_types(group: str) -> None:
    metrics = BatchMetrics(group)

    async def accept(entries: Sequence[Entry]) -> Sequence[Rejected]:
        return []

    handle = metrics.handler(accept)
    many = batch([(f"l9.flood.t{n}.v1", 1) for n in range(BATCH_TYPES + 5)])
    await handle(many)
    await handle(batch([("l9.flood.t0.v1", 1)]))
    assert value("l9_envelopes_handled_total", stream="unit", group=group, type="-") == 5
    assert value("l9_envelopes_handled_total", stream="unit", group=group, type="l9.flood.t0.v1") == 2


@dataclass
class FakeLoop:
    """What /healthz reads of a consumer."""

    group: str = "g"
    keys: Keys = field(default_factory=Keys)
    redis: Any = None
    streams: list[str] = field(default_factory=lambda: ["unit"])
    in_flight: dict[tuple[str, str], float] = field(default_factory=dict)
    stopping: bool = False


@dataclass
class FakeClock:
    last_round: float | None = None


def test_healthz_tells_a_starting_a_going_a_full_a_stuck_and_a_stopping_loop_apart() -> None:
    consumer, clock = FakeLoop(), FakeClock()
    loop = Loop(consumer, clock, capacity=2, stale_after_s=30.0)
    assert loop.state(1000.0) == {"in_flight": 0, "problem": None, "starting": True}
    clock.last_round = 990.0
    assert loop.state(1000.0)["problem"] is None
    stuck = loop.state(1031.0)["problem"]
    assert stuck == (
        "the delivery loop of group g last went round 41 s ago (more than 30 s) with 0 entries in hand"
    )
    consumer.in_flight.update({("unit", "1-0"): 0.0, ("unit", "2-0"): 0.0})
    assert loop.state(1031.0)["problem"] is None  # full: it waits for room, its handlers at work
    consumer.stopping = True
    assert loop.state(1000.0)["problem"] == "the delivery loop of group g is stopping"
    assert stale_after_s(0.1) == 30.0 and stale_after_s(10.0) == 100.0


async def test_readyz_names_a_loop_not_started_and_a_failing_check() -> None:
    admin = Admin("127.0.0.1", 0)
    try:
        ok, body = await admin.readiness()
        assert not ok and body["failed"] == ["delivery"]
        assert body["checks"]["delivery"] == "RuntimeError: no delivery loop yet"

        async def refused() -> None:
            raise ConnectionError("connection refused\nsecond line")

        admin.ready_when("postgres", refused)
        ok, body = await admin.readiness()
        assert body["checks"]["postgres"] == "ConnectionError: connection refused"
        assert body["failed"] == ["delivery", "postgres"]
    finally:
        admin.close()


async def test_a_read_loop_tells_its_rounds_while_it_backs_off_from_an_absent_redis(group: str) -> None:
    """``/healthz`` stays 200 through a Redis outage: the loop goes round, backing off."""
    server = fakeredis.FakeServer()
    redis: RedisClient = fakeredis.FakeAsyncRedis(server=server)
    metrics = DeliveryMetrics(group)

    async def handler(d: Delivery) -> None:
        raise AssertionError("nothing is read")

    consumer = StreamConsumer(
        redis, Keys("u"), group=group, consumer="c-1", streams=["unit"], handler=handler,
        verifier=None, policy=POLICY, metrics=metrics,
    )  # fmt: skip
    rounds: list[float] = []
    consumer.on_round = lambda: rounds.append(anyio.current_time())
    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer.run)
        await consumer.wait_started()
        server.connected = False  # Redis away: every read fails, the loop backs off and goes on
        seen = len(rounds)
        with anyio.fail_after(60):  # only catches a hang
            while len(rounds) < seen + 3:
                await anyio.sleep(0.05)
        server.connected = True
        consumer.stop()
    assert len(rounds) >= seen + 3


def test_the_handler_histogram_has_the_buckets_prometheus_clients_own_would_have() -> None:
    """The plain counts a delivery adds to (``bus.metrics.Counts``) come out as the histogram
    prometheus-client's ``Histogram`` makes of the same values: bounds inclusive ("le")."""
    values = [0.0, 0.0005, 0.001, 0.0010001, 0.0025, 0.7, 1.0, 59.9, 300.0, 300.5, 1e6]
    reference = CollectorRegistry()
    histogram = Histogram("ref_seconds", "ref", buckets=bus.metrics.HANDLER_BUCKETS, registry=reference)
    collector = bus.metrics.DeliveryCounts()
    counts = collector.of("s", "g", "t")
    for v in values:
        histogram.observe(v)
        counts.observe(v)
    (ref,) = [f for f in reference.collect() if f.name == "ref_seconds"]
    (ours,) = [f for f in collector.collect() if f.name == "l9_handler_duration_seconds"]
    expected = {
        (s.name.removeprefix("ref"), s.labels.get("le")): s.value
        for s in ref.samples
        if "created" not in s.name
    }
    got = {(s.name.removeprefix("l9_handler_duration"), s.labels.get("le")): s.value for s in ours.samples}
    assert got == expected and got[("_seconds_count", None)] == len(values)
