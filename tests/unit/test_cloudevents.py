"""CloudEvents mapping, checked against the official SDK (cloudevents.core, v1.0 JSON format)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from envelope import (
    EnvelopeError,
    ErrorReason,
    PacketEnvelope,
    Signer,
    Verifier,
    decode_envelope,
    encode,
    from_cloudevent,
    to_cloudevent,
)
from envelope._cloudevents import EXTENSIONS

TYPE = "l9.demo.ping.v1"
SOURCE = "agent://demo/pinger"
KEYRING = {"k1": b"secret"}


def full_envelope(**overrides: Any) -> PacketEnvelope:
    root = PacketEnvelope.new(type=TYPE, source=SOURCE)
    fields: dict[str, Any] = {
        "data": {"n": 1, "nested": {"xs": [1, 2.5, None, True, "ü"]}, "empty": {}},
        "correlation_id": root.correlation_id,
        "causation_id": root.id,
        "in_reply_to": root.id,
        "reply_to": "l9:replies:pinger",
        "kind": "request",
        "subject": "job-42",
        "sequence": 12,
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "l9=1",
        "auth": "user:alice",
        "ttl": timedelta(seconds=90),
    }
    return PacketEnvelope.new(type=TYPE, source=SOURCE, **(fields | overrides))


def signed(envelope: PacketEnvelope) -> PacketEnvelope:
    return decode_envelope(encode(envelope, Signer(KEYRING, "k1")), Verifier(KEYRING))


def through_sdk(envelope: PacketEnvelope) -> tuple[CloudEvent, dict[str, Any]]:
    """Envelope -> our JSON -> SDK event -> SDK JSON -> parsed dict."""
    raw = json.dumps(to_cloudevent(envelope)).encode()
    event = JSONFormat().read(CloudEvent, raw)  # validates: raises CloudEventValidationError
    assert isinstance(event, CloudEvent)
    return event, json.loads(JSONFormat().write(event))


def test_extension_names_are_valid_cloudevents_names() -> None:
    for name in EXTENSIONS.values():
        assert re.fullmatch(r"[a-z0-9]{1,20}", name), name
    assert len(set(EXTENSIONS.values())) == len(EXTENSIONS)


def test_sdk_accepts_the_event_with_the_right_attributes() -> None:
    env = signed(full_envelope())
    event, _ = through_sdk(env)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == env.id
    assert event.get_source() == SOURCE
    assert event.get_type() == TYPE
    assert event.get_subject() == "job-42"
    assert event.get_time() == env.time
    assert event.get_time().utcoffset() == timedelta(0)  # type: ignore[union-attr]
    assert event.get_datacontenttype() == "application/json"
    assert event.get_dataschema() == f"urn:l9:schema:{TYPE}"
    assert event.get_data() == env.data
    assert env.expires_at is not None
    expected_extensions = {
        "l9kind": "request",
        "correlationid": env.correlation_id,
        "causationid": env.causation_id,
        "inreplyto": env.in_reply_to,
        "replyto": "l9:replies:pinger",
        "sequence": 12,
        "traceparent": env.traceparent,
        "tracestate": "l9=1",
        "expiresat": env.expires_at.isoformat(),
        "authid": "user:alice",
        "keyid": "k1",
        "signature": env.signature,
    }
    for name, value in expected_extensions.items():
        assert event.get_extension(name) == value, name
    core = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
    assert set(event.get_attributes()) == core | set(expected_extensions)


def test_full_envelope_round_trips_through_the_sdk() -> None:
    env = full_envelope()
    _, written = through_sdk(env)
    assert written["time"].endswith("Z")  # the SDK rewrites the time; we must still read it
    assert from_cloudevent(written) == env


def test_minimal_envelope_round_trips_and_emits_no_null_attributes() -> None:
    env = PacketEnvelope.new(type=TYPE, source=SOURCE)
    event = to_cloudevent(env)
    assert None not in event.values()
    assert {"subject", "causationid", "expiresat", "keyid", "signature"}.isdisjoint(event)
    assert event["data"] == {}
    _, written = through_sdk(env)
    assert from_cloudevent(written) == env


def test_signed_envelope_stays_verifiable_after_the_sdk_round_trip() -> None:
    verifier = Verifier(KEYRING)
    env = signed(full_envelope())
    _, written = through_sdk(env)
    back = from_cloudevent(written)
    assert back == env
    assert back.signature == env.signature
    verifier.verify_envelope(back)
    # and it can go back onto the bus and verify there too: the very same entry, byte for byte
    assert encode(back) == encode(env)
    assert decode_envelope(encode(back), verifier) == env


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("source", "agent://evil/x"), ("sequence", 13), ("correlationid", "other-run"), ("subject", "job-43")],
)
def test_tampering_on_the_cloudevents_side_breaks_the_signature(attribute: str, value: Any) -> None:
    _, written = through_sdk(signed(full_envelope()))
    written[attribute] = value
    with pytest.raises(EnvelopeError) as caught:
        Verifier(KEYRING).verify_envelope(from_cloudevent(written))
    assert caught.value.reason is ErrorReason.BAD_SIGNATURE


def test_tampered_data_breaks_the_signature() -> None:
    _, written = through_sdk(signed(full_envelope()))
    written["data"]["n"] = 2
    with pytest.raises(EnvelopeError, match="signature does not match"):
        Verifier(KEYRING).verify_envelope(from_cloudevent(written))


def test_sdk_refuses_a_broken_event_so_the_checks_above_mean_something() -> None:
    broken = to_cloudevent(full_envelope()) | {"Bad_Name": 1}
    with pytest.raises(CloudEventValidationError):
        JSONFormat().read(CloudEvent, json.dumps(broken).encode())


def test_from_cloudevent_accepts_a_string_sequence() -> None:
    env = full_envelope()
    event = to_cloudevent(env) | {"sequence": "12"}
    assert from_cloudevent(event) == env


def test_from_cloudevent_refuses_unknown_attributes() -> None:
    event = to_cloudevent(full_envelope()) | {"partitionkey": "p1"}
    with pytest.raises(EnvelopeError) as caught:
        from_cloudevent(event)
    assert caught.value.reason is ErrorReason.INVALID_ENVELOPE
    assert caught.value.detail == "unknown CloudEvents attribute 'partitionkey'"


@pytest.mark.parametrize(("attribute", "field"), [("source", "source"), ("l9kind", "kind"), ("type", "type")])
def test_from_cloudevent_names_the_invalid_field(attribute: str, field: str) -> None:
    event = to_cloudevent(full_envelope()) | {attribute: "nonsense"}
    with pytest.raises(EnvelopeError) as caught:
        from_cloudevent(event)
    assert caught.value.reason is ErrorReason.INVALID_ENVELOPE
    assert caught.value.detail.startswith(f"field {field!r}: ")
