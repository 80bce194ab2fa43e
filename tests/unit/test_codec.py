"""Stream-entry codec: round trips, and every way a wire entry is refused."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import msgpack
import pytest

from envelope import (
    ENVELOPE_FIELD,
    HEADER_FIELDS,
    SIGNATURE_FIELD,
    SIGNED_FIELDS,
    EnvelopeError,
    ErrorReason,
    PacketEnvelope,
    Payload,
    PayloadRegistry,
    Signer,
    Verifier,
    canonical_bytes,
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


def unpack(entry: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The signed fields of ``entry``'s ``env`` array, by name."""
    values = msgpack.unpackb(entry[b"env"], raw=False)
    assert isinstance(values, list)
    return dict(zip(SIGNED_FIELDS, values, strict=True))


def repack(entry: dict[bytes, bytes], change: Callable[[dict[str, Any]], None]) -> dict[bytes, bytes]:
    """``entry`` with its ``env`` array changed by ``change``; ``sig`` left as it was."""
    fields = unpack(entry)
    change(fields)
    return entry | {b"env": canonical_bytes(fields)}


def signed_entry(fields: dict[str, Any]) -> dict[bytes, bytes]:
    """An entry whose ``env`` holds ``fields`` (whatever they are) with a valid k1 signature,
    so that a refusal is about the content, not the signature."""
    blob = canonical_bytes(fields | {"key_id": "k1"})
    return {b"env": blob, b"sig": SIGNER.sign_bytes(blob).encode()}


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
    assert set(entry) == {"id", "type", "source", "correlation_id", ENVELOPE_FIELD, SIGNATURE_FIELD}
    assert set(HEADER_FIELDS) == {"id", "type", "source", "correlation_id"}
    assert entry["id"] == env.id
    assert entry["type"] == TYPE
    assert entry["source"] == SOURCE
    assert entry["correlation_id"] == env.correlation_id
    assert all(isinstance(entry[k], str) for k in ("id", "type", "source", "correlation_id"))
    assert isinstance(entry[ENVELOPE_FIELD], bytes)


def test_env_is_the_canonical_array_and_sig_the_hmac_of_its_bytes() -> None:
    env = make(ttl=timedelta(seconds=5), subject="s")
    entry = encode(env, SIGNER)
    blob, sig = entry[ENVELOPE_FIELD], entry[SIGNATURE_FIELD]
    assert isinstance(blob, bytes)
    assert isinstance(sig, str)
    # the blob is exactly what canonical_bytes signs: the wire map, key id set, no signature
    assert blob == canonical_bytes(to_wire_map(env) | {"key_id": "k1"})
    values = msgpack.unpackb(blob, raw=False)
    assert isinstance(values, list)
    assert len(values) == len(SIGNED_FIELDS) == len(PacketEnvelope.model_fields) - 1
    assert "signature" not in SIGNED_FIELDS
    expected = to_wire_map(env) | {"key_id": "k1"}
    del expected["signature"]
    assert dict(zip(SIGNED_FIELDS, values, strict=True)) == expected
    assert list(expected) == list(SIGNED_FIELDS)  # declaration order
    assert b"correlation_id" not in blob  # values only: no field names travel
    # sig: HMAC-SHA256 of the env bytes as they travel, computed independently here
    assert sig == hmac.new(KEYRING["k1"], blob, hashlib.sha256).hexdigest()
    # a decoded envelope rebuilds the same bytes, so verify_envelope agrees with the wire
    decoded = decode_envelope(as_redis(entry), VERIFIER)
    assert decoded.signature == sig
    assert canonical_bytes(to_wire_map(decoded)) == blob


def test_unsigned_entry_has_no_sig_field_and_the_same_canonical_env() -> None:
    env = make()
    entry = encode(env)
    assert SIGNATURE_FIELD not in entry
    assert entry[ENVELOPE_FIELD] == canonical_bytes(to_wire_map(env))
    assert unpack(as_redis(entry))["key_id"] is None


def test_encode_does_not_resign_a_signed_envelope() -> None:
    first = as_redis(encode(make(), SIGNER))
    signed, _ = decode(first, VERIFIER, TYPES)
    again_entry = as_redis(encode(signed, Signer(KEYRING, "k2")))
    again, _ = decode(again_entry, VERIFIER, TYPES)
    assert again.key_id == "k1"
    assert again.signature == signed.signature
    assert again_entry == first  # re-published byte for byte
    assert as_redis(encode(signed)) == first  # with no signer at all, too


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
    ("value", "name"), [({"id": "x"}, "dict"), ("text", "str"), (3, "int"), (None, "NoneType")]
)
def test_msgpack_that_is_not_a_list_is_undecodable(value: Any, name: str) -> None:
    error = refused({b"env": msgpack.packb(value)})
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail == f"envelope is a {name}, not a list"


