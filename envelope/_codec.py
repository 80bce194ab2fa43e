"""Stream entries <-> envelopes: the one place wire messages are parsed.

An entry carries the routing headers as plain fields (``id``, ``type``,
``source``, ``correlation_id``) so ``redis-cli XRANGE`` is readable, and the
whole envelope as one msgpack field, ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgpack
from pydantic import ValidationError

from ._errors import EnvelopeError, ErrorReason
from ._model import PacketEnvelope
from ._registry import Payload, PayloadRegistry, registry
from ._signing import Signer, Verifier

ENVELOPE_FIELD = "env"
_ENVELOPE_KEY = ENVELOPE_FIELD.encode()
_TIME_FIELDS = ("time", "expires_at")
#: Plain, unsigned copies of envelope fields kept beside ``env`` for readability.
HEADER_FIELDS = ("id", "type", "source", "correlation_id")
_HEADER_KEYS = tuple((name, name.encode()) for name in HEADER_FIELDS)
#: Fields whose model default is made up on the spot (a fresh id, the current
#: time): a wire map must carry them, or a redelivery would get a new identity.
_NOT_DEFAULTED = ("id", "time")


def to_wire_map(envelope: PacketEnvelope) -> dict[str, Any]:
    """The envelope as plain msgpack/JSON-able values (times as ISO-8601)."""
    fields = dict(envelope.__dict__)
    for name in _TIME_FIELDS:
        value = fields[name]
        if isinstance(value, datetime):
            fields[name] = value.isoformat()
    return fields


def encode(envelope: PacketEnvelope, signer: Signer | None = None) -> dict[str, str | bytes]:
    """Stream-entry fields for ``envelope``, signed when a signer is given."""
    fields = to_wire_map(envelope)
    if signer is not None and envelope.signature is None:
        signer.sign(fields)
    return {
        "id": envelope.id,
        "type": envelope.type,
        "source": envelope.source,
        "correlation_id": envelope.correlation_id,
        ENVELOPE_FIELD: msgpack.packb(fields, use_bin_type=True),
    }


def decode_envelope(
    entry: Mapping[bytes, bytes] | Mapping[str, Any], verifier: Verifier | None = None
) -> PacketEnvelope:
    """A verified envelope from stream-entry fields, or EnvelopeError saying why not."""
    raw = entry.get(_ENVELOPE_KEY) or entry.get(ENVELOPE_FIELD)  # type: ignore[call-overload]
    if not isinstance(raw, bytes | bytearray):
        raise EnvelopeError(ErrorReason.UNDECODABLE, f"entry has no {ENVELOPE_FIELD!r} field")
    try:
        fields = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EnvelopeError(ErrorReason.UNDECODABLE, f"not msgpack: {exc}") from None
    if not isinstance(fields, dict):
        raise EnvelopeError(ErrorReason.UNDECODABLE, f"envelope is a {type(fields).__name__}, not a map")
    if verifier is not None:
        verifier.verify(fields)
    eid = fields.get("id") if isinstance(fields.get("id"), str) else None
    for name in _NOT_DEFAULTED:
        if name not in fields:
            raise EnvelopeError(
                ErrorReason.INVALID_ENVELOPE, f"field {name!r}: Field required", envelope_id=eid
            )
    try:
        envelope = PacketEnvelope.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EnvelopeError(
            ErrorReason.INVALID_ENVELOPE,
            f"field {loc!r}: {first['msg']} ({exc.error_count()} error(s))",
            envelope_id=eid,
        ) from None
    _check_headers(entry, envelope)
    return envelope


def _check_headers(entry: Mapping[bytes, bytes] | Mapping[str, Any], envelope: PacketEnvelope) -> None:
    """The plain header fields are not signed: refuse an entry whose headers
    disagree with its (verified) envelope, so what ``XRANGE`` shows is true."""
    for name, key in _HEADER_KEYS:
        value = entry.get(key)  # type: ignore[call-overload]
        if value is None:
            value = entry.get(name)  # type: ignore[call-overload]
            if value is None:
                continue
        expected: str = getattr(envelope, name)
        if value == expected or (isinstance(value, bytes | bytearray) and value == expected.encode()):
            continue
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "replace")
        raise EnvelopeError(
            ErrorReason.INVALID_ENVELOPE,
            f"header field {name!r} is {value!r} but the envelope says {expected!r}",
            envelope_id=envelope.id,
        )


def decode(
    entry: Mapping[bytes, bytes] | Mapping[str, Any],
    verifier: Verifier | None = None,
    types: PayloadRegistry = registry,
) -> tuple[PacketEnvelope, Payload]:
    """Envelope and typed payload; EnvelopeError for garbage, bad signature,
    unknown type or a payload that fails its model."""
    envelope = decode_envelope(entry, verifier)
    return envelope, types.load(envelope)
