"""PacketEnvelope (ids, construction, expiry, validation) and the payload registry."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from pydantic import ValidationError

from envelope import (
    EnvelopeError,
    ErrorReason,
    PacketEnvelope,
    Payload,
    PayloadRegistry,
    new_id,
    split_type,
)

TYPE = "l9.demo.ping.v1"
SOURCE = "agent://demo/pinger"


def make(**fields: object) -> PacketEnvelope:
    return PacketEnvelope.new(type=TYPE, source=SOURCE, **fields)  # type: ignore[arg-type]


class Ping(Payload):
    n: int


class Pong(Payload):
    n: int


# -- UUIDv7 ids -------------------------------------------------------------------


def _ms(eid: str) -> int:
    """The Unix-ms timestamp in the top 48 bits of a UUIDv7."""
    return uuid.UUID(eid).int >> 80


def test_ids_are_canonical_uuid7() -> None:
    before = int(time.time() * 1000)
    ids = [new_id() for _ in range(100)] + [make().id for _ in range(100)]
    after = int(time.time() * 1000)
    for eid in ids:
        parsed = uuid.UUID(eid)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == eid  # lower-case, hyphenated: what UUID_PATTERN expects
        assert before <= _ms(eid) <= after  # the timestamp is the creation time


def test_ids_are_unique_and_ordered_by_creation_even_within_one_millisecond() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    # Many ids share a millisecond, so the sort above really tested the
    # sub-millisecond ordering (uuid_utils' counter), not only the timestamp.
    assert len({_ms(eid) for eid in ids}) < len(ids) // 2


def test_envelope_ids_sort_in_creation_order() -> None:
    envelopes = [make() for _ in range(1000)]
    ids = [e.id for e in envelopes]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert [e.time for e in envelopes] == sorted(e.time for e in envelopes)


# -- PacketEnvelope.new ------------------------------------------------------------


def test_root_envelope_correlates_to_itself() -> None:
    root = make()
    assert root.correlation_id == root.id
    assert root.causation_id is None


def test_child_envelope_keeps_the_given_correlation_id() -> None:
    root = make()
    child = make(correlation_id=root.correlation_id, causation_id=root.id)
    assert child.correlation_id == root.id
    assert child.causation_id == root.id
    assert child.id != root.id


def test_new_fills_defaults() -> None:
    env = make(data={"n": 1})
    assert env.specversion == "1.0"
    assert env.kind == "event"
    assert env.sequence == 0
    assert env.data == {"n": 1}
    assert env.dataschema == f"urn:l9:schema:{TYPE}"
    assert env.time.utcoffset() == timedelta(0)
    assert make().data == {}


def test_ttl_sets_expires_at_and_expired_flips_after_it() -> None:
    env = make(ttl=timedelta(seconds=30))
    assert env.expires_at == env.time + timedelta(seconds=30)
    assert not env.expired()
    assert not env.expired(env.expires_at - timedelta(microseconds=1))
    assert env.expired(env.expires_at)
    assert env.expired(env.expires_at + timedelta(microseconds=1))


def test_ttl_expires_in_real_time() -> None:
    env = make(ttl=timedelta(milliseconds=30))
    assert not env.expired()
    time.sleep(0.05)
    assert env.expired()


def test_without_ttl_an_envelope_never_expires() -> None:
    env = make()
    assert env.expires_at is None
    assert not env.expired(env.time + timedelta(days=365_000))


def test_explicit_expires_at_is_kept() -> None:
    at = make().time + timedelta(hours=1)
    env = make(expires_at=at)
    assert env.expires_at == at
    assert env.expired(at)


def test_envelope_is_frozen() -> None:
    env = make()
    with pytest.raises(ValidationError) as caught:
        env.source = "agent://evil/x"  # type: ignore[misc]
    assert caught.value.errors()[0]["type"] == "frozen_instance"
    assert env.source == SOURCE


@pytest.mark.parametrize("build", ["new", "validate"])
def test_extra_fields_are_refused(build: str) -> None:
    with pytest.raises(ValidationError) as caught:
        if build == "new":
            make(colour="red")
        else:
            PacketEnvelope.model_validate(make().model_dump() | {"colour": "red"})
    error = caught.value.errors()[0]
    assert error["type"] == "extra_forbidden"
    assert error["loc"] == ("colour",)


@pytest.mark.parametrize(
    "bad",
    [
        "ping",
        "l9.demo.ping",
        "l9.Demo.ping.v1",
        "x9.demo.ping.v1",
        "l9.demo.ping.v1.",
        "l9..ping.v1",
        "l9.demo.ping.v1\n",
        "",
    ],
)
def test_bad_type_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PacketEnvelope.new(type=bad, source=SOURCE)
    assert [e["loc"] for e in caught.value.errors()] == [("type",)]
    assert "\ntype\n" in str(caught.value)


@pytest.mark.parametrize(
    "bad",
    ["demo/pinger", "agent://demo", "agent://demo/", "agent://de mo/x", "http://demo/pinger", ""],
)
def test_bad_source_is_refused_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PacketEnvelope.new(type=TYPE, source=bad)
    assert [e["loc"] for e in caught.value.errors()] == [("source",)]
    assert "\nsource\n" in str(caught.value)


def test_good_types_and_sources_are_accepted() -> None:
    env = PacketEnvelope.new(type="l9.a_b.c2.d.v10", source="agent://team-1.x/worker_7@host:2#a")
    assert env.type == "l9.a_b.c2.d.v10"


# -- registry -----------------------------------------------------------------------


def test_register_and_look_up() -> None:
    types = PayloadRegistry()
    types.register(TYPE, Ping)
    assert TYPE in types
    assert "l9.demo.other.v1" not in types
    assert types.model_for(TYPE) is Ping
    assert types.type_of(Ping) == TYPE
    assert list(types) == [(TYPE, Ping)]


def test_register_as_decorator() -> None:
    types = PayloadRegistry()

    @types("l9.demo.deco.v2")
    class Deco(Payload):
        x: str

    assert types.model_for("l9.demo.deco.v2") is Deco
    assert types.type_of(Deco) == "l9.demo.deco.v2"


def test_registering_the_same_pair_twice_is_harmless() -> None:
    types = PayloadRegistry()
    types.register(TYPE, Ping)
    types.register(TYPE, Ping)
    assert list(types) == [(TYPE, Ping)]


def test_a_second_model_for_the_same_type_is_refused() -> None:
    types = PayloadRegistry()
    types.register(TYPE, Ping)
    with pytest.raises(ValueError, match=r"already registered to Ping"):
        types.register(TYPE, Pong)
    assert types.model_for(TYPE) is Ping
    with pytest.raises(LookupError):
        types.type_of(Pong)


def test_one_model_under_two_types_is_refused() -> None:
    types = PayloadRegistry()
    types.register(TYPE, Ping)
    with pytest.raises(ValueError, match=r"Ping is already registered as l9\.demo\.ping\.v1"):
        types.register("l9.demo.ping.v2", Ping)
    assert "l9.demo.ping.v2" not in types


def test_registering_a_malformed_type_is_refused() -> None:
    types = PayloadRegistry()
    with pytest.raises(ValueError, match="does not match"):
        types.register("demo.ping", Ping)
    assert list(types) == []


def test_type_of_an_unregistered_model_raises_lookup_error() -> None:
    with pytest.raises(LookupError, match="Pong is not a registered payload type"):
        PayloadRegistry().type_of(Pong)


def test_model_for_an_unknown_type_is_an_unknown_type_error() -> None:
    with pytest.raises(EnvelopeError) as caught:
        PayloadRegistry().model_for(TYPE)
    assert caught.value.reason is ErrorReason.UNKNOWN_TYPE
    assert TYPE in caught.value.detail


def test_load_gives_a_typed_payload_or_names_the_bad_field() -> None:
    types = PayloadRegistry()
    types.register(TYPE, Ping)
    loaded = types.load(make(data={"n": 3}))
    assert isinstance(loaded, Ping)
    assert loaded.n == 3
    bad = make(data={"n": "three"})
    with pytest.raises(EnvelopeError) as caught:
        types.load(bad)
    assert caught.value.reason is ErrorReason.INVALID_PAYLOAD
    assert caught.value.envelope_id == bad.id
    assert caught.value.detail.startswith(f"data does not match {TYPE}: n:")


@pytest.mark.parametrize(
    ("type_", "expected"),
    [("l9.demo.ping.v1", ("l9.demo.ping", 1)), ("l9.a.b.c.v10", ("l9.a.b.c", 10)), ("l9.v.v0", ("l9.v", 0))],
)
def test_split_type(type_: str, expected: tuple[str, int]) -> None:
    assert split_type(type_) == expected


@pytest.mark.parametrize(
    "bad", ["l9.demo.ping", "l9.demo.ping.vx", "demo.ping.v1", "l9.demo.ping.v1 ", "l9.demo.ping.v1\n"]
)
def test_split_type_refuses_malformed_types(bad: str) -> None:
    with pytest.raises(ValueError, match="does not match"):
        split_type(bad)