def test_the_old_map_form_is_undecodable() -> None:
    error = refused({b"env": msgpack.packb(to_wire_map(make()), use_bin_type=True)}, verifier=None)
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail == "envelope is a dict, not a list"


# A list of the wrong length cannot be read as named fields at all, so (like "not a
# list") it is UNDECODABLE, not INVALID_ENVELOPE -- with or without a verifier.
@pytest.mark.parametrize("verifier", [VERIFIER, None], ids=["verified", "unverified"])
@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="empty"),
        pytest.param([1, 2], id="two"),
        pytest.param(list(to_wire_map(make()).values()), id="with-a-signature-slot"),
        pytest.param([to_wire_map(make())[f] for f in SIGNED_FIELDS[:-1]], id="one-short"),
        pytest.param([to_wire_map(make())[f] for f in SIGNED_FIELDS] + ["red"], id="one-extra"),
    ],
)
def test_list_of_the_wrong_length_is_undecodable(values: list[Any], verifier: Verifier | None) -> None:
    blob = msgpack.packb(values, use_bin_type=True)
    error = refused({b"env": blob, b"sig": SIGNER.sign_bytes(blob).encode()}, verifier=verifier)
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail == f"envelope has {len(values)} fields, expected {len(SIGNED_FIELDS)}"


# -- refusals: invalid envelope -----------------------------------------------------------------


# Every position is always present, so a "missing" field is a None in its slot. The
# entries are validly signed: a signature never stands in for validation.
@pytest.mark.parametrize("verifier", [VERIFIER, None], ids=["verified", "unverified"])
@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("id", "Field required"),  # never defaulted: a redelivery would get a new id
        ("time", "Field required"),  # never defaulted: a redelivery would get a new time
        ("source", "Input should be a valid string"),
        ("type", "Input should be a valid string"),
        ("correlation_id", "Input should be a valid string"),
    ],
)
def test_array_with_a_required_field_null_is_invalid_naming_it(
    field: str, message: str, verifier: Verifier | None
) -> None:
    env = make()
    error = refused(signed_entry(to_wire_map(env) | {field: None}), verifier=verifier)
    assert error.reason is ErrorReason.INVALID_ENVELOPE
    assert error.detail.startswith(f"field {field!r}: {message}")
    assert error.envelope_id == (None if field == "id" else env.id)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "nope"),
        ("type", "l9.Bad"),
        ("sequence", -1),
        ("kind", "gossip"),
        ("time", "yesterday"),
        ("specversion", "0.3"),
        # a null never means "use the default"
        ("sequence", None),
        ("data", None),
        ("kind", None),
        ("specversion", None),
        ("datacontenttype", None),
    ],
)
def test_array_with_a_bad_field_value_is_invalid_naming_it(field: str, value: Any) -> None:
    env = make()
    error = refused(signed_entry(to_wire_map(env) | {field: value}))
    assert error.reason is ErrorReason.INVALID_ENVELOPE
    assert error.detail.startswith(f"field {field!r}: ")
    assert error.envelope_id == env.id


def test_a_sig_that_is_not_text_is_invalid_without_a_verifier() -> None:
    entry = {"env": encode(make())["env"], "sig": 12}
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(entry, None)
    assert caught.value.reason is ErrorReason.INVALID_ENVELOPE
    assert caught.value.detail.startswith("field 'signature': ")


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


