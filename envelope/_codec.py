"""Stream entries <-> envelopes: the one place wire messages are parsed.

Wire format (v2) of one stream entry:

* ``env``: the envelope as one msgpack blob, exactly :func:`canonical_bytes` --
  an array of the values of every field but ``signature``, in
  :data:`SIGNED_FIELDS` order (``key_id`` included), times as ISO-8601 strings;
* ``sig``: the signature of the ``env`` bytes as they travel (hex HMAC-SHA256, or
  ``ed25519:...``: see ``envelope._signing``); absent when unsigned;
* ``id``, ``type``, ``source``, ``correlation_id``: plain, unsigned copies of
  envelope fields so ``redis-cli XRANGE`` is readable; checked against ``env``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgpack
from pydantic import ValidationError

from ._canonical import SIGNED_FIELDS, signed_values, to_wire_map
from ._errors import EnvelopeError, ErrorReason
from ._fast import from_wire
from ._model import PacketEnvelope
from ._registry import Payload, PayloadRegistry, registry
from ._signing import Signer, Verifier

__all__ = [
    "ENVELOPE_FIELD",
    "HEADER_FIELDS",
    "SIGNATURE_FIELD",
    "batch_entry_args",
    "decode",
    "decode_envelope",
    "encode",
    "entry_args",
    "signed_blob",
    "to_wire_map",
]

ENVELOPE_FIELD = "env"
SIGNATURE_FIELD = "sig"
_ENVELOPE_KEY = ENVELOPE_FIELD.encode()
_SIGNATURE_KEY = SIGNATURE_FIELD.encode()
#: Plain, unsigned copies of envelope fields kept beside ``env`` for readability.
HEADER_FIELDS = ("id", "type", "source", "correlation_id")
_HEADER_KEYS = tuple((name, name.encode()) for name in HEADER_FIELDS)
#: Fields whose model default is made up on the spot (a fresh id, the current
#: time): the wire array must carry them, or a redelivery would get a new identity.
_NOT_DEFAULTED = ("id", "time")
_N_SIGNED = len(SIGNED_FIELDS)
_ID = SIGNED_FIELDS.index("id")
_TIME = SIGNED_FIELDS.index("time")
_EXPIRES = SIGNED_FIELDS.index("expires_at")
_KEY_ID = SIGNED_FIELDS.index("key_id")
_NOT_DEFAULTED_AT = tuple((name, SIGNED_FIELDS.index(name)) for name in _NOT_DEFAULTED)


def _blob(envelope: PacketEnvelope, key_id: str | None) -> bytes:
    """The ``env`` bytes of ``envelope``, with ``key_id`` in place of its own when given:
    == canonical_bytes(to_wire_map(envelope)), without building the map."""
    values = list(signed_values(envelope.__dict__))
    for i in (_TIME, _EXPIRES):
        value = values[i]
        if isinstance(value, datetime):
            values[i] = value.isoformat()
    if key_id is not None:
        values[_KEY_ID] = key_id
    blob: bytes = msgpack.packb(values, use_bin_type=True)
    return blob


def signed_blob(envelope: PacketEnvelope, signer: Signer | None = None) -> tuple[bytes, str | None]:
    """The ``env`` bytes of ``envelope`` and their signature (None when unsigned).

    An envelope that already carries a signature keeps it (and its key id)."""
    if envelope.signature is None and signer is not None:
        blob = _blob(envelope, signer.key_id)
        return blob, signer.sign_bytes(blob)
    return _blob(envelope, None), envelope.signature


def entry_args(envelope: PacketEnvelope, signer: Signer | None = None) -> list[str | bytes]:
    """The stream entry of ``envelope`` as XADD's field/value arguments, in the order of
    :func:`encode`'s map (what a publisher sends, without building the map first)."""
    return _args(envelope, *signed_blob(envelope, signer))


def batch_entry_args(envelopes: Sequence[PacketEnvelope], signer: Signer | None) -> list[list[str | bytes]]:
    """:func:`entry_args` of each of ``envelopes``, the unsigned ones signed as one batch
    (:meth:`Signer.sign_batch`: one Ed25519 signature for all of them)."""
    if signer is None or len(envelopes) == 1:
        return [entry_args(envelope, signer) for envelope in envelopes]
    blobs = [_blob(e, signer.key_id if e.signature is None else None) for e in envelopes]
    signatures = [e.signature for e in envelopes]
    to_sign = [i for i, signature in enumerate(signatures) if signature is None]
    if to_sign:
        for i, signature in zip(to_sign, signer.sign_batch([blobs[i] for i in to_sign]), strict=True):
            signatures[i] = signature
    return [_args(e, b, s) for e, b, s in zip(envelopes, blobs, signatures, strict=True)]


