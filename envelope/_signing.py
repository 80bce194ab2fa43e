"""HMAC-SHA256 signatures over the canonical form of an envelope.

The canonical form is also the wire form: the stream entry's ``env`` field is
exactly :func:`canonical_bytes` of the envelope, and its ``sig`` field is the
HMAC of those bytes. Decoding checks the HMAC over the bytes as they arrived
(:meth:`Verifier.verify_bytes`); :meth:`Verifier.verify_envelope` rebuilds the
same bytes from a model (after a CloudEvents round trip, say).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from ._canonical import SIGNED_FIELDS, canonical_bytes, to_wire_map
from ._errors import EnvelopeError, ErrorReason
from ._model import PacketEnvelope

__all__ = ["SIGNED_FIELDS", "Signer", "Verifier", "canonical_bytes"]


def _mac(template: hmac.HMAC, data: bytes | bytearray) -> str:
    """HMAC of ``data`` from a keyed template (the key pads are hashed once, not per call)."""
    mac = template.copy()
    mac.update(data)
    return mac.hexdigest()


class Signer:
    """Signs canonical bytes (or wire maps) with one key of a keyring."""

    def __init__(self, keyring: Mapping[str, bytes], key_id: str) -> None:
        if key_id not in keyring:
            raise ValueError(f"signing key id {key_id!r} is not in the keyring ({sorted(keyring)})")
        self.key_id = key_id
        self._key = keyring[key_id]
        self._mac = hmac.new(self._key, digestmod=hashlib.sha256)

    def sign_bytes(self, blob: bytes) -> str:
        """Hex HMAC-SHA256 of ``blob``, which must already carry this signer's ``key_id``."""
        return _mac(self._mac, blob)

    def sign(self, fields: dict[str, Any]) -> None:
        """Set ``key_id`` and ``signature`` on a wire map in place."""
        fields["key_id"] = self.key_id
        fields["signature"] = _mac(self._mac, canonical_bytes(fields))


class Verifier:
    """Checks signatures against a keyring; unsigned envelopes fail when required."""

    def __init__(self, keyring: Mapping[str, bytes], *, required: bool = True) -> None:
        self._keyring = dict(keyring)
        self._macs = {kid: hmac.new(key, digestmod=hashlib.sha256) for kid, key in self._keyring.items()}
        self.required = required

    def verify_bytes(
        self, blob: bytes | bytearray, key_id: Any, signature: Any, envelope_id: str | None = None
    ) -> None:
        """Check ``signature`` (hex, as str or bytes; None when unsigned) over the
        signed bytes ``blob`` with the key named ``key_id``: the one place every
        signature check and its message live."""
        if type(signature) is bytes and type(key_id) is str:  # as read from a stream: one frame
            template = self._macs.get(key_id)
            if template is not None:
                mac = template.copy()
                mac.update(blob)
                if hmac.compare_digest(mac.hexdigest().encode(), signature):
                    return
        template = self._template(key_id, signature, envelope_id)  # else the checks that say why
        if template is not None:
            self._compare(_mac(template, blob), key_id, signature, envelope_id)

    def verify(self, fields: Mapping[str, Any]) -> None:
        """Check the ``signature`` of a wire map over its canonical bytes."""
        signature, key_id = fields.get("signature"), fields.get("key_id")
        eid = fields.get("id") if isinstance(fields.get("id"), str) else None
        template = self._template(key_id, signature, eid)
        if template is not None:  # pack only when there is something to check
            self._compare(_mac(template, canonical_bytes(fields)), key_id, signature, eid)

    def verify_envelope(self, envelope: PacketEnvelope) -> None:
        self.verify(to_wire_map(envelope))

    def _template(self, key_id: Any, signature: Any, eid: str | None) -> hmac.HMAC | None:
        """The keyed HMAC to check with; None for an unsigned envelope that may pass."""
        if signature is None:
            if self.required:
                raise EnvelopeError(ErrorReason.BAD_SIGNATURE, "envelope is not signed", envelope_id=eid)
            return None
        template = self._macs.get(key_id) if isinstance(key_id, str) else None
        if template is None:
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE, f"unknown signing key id {key_id!r}", envelope_id=eid
            )
        return template

    @staticmethod
    def _compare(expected: str, key_id: Any, signature: Any, eid: str | None) -> None:
        if isinstance(signature, str):
            # compare_digest refuses non-ASCII str; '?' can never match a hex digest
            signature = signature.encode("ascii", "replace")
        if not isinstance(signature, bytes | bytearray) or not hmac.compare_digest(
            expected.encode(), signature
        ):
            raise EnvelopeError(
                ErrorReason.BAD_SIGNATURE,
                f"signature does not match the content (key id {key_id!r})",
                envelope_id=eid,
            )
