"""Envelopes built without pydantic are exactly the envelopes pydantic builds.

``envelope._fast`` builds an envelope directly when its values are plainly valid and
gives up (the caller validates with pydantic) otherwise. These tests feed both ways
the same values, valid and not, and require the same answer: an equal envelope with
the same field order, set fields and types, or a refusal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import envelope._fast as fast_module
from envelope import SIGNED_FIELDS, EnvelopeError, PacketEnvelope, Signer, decode_envelope, encode
from envelope._codec import _validate
from envelope._fast import from_wire

KEYRING = {"k": b"key-0123456789abcdef0123456789ab"}

# Values near the edges of the model's rules, valid and not, for any field.
TEXT = st.one_of(
    st.none(),
    st.sampled_from(["", "x", "é", "a\n", "1.0", "event", "l9.a.b.v1", "agent://a/b", "l9.A.v1"]),
    st.text(max_size=12),
)
ODD = st.one_of(st.integers(-3, 3), st.booleans(), st.floats(allow_nan=False), st.binary(max_size=3))
TYPES = st.sampled_from(["l9.unit.thing.v1", "l9.a.v2", "l9.unit.thing.v1\n", "L9.a.v1", "l9.a", "l9..v1"])
SOURCES = st.sampled_from(
    ["agent://unit/0", "agent://u.x/a@b#c:d", "agent://u/", "agent:/u/0", "agent://u/0\n"]
)
AWARE = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))]))
NAIVE = st.datetimes()
DATA = st.one_of(
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
    st.lists(st.integers(), max_size=2),
)


def both(values: dict[str, Any], fields: dict[str, Any]) -> tuple[Any, Any]:
    """What ``new`` makes with the fast builder, and with pydantic alone (a refusal as its type)."""

    def run() -> Any:
        try:
            return PacketEnvelope.new(**values, **fields)
        except (ValidationError, TypeError) as exc:
            return type(exc)

    fast = run()
    saved = fast_module.fresh
    fast_module.fresh = lambda *args: None
    try:
        slow = run()
    finally:
        fast_module.fresh = saved
    return fast, slow


def same(a: Any, b: Any, made_up: tuple[str, ...] = ("id", "time", "correlation_id")) -> None:
    """``a`` and ``b`` are equal envelopes (but for the values ``new`` makes up), or the same refusal."""
    if isinstance(a, PacketEnvelope) and isinstance(b, PacketEnvelope):
        a_values = {k: v for k, v in a.__dict__.items() if k not in made_up}
        b_values = {k: v for k, v in b.__dict__.items() if k not in made_up}
        assert a_values == b_values
        assert list(a.__dict__) == list(b.__dict__) == list(PacketEnvelope.model_fields)
        assert a.model_fields_set == b.model_fields_set
        assert {k: type(v) for k, v in a.__dict__.items()} == {k: type(v) for k, v in b.__dict__.items()}
        assert a.data is not b.data
    else:
        assert a == b, (a, b)


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` three times in four: an invalid value is then mostly the only one."""
    return st.one_of(valid, valid, valid, other)


@settings(max_examples=500, deadline=None)
@given(
    type_=mostly(st.just("l9.unit.thing.v1"), st.one_of(TYPES, TEXT, ODD)),
    source=mostly(st.just("agent://unit/0"), st.one_of(SOURCES, TEXT, ODD)),
    data=mostly(st.none(), DATA),
    correlation=mostly(st.none(), st.one_of(TEXT, ODD)),
    extra=st.dictionaries(
        st.sampled_from(
            ["kind", "sequence", "subject", "causation_id", "reply_to", "specversion", "expires_at",
             "dataschema", "datacontenttype", "auth", "signature", "nonsense", "id", "time"]
        ),
        st.one_of(TEXT, ODD, AWARE, NAIVE, st.sampled_from(["event", "request", "error", "1.0", "2.0"])),
        max_size=2,
    ),
)  # fmt: skip
def test_new_builds_what_pydantic_builds_and_refuses_what_it_refuses(
    type_: Any, source: Any, data: Any, correlation: Any, extra: dict[str, Any]
) -> None:
    fast, slow = both({"type": type_, "source": source, "data": data, "correlation_id": correlation}, extra)
    same(fast, slow)