def _args(envelope: PacketEnvelope, blob: bytes, signature: str | None) -> list[str | bytes]:
    args: list[str | bytes] = [
        "id",
        envelope.id,
        "type",
        envelope.type,
        "source",
        envelope.source,
        "correlation_id",
        envelope.correlation_id,
        ENVELOPE_FIELD,
        blob,
    ]
    if signature is not None:
        args += (SIGNATURE_FIELD, signature)
    return args


def encode(envelope: PacketEnvelope, signer: Signer | None = None) -> dict[str, str | bytes]:
    """Stream-entry fields for ``envelope``, signed when a signer is given.

    An envelope that already carries a signature keeps it (and its key id).
    """
    blob, signature = signed_blob(envelope, signer)
    entry: dict[str, str | bytes] = {
        "id": envelope.id,
        "type": envelope.type,
        "source": envelope.source,
        "correlation_id": envelope.correlation_id,
        ENVELOPE_FIELD: blob,
    }
    if signature is not None:
        entry[SIGNATURE_FIELD] = signature
    return entry


def decode_envelope(
    entry: Mapping[bytes, bytes] | Mapping[str, Any], verifier: Verifier | None = None
) -> PacketEnvelope:
    """A verified envelope from stream-entry fields, or EnvelopeError saying why not."""
    raw = entry.get(_ENVELOPE_KEY) or entry.get(ENVELOPE_FIELD)  # type: ignore[call-overload]
    if not isinstance(raw, bytes | bytearray):
        raise EnvelopeError(ErrorReason.UNDECODABLE, f"entry has no {ENVELOPE_FIELD!r} field")
    try:
        values = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise EnvelopeError(ErrorReason.UNDECODABLE, f"not msgpack: {exc}") from None
    if type(values) is not list:
        raise EnvelopeError(ErrorReason.UNDECODABLE, f"envelope is a {type(values).__name__}, not a list")
    if len(values) != _N_SIGNED:
        raise EnvelopeError(
            ErrorReason.UNDECODABLE, f"envelope has {len(values)} fields, expected {_N_SIGNED}"
        )
    eid = values[_ID] if isinstance(values[_ID], str) else None
    signature = entry.get(_SIGNATURE_KEY)  # type: ignore[call-overload]
    if signature is None:
        signature = entry.get(SIGNATURE_FIELD)  # type: ignore[call-overload]
    if verifier is not None:
        verifier.verify_bytes(raw, values[_KEY_ID], signature, eid)
    if isinstance(signature, bytes | bytearray):
        signature = bytes(signature).decode("utf-8", "replace")
    envelope = from_wire(values, signature)
    if envelope is None:
        envelope = _validate(values, signature, eid)
    _check_headers(entry, envelope)
    return envelope


def _validate(values: list[Any], signature: Any, eid: str | None) -> PacketEnvelope:
    """The envelope of an ``env`` array through pydantic, or EnvelopeError saying why not."""
    for name, i in _NOT_DEFAULTED_AT:
        if values[i] is None:
            raise EnvelopeError(
                ErrorReason.INVALID_ENVELOPE, f"field {name!r}: Field required", envelope_id=eid
            )
    fields = dict(zip(SIGNED_FIELDS, values))  # noqa: B905 -- length checked by the caller
    fields["signature"] = signature
    try:
        return PacketEnvelope.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise EnvelopeError(
            ErrorReason.INVALID_ENVELOPE,
            f"field {loc!r}: {first['msg']} ({exc.error_count()} error(s))",
            envelope_id=eid,
        ) from None


def _check_headers(entry: Mapping[bytes, bytes] | Mapping[str, Any], envelope: PacketEnvelope) -> None:
    """The plain header fields are not signed: refuse an entry whose headers
    disagree with its (verified) envelope, so what ``XRANGE`` shows is true."""
    fields = envelope.__dict__
    try:  # as a publisher writes them: every header, as bytes
        if (
            entry[b"id"] == fields["id"].encode()  # type: ignore[index]
            and entry[b"type"] == fields["type"].encode()  # type: ignore[index]
            and entry[b"source"] == fields["source"].encode()  # type: ignore[index]
            and entry[b"correlation_id"] == fields["correlation_id"].encode()  # type: ignore[index]
        ):
            return
    except KeyError:
        pass
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
