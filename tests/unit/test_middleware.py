"""The per-entry loop's middleware chain, without Redis: order, refusals, the consumer's own steps,
and how Redis error replies are recognised."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import fakeredis
import pytest
import structlog
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from bus import DeadLetter, Delivery, Handler, Keys, StreamConsumer
from bus.connection import RedisClient, execute_many
from bus.consumer import UNDECODED, UNTYPED
from bus.errors import error_code, is_busygroup, is_missing_stream, is_nogroup
from bus.middleware import add_delivery_context, compose
from envelope import EnvelopeError, ErrorReason, PacketEnvelope, Payload, Signer, Verifier, encode, payload
from l9.logs import configure_logging

KEYRING = {"k": b"unit-secret"}
SIGNER = Signer(KEYRING, "k")


@payload("l9.unit.parcel.v1")
class Parcel(Payload):
    weight: int


@pytest.fixture
async def fake() -> AsyncIterator[RedisClient]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def parcel(**fields: Any) -> PacketEnvelope:
    return PacketEnvelope.new(type="l9.unit.parcel.v1", source="agent://unit/0", data={"weight": 3}, **fields)


def raw(envelope: PacketEnvelope, signer: Signer | None = SIGNER) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() if isinstance(v, str) else v for k, v in encode(envelope, signer).items()}


def undecoded(fields: dict[bytes, bytes]) -> Delivery:
    return Delivery("unit", "1-0", UNDECODED, UNTYPED, 1, fields)


async def test_compose_runs_the_steps_in_order_around_the_handler_and_a_step_may_stop() -> None:
    seen: list[str] = []

    def step(name: str, go_on: bool = True) -> Any:
        async def run(d: Delivery, call_next: Handler) -> None:
            seen.append(f"{name}>")
            if go_on:
                await call_next(d)
            seen.append(f"<{name}")

        return run

    async def handler(d: Delivery) -> None:
        seen.append("handler")

    await compose([step("a"), step("b")], handler)(undecoded({}))
    assert seen == ["a>", "b>", "handler", "<b", "<a"]
    seen.clear()
    await compose([step("a", go_on=False), step("b")], handler)(undecoded({}))
    assert seen == ["a>", "<a"]


def consumer_with(fake: RedisClient, handler: Handler, **options: Any) -> StreamConsumer:
    return StreamConsumer(
        fake, Keys("u"), group="g", consumer="c", streams=["unit"], handler=handler, **options
    )


async def test_the_consumers_own_steps_fill_in_the_delivery_and_refuse_with_a_reason(
    fake: RedisClient,
) -> None:
    handled: list[Delivery] = []

    async def handler(d: Delivery) -> None:
        handled.append(d)

    def only_k(envelope: PacketEnvelope) -> None:
        if envelope.data.get("weight") == 9:
            raise EnvelopeError(ErrorReason.UNAUTHORIZED_SIGNER, "k may not ship 9")

    consumer = consumer_with(fake, handler, verifier=Verifier(KEYRING), authorize=only_k)
    chain = compose(consumer.middlewares, handler)
    good = parcel()
    await chain(undecoded(raw(good)))
    (d,) = handled
    assert d.envelope == good.model_copy(update={"key_id": "k", "signature": d.envelope.signature})
    assert d.payload == Parcel(weight=3)

    unknown = PacketEnvelope.new(type="l9.unit.nobody.v1", source="agent://unit/0", data={})
    cases = {
        "undecodable": {b"env": b"\xc1 not msgpack"},
        "bad_signature": raw(parcel(), Signer({"k": b"wrong"}, "k")),
        "unknown_type": raw(unknown),
        "unauthorized_signer": raw(parcel().model_copy(update={"data": {"weight": 9}})),
    }
    for reason, fields in cases.items():
        with pytest.raises(DeadLetter) as refused:
            await chain(undecoded(fields))
        assert refused.value.reason == reason
    unsigned = raw(parcel(), None)
    with pytest.raises(DeadLetter, match="bad_signature: envelope is not signed"):
        await chain(undecoded(unsigned))
    assert len(handled) == 1


async def test_without_verifier_nor_authorizer_those_steps_are_left_out_and_expired_is_not_handled(
    fake: RedisClient,
) -> None:
    handled: list[Delivery] = []

    async def handler(d: Delivery) -> None:
        handled.append(d)

    async def traced(d: Delivery, call_next: Handler) -> None:
        await call_next(d)

    consumer = consumer_with(fake, handler, verifier=None, middlewares=[traced])
    # decode, load, the repeat check (a window of handled ids is on by default), log context
    assert len(consumer.middlewares) == 5 and consumer.middlewares[-1] is traced
    chain = compose(consumer.middlewares, handler)
    await chain(undecoded(raw(parcel(), None)))
    await chain(undecoded(raw(parcel(ttl=timedelta(seconds=-1)))))
    assert len(handled) == 1


async def test_a_repeat_is_checked_like_any_entry_then_acked_unhandled_and_logged_at_info(
    fake: RedisClient,
) -> None:
    """A repeat is decoded and verified like any entry (a forged one is refused), then skipped:
    one the window marked at read time, or one of an envelope another checked entry of which
    is in hand. A forged entry borrowing the envelope's id is no entry in hand of it."""
    handled: list[str] = []

    async def handler(d: Delivery) -> None:
        handled.append(d.entry_id)

    consumer = consumer_with(fake, handler, verifier=Verifier(KEYRING))
    chain = compose(consumer.middlewares, handler)
    good = parcel()

    def entry(entry_id: str, signer: Signer = SIGNER) -> Delivery:
        consumer.in_flight[("unit", entry_id)] = 0.0  # read: in hand
        return Delivery("unit", entry_id, UNDECODED, UNTYPED, 1, raw(good, signer))

    marked = entry("1-0")  # its read's lookup found the envelope in the window
    marked.looked = {("unit", good.id): 1_800_000_000.0}
    forged = entry("2-0", Signer({"k": b"wrong"}, "k"))
    with capture_logs() as logs:
        await chain(marked)  # the window's repeat
        with pytest.raises(DeadLetter, match="bad_signature"):
            await chain(forged)
        await chain(entry("3-0"))  # the first checked entry of the envelope: handled
        await chain(entry("4-0"))  # while 3-0 is in hand: a repeat of it
        consumer.in_flight.pop(("unit", "3-0"))  # 3-0 acked
        await chain(entry("5-0"))  # the window has it once acked; without one, handled again
    assert handled == ["3-0", "5-0"]
    repeats = [e for e in logs if e["event"] == "consumer.duplicate"]
    assert [(e["entry_id"], e["log_level"], e["envelope_id"]) for e in repeats] == [
        ("1-0", "info", good.id),
        ("4-0", "info", good.id),
    ]
    assert "handled_at" in repeats[0] and repeats[1]["in_hand"] == "3-0"


