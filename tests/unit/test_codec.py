"""Stream-entry codec: round trips, and every way a wire entry is refused."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import msgpack
import pytest

from envelope import (
    ENVELOPE_FIELD,
    EnvelopeError,
    ErrorReason,
    PacketEnvelope,
    Payload,
    PayloadRegistry,
    Signer,
    Verifier,
    decode,
    decode_envelope,
    encode,
    to_wire_map,
)

TYPE = "l9.demo.ping.v1"
SOURCE = "agent://demo/pinger"
KEYRING = {"k1": b"first secret", "k2": b"second secret"}
SIGNER = Signer(KEYRING, "k1")
VERIFIER = Verifier(KEYRING)


class Ping(Payload):
    n: int
    note: str = ""


TYPES = PayloadRegistry()
TYPES.register(TYPE, Ping)


def make(**fields: Any) -> PacketEnvelope:
    fields.setdefault("data", {"n": 1})
    return PacketEnvelope.new(type=TYPE, source=SOURCE, **fields)


def as_redis(entry: Mapping[str, str | bytes]) -> dict[bytes, bytes]:
    """Stream-entry fields the way redis-py returns them: bytes keys and values."""
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in entry.items()}


def unsigned(envelope: PacketEnvelope) -> PacketEnvelope:
    return envelope.model_copy(update={"key_id": None, "signature": None})


def repack(entry: dict[bytes, bytes], change: Callable[[dict[str, Any]], None]) -> dict[bytes, bytes]:
    """``entry`` with its msgpack envelope changed by ``change``."""
    fields = msgpack.unpackb(entry[b"env"], raw=False)
    change(fields)
    return entry | {b"env": msgpack.packb(fields, use_bin_type=True)}


def refused(entry: Mapping[Any, Any], verifier: Verifier | None = VERIFIER) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as caught:
        decode(entry, verifier, TYPES)
    return caught.value


# -- round trips ------------------------------------------------------------------------


def test_signed_round_trip_gives_an_equal_envelope_and_a_typed_payload() -> None:
    original = make(data={"n": 7, "note": "hi"})
    decoded, payload = decode(as_redis(encode(original, SIGNER)), VERIFIER, TYPES)
    assert unsigned(decoded) == original
    assert decoded.key_id == "k1"
    assert decoded.signature is not None
    assert len(decoded.signature) == 64
    int(decoded.signature, 16)  # hex
    assert isinstance(payload, Ping)
    assert payload == Ping(n=7, note="hi")


def test_round_trip_keeps_every_optional_field() -> None:
    root = make()
    original = make(
        data={"n": 2, "note": "ü ✓"},
        correlation_id=root.correlation_id,
        causation_id=root.id,
        in_reply_to=root.id,
        reply_to="l9:replies:pinger",
        kind="request",
        subject="job-42",
        sequence=12,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="l9=1",
        auth="user:alice",
        ttl=timedelta(seconds=90),
    )
    decoded, _ = decode(as_redis(encode(original, SIGNER)), VERIFIER, TYPES)
    assert unsigned(decoded) == original
    assert decoded.model_dump(exclude={"key_id", "signature"}) == original.model_dump(
        exclude={"key_id", "signature"}
    )
    assert decoded.expires_at == original.expires_at
    assert decoded.time == original.time


def test_unsigned_round_trip_without_a_verifier() -> None:
    original = make()
    decoded, payload = decode(as_redis(encode(original)), None, TYPES)
    assert decoded == original
    assert decoded.signature is None
    assert decoded.key_id is None
    assert payload == Ping(n=1)


def test_decode_also_takes_the_str_keyed_entry_encode_returns() -> None:
    original = make()
    decoded, _ = decode(encode(original, SIGNER), VERIFIER, TYPES)
    assert unsigned(decoded) == original


def test_entry_has_readable_plain_header_fields() -> None:
    env = make()
    entry = encode(env, SIGNER)
    assert set(entry) == {"id", "type", "source", "correlation_id", ENVELOPE_FIELD}
    assert entry["id"] == env.id
    assert entry["type"] == TYPE
    assert entry["source"] == SOURCE
    assert entry["correlation_id"] == env.correlation_id
    assert all(isinstance(entry[k], str) for k in ("id", "type", "source", "correlation_id"))
    assert isinstance(entry[ENVELOPE_FIELD], bytes)


def test_encode_does_not_resign_a_signed_envelope() -> None:
    signed, _ = decode(as_redis(encode(make(), SIGNER)), VERIFIER, TYPES)
    again, _ = decode(as_redis(encode(signed, Signer(KEYRING, "k2"))), VERIFIER, TYPES)
    assert again.key_id == "k1"
    assert again.signature == signed.signature


def test_wire_map_has_every_field_with_times_as_iso_strings() -> None:
    env = make(ttl=timedelta(seconds=5))
    wire = to_wire_map(env)
    assert set(wire) == set(PacketEnvelope.model_fields)
    assert wire["time"] == env.time.isoformat()
    assert env.expires_at is not None
    assert wire["expires_at"] == env.expires_at.isoformat()


# -- refusals: undecodable ----------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x92\x01", b"garbage", b"\xa4ab"])
def test_garbage_bytes_are_undecodable(garbage: bytes) -> None:
    error = refused({b"env": garbage, b"id": b"whatever"})
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail.startswith("not msgpack: ")


@pytest.mark.parametrize("entry", [{}, {b"id": b"x", b"type": b"y"}, {b"env": b""}, {"env": "text"}])
def test_missing_env_field_is_undecodable(entry: dict[Any, Any]) -> None:
    error = refused(entry)
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail == "entry has no 'env' field"


@pytest.mark.parametrize(
    ("value", "name"), [([1, 2], "list"), ("text", "str"), (3, "int"), (None, "NoneType")]
)
def test_msgpack_that_is_not_a_map_is_undecodable(value: Any, name: str) -> None:
    error = refused({b"env": msgpack.packb(value)})
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail == f"envelope is a {name}, not a map"


# -- refusals: invalid envelope -----------------------------------------------------------------


@pytest.mark.parametrize("field", ["source", "type", "correlation_id", "id", "time"])
def test_map_missing_a_required_field_is_invalid_naming_it(field: str) -> None:
    env = make()
    wire = to_wire_map(env)
    del wire[field]
    error = refused({b"env": msgpack.packb(wire)}, verifier=None)
    assert error.reason is ErrorReason.INVALID_ENVELOPE
    assert error.detail.startswith(f"field {field!r}: Field required")
    assert error.envelope_id == (None if field == "id" else env.id)


@pytest.mark.parametrize(
    ("field", "value"),
    [("source", "nope"), ("type", "l9.Bad"), ("sequence", -1), ("kind", "gossip"), ("time", "yesterday")],
)
def test_map_with_a_bad_field_value_is_invalid_naming_it(field: str, value: Any) -> None:
    wire = to_wire_map(make()) | {field: value}
    error = refused({b"env": msgpack.packb(wire)}, verifier=None)
    assert error.reason is ErrorReason.INVALID_ENVELOPE
    assert error.detail.startswith(f"field {field!r}: ")


def test_map_with_an_unknown_field_is_invalid_naming_it() -> None:
    wire = to_wire_map(make()) | {"colour": "red"}
    error = refused({b"env": msgpack.packb(wire)}, verifier=None)
    assert error.reason is ErrorReason.INVALID_ENVELOPE
    assert error.detail.startswith("field 'colour': Extra inputs are not permitted")


# -- refusals: type and payload ---------------------------------------------------------------


def test_unknown_type_is_refused() -> None:
    env = PacketEnvelope.new(type="l9.demo.unknown.v1", source=SOURCE)
    error = refused(as_redis(encode(env, SIGNER)))
    assert error.reason is ErrorReason.UNKNOWN_TYPE
    assert "'l9.demo.unknown.v1'" in error.detail


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({"n": "seven"}, "n: "),
        ({}, "n: Field required"),
        ({"n": 1, "note": 5}, "note: "),
        ({"n": 1, "x": 0}, "x: "),
    ],
)
def test_payload_failing_its_model_is_invalid_payload_naming_the_field(
    data: dict[str, Any], named: str
) -> None:
    env = make(data=data)
    error = refused(as_redis(encode(env, SIGNER)))
    assert error.reason is ErrorReason.INVALID_PAYLOAD
    assert error.envelope_id == env.id
    assert error.detail.startswith(f"data does not match {TYPE}: {named}")


# -- refusals: signatures and tampering -------------------------------------------------------


def test_unsigned_envelope_is_refused_when_signatures_are_required() -> None:
    env = make()
    error = refused(as_redis(encode(env)))
    assert error.reason is ErrorReason.BAD_SIGNATURE
    assert error.detail == "envelope is not signed"
    assert error.envelope_id == env.id


def test_unknown_key_id_is_refused() -> None:
    stranger = Signer({"k9": b"someone else"}, "k9")
    error = refused(as_redis(encode(make(), stranger)))
    assert error.reason is ErrorReason.BAD_SIGNATURE
    assert error.detail == "unknown signing key id 'k9'"


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda fields: fields.__setitem__(name, value)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda f: f["data"].__setitem__("n", 2), id="data"),
        pytest.param(lambda f: f["data"].__setitem__("note", "extra"), id="data-added-key"),
        pytest.param(_set("source", "agent://evil/x"), id="source"),
        pytest.param(_set("correlation_id", "other-run"), id="correlation_id"),
        pytest.param(_set("sequence", 5), id="sequence"),
        pytest.param(_set("kind", "control"), id="kind"),
        pytest.param(_set("auth", "user:root"), id="auth"),
        pytest.param(_set("time", "2001-01-01T00:00:00+00:00"), id="time"),
        pytest.param(_set("expires_at", "2999-01-01T00:00:00+00:00"), id="expires_at"),
        pytest.param(_set("key_id", "k2"), id="key_id"),
        pytest.param(_set("signature", "0" * 64), id="signature"),
        pytest.param(_set("signature", 12), id="signature-not-str"),
    ],
)
def test_tampering_with_the_signed_envelope_is_a_bad_signature(
    change: Callable[[dict[str, Any]], None],
) -> None:
    env = make(ttl=timedelta(seconds=60))
    entry = as_redis(encode(env, SIGNER))
    decode(entry, VERIFIER, TYPES)  # intact: accepted
    error = refused(repack(entry, change))
    assert error.reason is ErrorReason.BAD_SIGNATURE
    assert error.detail.startswith("signature does not match the content (key id ")
    assert error.envelope_id == env.id


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("source", b"agent://evil/x"),
        ("type", b"l9.demo.other.v1"),
        ("id", b"01a1fd48-0000-7000-8000-000000000000"),
        ("correlation_id", b"another-run"),
    ],
)
def test_tampered_plain_header_field_is_refused(header: str, value: bytes) -> None:
    env = make()
    entry = as_redis(encode(env, SIGNER)) | {header.encode(): value}
    error = refused(entry)
    assert error.reason is ErrorReason.INVALID_ENVELOPE
    assert error.detail.startswith(f"header field {header!r} is {value.decode()!r} but the envelope says ")
    assert error.envelope_id == env.id
    # the str-keyed form is checked the same way
    with pytest.raises(EnvelopeError, match=f"header field {header!r}"):
        decode_envelope(encode(env, SIGNER) | {header: value.decode()}, VERIFIER)


def test_entry_without_header_fields_still_decodes() -> None:
    env = make()
    decoded = decode_envelope({b"env": as_redis(encode(env, SIGNER))[b"env"]}, VERIFIER)
    assert unsigned(decoded) == env
