"""The one error a wire message can raise on its way into L9."""

from __future__ import annotations

from enum import StrEnum


class ErrorReason(StrEnum):
    UNDECODABLE = "undecodable"  # not msgpack, missing field, not a list of the right length
    INVALID_ENVELOPE = "invalid_envelope"  # envelope fields fail validation
    UNKNOWN_TYPE = "unknown_type"  # no payload model registered for `type`
    INVALID_PAYLOAD = "invalid_payload"  # `data` fails the payload model
    BAD_SIGNATURE = "bad_signature"  # missing, unknown key id, or mismatch
    UNAUTHORIZED_SIGNER = "unauthorized_signer"  # the signing key may not emit this type (governance)


class EnvelopeError(Exception):
    """A wire message could not become a trusted, typed envelope.

    ``reason`` says which check failed, ``detail`` says why, in words a person
    can act on. Consumers dead-letter the entry with both.
    """

    def __init__(self, reason: ErrorReason, detail: str, *, envelope_id: str | None = None):
        self.reason = reason
        self.detail = detail
        self.envelope_id = envelope_id
        where = f" (envelope {envelope_id})" if envelope_id else ""
        super().__init__(f"{reason.value}{where}: {detail}")
