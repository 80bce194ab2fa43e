"""PacketEnvelope, the payload registry, the wire codec, signing, CloudEvents."""

from ._cloudevents import from_cloudevent, to_cloudevent
from ._codec import (
    ENVELOPE_FIELD,
    HEADER_FIELDS,
    SIGNATURE_FIELD,
    decode,
    decode_envelope,
    encode,
    entry_args,
    to_wire_map,
)
from ._errors import EnvelopeError, ErrorReason
from ._model import Kind, PacketEnvelope, new_id, utcnow
from ._registry import Payload, PayloadRegistry, payload, registry, split_type
from ._signing import SIGNED_FIELDS, Signer, Verifier, canonical_bytes

__all__ = [
    "ENVELOPE_FIELD",
    "HEADER_FIELDS",
    "SIGNATURE_FIELD",
    "SIGNED_FIELDS",
    "EnvelopeError",
    "ErrorReason",
    "Kind",
    "PacketEnvelope",
    "Payload",
    "PayloadRegistry",
    "Signer",
    "Verifier",
    "canonical_bytes",
    "decode",
    "decode_envelope",
    "encode",
    "entry_args",
    "from_cloudevent",
    "new_id",
    "payload",
    "registry",
    "split_type",
    "to_cloudevent",
    "to_wire_map",
    "utcnow",
]
