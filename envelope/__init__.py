"""PacketEnvelope, the payload registry, the wire codec, signing (HMAC, Ed25519), CloudEvents."""

from ._cloudevents import from_cloudevent, to_cloudevent
from ._codec import (
    ENVELOPE_FIELD,
    HEADER_FIELDS,
    SIGNATURE_FIELD,
    batch_entry_args,
    decode,
    decode_envelope,
    encode,
    entry_args,
    to_wire_map,
)
from ._errors import EnvelopeError, ErrorReason
from ._model import Kind, PacketEnvelope, new_id, utcnow
from ._registry import Payload, PayloadRegistry, payload, registry, split_type
from ._signing import (
    ED25519_PREFIX,
    SIGNED_FIELDS,
    Ed25519Signer,
    Signer,
    Verifier,
    agent_of_key,
    canonical_bytes,
)

__all__ = [
    "ED25519_PREFIX",
    "ENVELOPE_FIELD",
    "HEADER_FIELDS",
    "SIGNATURE_FIELD",
    "SIGNED_FIELDS",
    "Ed25519Signer",
    "EnvelopeError",
    "ErrorReason",
    "Kind",
    "PacketEnvelope",
    "Payload",
    "PayloadRegistry",
    "Signer",
    "Verifier",
    "agent_of_key",
    "batch_entry_args",
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
