"""HMAC-SHA256 signing: keys, rotation, optional verification, and a property test."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import (
    SIGNATURE_FIELD,
    EnvelopeError,
    ErrorReason,
    PacketEnvelope,
    Signer,
    Verifier,
    canonical_bytes,
    decode_envelope,
    encode,
    to_wire_map,
)

TYPE = "l9.demo.ping.v1"
SOURCE = "agent://demo/pinger"
OLD = {"2024": b"old secret"}
NEW = {"2025": b"new secret"}


def make(**fields: Any) -> PacketEnvelope:
    fields.setdefault("data", {"n": 1})
    return PacketEnvelope.new(type=TYPE, source=SOURCE, **fields)


def signed_map(envelope: PacketEnvelope, keyring: dict[str, bytes], key_id: str) -> dict[str, Any]:
    fields = to_wire_map(envelope)
    Signer(keyring, key_id).sign(fields)
    return fields


def bad_signature(verifier: Verifier, fields: dict[str, Any]) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as caught:
        verifier.verify(fields)
    assert caught.value.reason is ErrorReason.BAD_SIGNATURE
    return caught.value


def test_sign_sets_key_id_and_a_hex_sha256_signature() -> None:
    fields = signed_map(make(), OLD, "2024")
    assert fields["key_id"] == "2024"
    assert len(fields["signature"]) == 64
    assert fields["signature"] == fields["signature"].lower()
    int(fields["signature"], 16)
    Verifier(OLD).verify(fields)


def test_signature_is_deterministic_and_changes_with_the_key() -> None:
    env = make()
    one = signed_map(env, {"k": b"secret one"}, "k")
    same = signed_map(env, {"k": b"secret one"}, "k")
    other = signed_map(env, {"k": b"secret two"}, "k")
    assert one["signature"] == same["signature"]
    assert one["signature"] != other["signature"]
    # same key id, different secret: the verifier's secret decides
    error = bad_signature(Verifier({"k": b"secret one"}), other)
    assert error.detail == "signature does not match the content (key id 'k')"


def test_signature_changes_with_the_content() -> None:
    env = make()
    base = signed_map(env, OLD, "2024")["signature"]
    assert signed_map(make(data={"n": 1}), OLD, "2024")["signature"] != base  # different id and time
    assert signed_map(env.model_copy(update={"data": {"n": 2}}), OLD, "2024")["signature"] != base
    assert signed_map(env.model_copy(update={"sequence": 1}), OLD, "2024")["signature"] != base


def test_canonical_bytes_cover_the_key_id_but_not_the_signature() -> None:
    fields = signed_map(make(), OLD, "2024")
    assert canonical_bytes(fields) == canonical_bytes(fields | {"signature": "something else"})
    assert canonical_bytes(fields) != canonical_bytes(fields | {"key_id": "2025"})


def test_sign_bytes_signs_the_canonical_bytes_as_sign_does() -> None:
    env = make()
    fields = signed_map(env, OLD, "2024")
    blob = canonical_bytes(fields)
    assert Signer(OLD, "2024").sign_bytes(blob) == fields["signature"]
    entry = encode(env, Signer(OLD, "2024"))
    assert entry["env"] == blob
    assert entry[SIGNATURE_FIELD] == fields["signature"]


def test_verify_bytes_accepts_the_signature_as_str_or_bytes() -> None:
    fields = signed_map(make(), OLD, "2024")
    blob = canonical_bytes(fields)
    for signature in (
        fields["signature"],
        fields["signature"].encode(),
        bytearray(fields["signature"], "ascii"),
    ):
        Verifier(OLD).verify_bytes(blob, "2024", signature, fields["id"])
    Verifier(OLD, required=False).verify_bytes(blob, "2024", None)


def _error(check: Any) -> tuple[ErrorReason, str, str | None]:
    with pytest.raises(EnvelopeError) as caught:
        check()
    return caught.value.reason, caught.value.detail, caught.value.envelope_id


@pytest.mark.parametrize(
    ("keyring", "change", "detail"),
    [
        (OLD, {"signature": None}, "envelope is not signed"),
        (NEW, {}, "unknown signing key id '2024'"),
        (OLD, {"key_id": None}, "unknown signing key id None"),
        (OLD, {"key_id": 7}, "unknown signing key id 7"),
        (OLD, {"data": {"n": 2}}, "signature does not match the content (key id '2024')"),
        (OLD, {"signature": "0" * 64}, "signature does not match the content (key id '2024')"),
        (OLD, {"signature": 12}, "signature does not match the content (key id '2024')"),
        (OLD, {"signature": "é" * 64}, "signature does not match the content (key id '2024')"),
    ],
)
def test_verify_and_verify_bytes_refuse_alike(
    keyring: dict[str, bytes], change: dict[str, Any], detail: str
) -> None:
    """One code path: a wire map and its canonical bytes get the same verdict and words."""
    env = make()
    fields = signed_map(env, OLD, "2024") | change
    verifier = Verifier(keyring)
    by_map = _error(lambda: verifier.verify(fields))
    by_bytes = _error(
        lambda: verifier.verify_bytes(canonical_bytes(fields), fields["key_id"], fields["signature"], env.id)
    )
    assert by_map == by_bytes == (ErrorReason.BAD_SIGNATURE, detail, env.id)


def test_signer_refuses_a_key_id_missing_from_its_keyring() -> None:
    with pytest.raises(ValueError, match=r"'2026' is not in the keyring \(\['2024'\]\)"):
        Signer(OLD, "2026")


def test_key_rotation_verifier_with_both_keys_accepts_either() -> None:
    both = Verifier(OLD | NEW)
    old_signed = signed_map(make(), OLD, "2024")
    new_signed = signed_map(make(), NEW, "2025")
    both.verify(old_signed)
    both.verify(new_signed)
    # once the old key is retired, its envelopes are refused and new ones still pass
    new_only = Verifier(NEW)
    new_only.verify(new_signed)
    assert bad_signature(new_only, old_signed).detail == "unknown signing key id '2024'"


def test_rotation_through_the_codec() -> None:
    both = Verifier(OLD | NEW)
    for keyring, key_id in ((OLD, "2024"), (NEW, "2025")):
        decoded = decode_envelope(encode(make(), Signer(keyring, key_id)), both)
        assert decoded.key_id == key_id
        both.verify_envelope(decoded)


def test_relabelled_key_id_is_refused() -> None:
    fields = signed_map(make(), OLD, "2024") | {"key_id": "2025"}
    assert bad_signature(Verifier(OLD | NEW), fields).detail.startswith("signature does not match")


def test_required_verifier_refuses_unsigned() -> None:
    env = make()
    error = bad_signature(Verifier(OLD), to_wire_map(env))
    assert error.detail == "envelope is not signed"
    assert error.envelope_id == env.id


def test_optional_verifier_accepts_unsigned_but_still_checks_signatures() -> None:
    lenient = Verifier(OLD, required=False)
    assert lenient.required is False
    env = make()
    lenient.verify(to_wire_map(env))
    assert decode_envelope(encode(env), lenient) == env
    # a signature that is present must still be right
    tampered = signed_map(env, OLD, "2024")
    tampered["data"] = {"n": 2}
    assert bad_signature(lenient, tampered).detail.startswith("signature does not match")
    assert bad_signature(lenient, signed_map(env, NEW, "2025")).detail == "unknown signing key id '2025'"


def test_verify_envelope_checks_a_decoded_envelope() -> None:
    verifier = Verifier(OLD)
    decoded = decode_envelope(encode(make(), Signer(OLD, "2024")), verifier)
    verifier.verify_envelope(decoded)
    with pytest.raises(EnvelopeError) as caught:
        verifier.verify_envelope(decoded.model_copy(update={"data": {"n": 99}}))
    assert caught.value.reason is ErrorReason.BAD_SIGNATURE
    with pytest.raises(EnvelopeError, match="not signed"):
        verifier.verify_envelope(make())


# -- property: arbitrary JSON-like data survives sign + encode + decode ---------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # msgpack's integer range
    | st.floats(allow_nan=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
json_data = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (True is not 1, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def test_same_is_strict() -> None:
    assert same({"a": [1, 2.0, None]}, {"a": [1, 2.0, None]})
    assert not same({"a": True}, {"a": 1})
    assert not same([0.0], [-0.0])
    assert not same({"a": 1, "b": 2}, {"b": 2, "a": 1})  # key order is part of the signed bytes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=json_data)
def test_arbitrary_data_round_trips_signed(data: dict[str, Any]) -> None:
    keyring = OLD | NEW
    verifier = Verifier(keyring)
    env = PacketEnvelope.new(type=TYPE, source=SOURCE, data=data)
    entry = {
        k.encode(): v if isinstance(v, bytes) else v.encode()
        for k, v in encode(env, Signer(keyring, "2025")).items()
    }
    decoded = decode_envelope(entry, verifier)
    assert same(decoded.data, data)
    assert decoded.model_copy(update={"key_id": None, "signature": None}) == env
    assert decoded.key_id == "2025"
    assert decoded.signature == entry[b"sig"].decode()
    # the decoded model rebuilds the exact bytes that were signed and sent
    assert canonical_bytes(to_wire_map(decoded)) == entry[b"env"]
    verifier.verify_envelope(decoded)