async def test_a_reads_entries_reach_the_workers_once_its_window_lookup_ends_however_it_ends(
    fake: RedisClient,
) -> None:
    """The lookup of a read's envelope ids runs beside the read loop, then hands the read to
    the workers with what it found; one cut short (the consumer stopping) finds nothing and
    hands the read over all the same: those entries are handled, at least once."""

    async def handler(d: Delivery) -> None:
        raise AssertionError("not run here")

    consumer = consumer_with(fake, handler, verifier=None)
    window = consumer.window
    assert window is not None
    await execute_many(fake, window.record("unit", ["seen"]))
    read = [undecoded(raw(parcel(), None)), undecoded(raw(parcel(), None))]
    await consumer._look(window, {"unit": [b"seen", b"new"]}, read, object())
    assert [await consumer._queue.get() for _ in read] == read
    assert read[0].looked is read[1].looked and set(read[0].looked or {}) == {("unit", "seen")}

    window.lookup = _never_answered  # type: ignore[method-assign]
    cut = [undecoded(raw(parcel(), None))]
    with anyio.move_on_after(0.05) as scope:
        await consumer._look(window, {"unit": [b"seen"]}, cut, object())
    assert scope.cancelled_caught and await consumer._queue.get() is cut[0] and cut[0].looked is None

    # stopping: the queue closes once the last lookup in flight handed its read over
    del window.lookup  # answered again
    token = object()
    consumer._looking.add(token)
    consumer._queue.close_after(consumer._looking)
    last = [undecoded(raw(parcel(), None))]
    await consumer._look(window, {"unit": [b"new"]}, last, token)
    assert await consumer._queue.get() is last[0] and await consumer._queue.get() is None


async def _never_answered(ids: object) -> dict[tuple[str, str], float]:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


def test_redis_error_replies_are_told_apart_by_their_code() -> None:
    nogroup = ResponseError("NOGROUP No such key 'k' or consumer group 'g'", status_code="NOGROUP")
    legacy = ResponseError("BUSYGROUP Consumer Group name already exists")  # redis-py < 8: no status_code
    missing = ResponseError("The XGROUP subcommand requires the key to exist.", status_code="ERR")
    assert (error_code(nogroup), error_code(legacy), error_code(missing)) == ("NOGROUP", "BUSYGROUP", "ERR")
    assert is_nogroup(nogroup) and not is_nogroup(legacy) and not is_nogroup(missing)
    assert is_busygroup(legacy) and is_missing_stream(missing) and not is_missing_stream(nogroup)


def test_l9_logs_installs_the_delivery_context_processor() -> None:
    try:
        configure_logging("info")
        assert add_delivery_context in structlog.get_config()["processors"]
    finally:
        structlog.reset_defaults()


@pytest.mark.parametrize("l9_logs", [True, False], ids=["delivery-context-processor", "plain-structlog"])
async def test_a_handlers_log_lines_carry_the_delivery_with_or_without_the_l9_processor(
    fake: RedisClient, l9_logs: bool
) -> None:
    """With the processor ``l9.logs`` installs, one context variable per delivery; with any
    other structlog set-up that merges context variables, the five fields are bound as such."""
    out = io.StringIO()
    log = structlog.get_logger("unit")

    async def handler(d: Delivery) -> None:
        log.info("handled.inside")

    processors: list[Any] = [structlog.contextvars.merge_contextvars]
    if l9_logs:
        processors.append(add_delivery_context)
    try:
        structlog.configure(
            processors=[*processors, structlog.processors.JSONRenderer()],
            logger_factory=structlog.PrintLoggerFactory(file=out),
            cache_logger_on_first_use=False,
        )
        consumer = consumer_with(fake, handler, verifier=Verifier(KEYRING))
        good = parcel()
        await compose(consumer.middlewares, handler)(undecoded(raw(good)))
        log.info("handled.after")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    inside = next(line for line in lines if line["event"] == "handled.inside")
    assert (inside["envelope_id"], inside["correlation_id"], inside["type"]) == (
        good.id, good.correlation_id, "l9.unit.parcel.v1"
    )  # fmt: skip
    assert (inside["stream"], inside["attempt"]) == ("unit", 1)
    after = next(line for line in lines if line["event"] == "handled.after")
    assert "envelope_id" not in after and "stream" not in after