def test_new_takes_the_fast_way_for_what_agents_build() -> None:
    calls: list[object] = []
    saved = fast_module.fresh

    def spy(*args: Any) -> PacketEnvelope | None:
        envelope = saved(*args)
        calls.append(envelope)
        return envelope

    fast_module.fresh = spy
    try:
        envelope = PacketEnvelope.new(
            type="l9.unit.thing.v1", source="agent://unit/0", data={"n": 1}, kind="request", sequence=4
        )
    finally:
        fast_module.fresh = saved
    assert calls == [envelope] and envelope.kind == "request" and envelope.sequence == 4


def wire(envelope: PacketEnvelope) -> tuple[list[Any], str | None]:
    entry = encode(envelope, Signer(KEYRING, "k"))
    return msgpack.unpackb(entry["env"], raw=False), str(entry["sig"])


def through_pydantic(values: list[Any], signature: Any) -> Any:
    try:
        return _validate(values, signature, None)
    except EnvelopeError:
        return EnvelopeError


def test_the_wire_order_of_the_fast_decoder_is_the_signed_field_order() -> None:
    envelope = PacketEnvelope.new(
        type="l9.unit.thing.v1",
        source="agent://unit/0",
        data={"n": 1},
        subject="s",
        kind="request",
        causation_id="c",
        in_reply_to="i",
        reply_to="r",
        sequence=7,
        traceparent="t",
        tracestate="ts",
        auth="a",
        ttl=timedelta(hours=1),
    )
    values, signature = wire(envelope)
    fast = from_wire(values, signature)
    assert fast is not None
    same(fast, through_pydantic(values, signature), made_up=())
    assert fast.__dict__ == {**envelope.__dict__, "key_id": "k", "signature": signature}


@settings(max_examples=400, deadline=None)
@given(
    position=st.integers(0, len(SIGNED_FIELDS) - 1),
    value=st.one_of(
        TEXT,
        ODD,
        st.sampled_from(
            [
                "2026-12-07T05:30:00+00:00",
                "2026-12-07T05:30:00.123456-05:30",
                "2026-12-07T05:30:00Z",
                "2026-12-07 05:30:00+00:00",
                "2026-13-07T05:30:00+00:00",
                "2026-12-07T24:00:00+00:00",
                "2026-12-07T05:30:00.123+00:00",
                "2026-12-07T05:30:00",
                "0000-01-01T00:00:00+00:00",
                "2026-12-07T05:30:00+24:00",
                "٢٠٢٦-12-07T05:30:00+00:00",
                "01a24f01-1777-768a-b0e4-87a42b482645",
                "01A24F01-1777-768A-B0E4-87A42B482645",
                "request",
                "1.0",
            ]
        ),
        DATA,
    ),
    signature=st.one_of(st.none(), TEXT, ODD),
)
def test_decoding_builds_what_pydantic_builds_and_refuses_what_it_refuses(
    position: int, value: Any, signature: Any
) -> None:
    values, _ = wire(PacketEnvelope.new(type="l9.unit.thing.v1", source="agent://unit/0", data={"n": 1}))
    values[position] = value
    fast = from_wire(list(values), signature)
    slow = through_pydantic(list(values), signature)
    if fast is None:
        return  # the decoder validates with pydantic: the same answer by construction
    same(fast, slow, made_up=())
    for name in ("time", "expires_at"):
        if isinstance(slow.__dict__[name], datetime):
            assert fast.__dict__[name].isoformat() == slow.__dict__[name].isoformat()


def test_decode_envelope_refuses_with_pydantics_message() -> None:
    values, signature = wire(PacketEnvelope.new(type="l9.unit.thing.v1", source="agent://unit/0"))
    values[SIGNED_FIELDS.index("time")] = "2026-13-07T05:30:00+00:00"
    entry = {"env": msgpack.packb(values, use_bin_type=True), "sig": signature}
    with pytest.raises(EnvelopeError, match="field 'time': Input should be a valid datetime"):
        decode_envelope(entry)
