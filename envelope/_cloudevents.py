"""PacketEnvelope <-> CloudEvents 1.0 (structured JSON form).

Envelope fields that CloudEvents lacks travel as extension attributes
(lower-case alphanumeric names, as the spec requires).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ._errors import EnvelopeError, ErrorReason
from ._model import PacketEnvelope

_CORE = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema")
#: envelope field -> CloudEvents extension attribute
EXTENSIONS: dict[str, str] = {
    "kind": "l9kind",
    "correlation_id": "correlationid",
    "causation_id": "causationid",
    "in_reply_to": "inreplyto",
    "reply_to": "replyto",
    "sequence": "sequence",
    "traceparent": "traceparent",
    "tracestate": "tracestate",
    "expires_at": "expiresat",
    "auth": "authid",
    "key_id": "keyid",
    "signature": "signature",
}
_FROM_EXTENSION = {ext: name for name, ext in EXTENSIONS.items()}


def to_cloudevent(envelope: PacketEnvelope) -> dict[str, Any]:
    """The envelope as a CloudEvents structured-mode JSON object."""
    event: dict[str, Any] = {}
    for name in _CORE:
        value = getattr(envelope, name)
        if value is not None:
            event[name] = value.isoformat() if name == "time" else value
    for name, ext in EXTENSIONS.items():
        value = getattr(envelope, name)
        if value is not None:
            event[ext] = value.isoformat() if name == "expires_at" else value
    event["data"] = envelope.data
    return event


def from_cloudevent(event: dict[str, Any]) -> PacketEnvelope:
    """An envelope from a CloudEvents structured JSON object (as the SDK writes it)."""
    fields: dict[str, Any] = {}
    for key, value in event.items():
        if key in _CORE:
            fields[key] = value
        elif key in _FROM_EXTENSION:
            fields[_FROM_EXTENSION[key]] = value
        elif key == "data":
            fields["data"] = value if value is not None else {}
        else:
            raise EnvelopeError(ErrorReason.INVALID_ENVELOPE, f"unknown CloudEvents attribute {key!r}")
    if "sequence" in fields:
        fields["sequence"] = int(fields["sequence"])
    try:
        return PacketEnvelope.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EnvelopeError(ErrorReason.INVALID_ENVELOPE, f"field {loc!r}: {first['msg']}") from None
