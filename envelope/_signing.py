"""HMAC-SHA256 signatures over the canonical form of an envelope."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import msgpack

from ._errors import EnvelopeError, ErrorReason
from ._model import FIELDS, PacketEnvelope

_SIGNED = tuple(f for f in FIELDS if f != "signature")


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """The signed bytes: every field but ``signature``, in declaration order.

    ``fields`` is the wire map (times as ISO-8601 strings), so signing and
    verifying work on exactly the values that travel.
    """
    packed: bytes = msgpack.packb([fields.get(name) for name in _SIGNED], use_bin_type=True)
    return packed


class Signer:
    """Signs wire maps with one key of a keyring."""

    def __init__(self, keyring: Mapping[str, bytes], key_id: str) -> None:
        if key_id not in keyring:
            raise ValueError(f"signing key id {key_id!r} is not in the keyring ({sorted(keyring)})")
        self.key_id = key_id
        self._key = keyring[key_id]

    def sign(self, fields: dict[str, Any]) -> None:
        """Set ``key_id`` and ``signature`` on a wire map in place."""
        fields["key_id"] = self.key_id
        fields["signature"] = hmac.digest(self._key, canonical_bytes(fields), hashlib.sha256).hex()


class Verifier:
    """Checks signatures against a keyring; unsigned envelopes fail when required."""

    def __init__(self, keyring: Mapping[str, bytes], *, required: bool = True) -> None:
        self._keyring = dict(keyring)
        self.required = required

    def verify(self, fields: Mapping[str, Any]) -> None:
        signature, key_id = fields.get("signature"), fields.get("key_id")
        eid = fields.get("id") if isinstance(fields.get("id"), str) else None
        if signature is None:
            if self.required:
                raise EnvelopeError(ErrorReason.BAD_SIGNATURE, "envelope is not signed", envelope_id=eid)
            return
        key = self._keyring.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE, f"unknown signing key id {key_id!r}", envelope_id=eid
            )
        expected = hmac.digest(key, canonical_bytes(fields), hashlib.sha256).hex()
        if not isinstance(signature, str) or not hmac.compare_digest(expected, signature):
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE,
                f"signature does not match the content (key id {key_id!r})",
                envelope_id=eid,
            )

    def verify_envelope(self, envelope: PacketEnvelope) -> None:
        from ._codec import to_wire_map

        self.verify(to_wire_map(envelope))