def test_signed_envelope_with_its_sig_removed_is_refused_as_unsigned() -> None:
    env = make()
    entry = as_redis(encode(env, SIGNER))
    del entry[b"sig"]
    error = refused(entry)
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
        pytest.param(_set("subject", "job-1"), id="subject-added"),
        pytest.param(_set("dataschema", None), id="dataschema-removed"),
        pytest.param(
            lambda f: f.__setitem__("time", f["time"].replace("+00:00", "Z")), id="time-same-instant-as-Z"
        ),
    ],
)
def test_tampering_with_the_signed_envelope_is_a_bad_signature(
    change: Callable[[dict[str, Any]], None],
) -> None:
    env = make(ttl=timedelta(seconds=60))
    entry = as_redis(encode(env, SIGNER))
    decode(entry, VERIFIER, TYPES)  # intact: accepted
    tampered = repack(entry, change)
    assert tampered[b"env"] != entry[b"env"]
    error = refused(tampered)
    assert error.reason is ErrorReason.BAD_SIGNATURE
    assert error.detail == f"signature does not match the content (key id {unpack(tampered)['key_id']!r})"
    assert error.envelope_id == env.id


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(b"pinger", b"pinged", id="source-byte"),
        pytest.param(b"\xa4note\xa2hi", b"\xa4note\xa2ho", id="data-byte"),
        pytest.param(b"\xa2k1", b"\xa2k2", id="key-id-byte"),
        pytest.param(b"\xa1n\x07", b"\xa1n\xcc\x07", id="same-value-other-encoding"),
        pytest.param(b"+00:00", b"-00:00", id="same-instant-other-text"),
    ],
)
def test_any_change_to_the_env_bytes_is_a_bad_signature(old: bytes, new: bytes) -> None:
    """The signature covers the exact bytes: even a change that decodes to an equal
    envelope (another msgpack encoding of 7, another spelling of the time) fails."""
    env = make(data={"n": 7, "note": "hi"})
    entry = as_redis(encode(env, SIGNER))
    assert entry[b"env"].count(old) == 1
    tampered = entry | {b"env": entry[b"env"].replace(old, new)}
    if old == b"\xa1n\x07":  # still decodes, to the very same values
        assert unpack(tampered) == unpack(entry)
    if old in (b"\xa1n\x07", b"+00:00"):  # unverified, it is the very same envelope
        assert decode_envelope(tampered, None) == decode_envelope(entry, None)
    error = refused(tampered)
    assert error.reason is ErrorReason.BAD_SIGNATURE
    assert error.detail.startswith("signature does not match the content (key id ")
    assert error.envelope_id == env.id


def test_trailing_bytes_after_the_env_array_are_undecodable() -> None:
    entry = as_redis(encode(make(), SIGNER))
    error = refused(entry | {b"env": entry[b"env"] + b"\x00"})
    assert error.reason is ErrorReason.UNDECODABLE
    assert error.detail.startswith("not msgpack: ")


@pytest.mark.parametrize(
    "sig",
    [
        pytest.param(lambda s: b"0" * 64, id="zeros"),
        pytest.param(lambda s: s.upper(), id="upper-case"),
        pytest.param(lambda s: s[:-1], id="truncated"),
        pytest.param(lambda s: s + b"0", id="extended"),
        pytest.param(lambda s: b"", id="empty"),
        pytest.param(lambda s: b"\xff" * 64, id="not-ascii"),
        pytest.param(lambda s: as_redis(encode(make(), SIGNER))[b"sig"], id="another-envelopes-signature"),
    ],
)
def test_tampered_sig_field_is_a_bad_signature(sig: Callable[[bytes], bytes]) -> None:
    env = make()
    entry = as_redis(encode(env, SIGNER))
    error = refused(entry | {b"sig": sig(entry[b"sig"])})
    assert error.reason is ErrorReason.BAD_SIGNATURE
    assert error.detail == "signature does not match the content (key id 'k1')"
    assert error.envelope_id == env.id


@pytest.mark.parametrize("sig", [12, "é" * 64, "0" * 64, None], ids=["int", "not-ascii", "zeros", "none"])
def test_tampered_sig_in_a_str_keyed_entry_is_a_bad_signature(sig: Any) -> None:
    env = make()
    entry: dict[str, Any] = dict(encode(env, SIGNER)) | {"sig": sig}
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(entry, VERIFIER)
    assert caught.value.reason is ErrorReason.BAD_SIGNATURE
    expected = "envelope is not signed" if sig is None else "signature does not match the content"
    assert caught.value.detail.startswith(expected)
    assert caught.value.envelope_id == env.id


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
    entry = as_redis(encode(env, SIGNER))
    decoded = decode_envelope({b"env": entry[b"env"], b"sig": entry[b"sig"]}, VERIFIER)
    assert unsigned(decoded) == env
    assert decoded.signature == entry[b"sig"].decode()


def test_decode_without_a_verifier_keeps_the_sig_for_a_later_check() -> None:
    entry = as_redis(encode(make(), SIGNER))
    decoded = decode_envelope(entry, None)
    assert decoded.signature == entry[b"sig"].decode()
    assert decoded.key_id == "k1"
    VERIFIER.verify_envelope(decoded)
