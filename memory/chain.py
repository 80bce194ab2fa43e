"""The audit hash chain: pure functions over bytes, no I/O.

Hash version 1, for the entry at ``seq``::

    payload_hash = SHA-256(msgpack [env, sig, key_id])
    leaf         = SHA-256(0x00 || canonical header || payload_hash)
    chain        = SHA-256(0x01 || previous chain || leaf)      genesis previous = 32 zero bytes

The canonical header is the msgpack array of :data:`HEADER_FIELDS` in that order:
``[hash_version, seq, envelope_id, type, source, correlation_id, causation_id,
envelope_time_us, recorded_at_us, stream, entry_id]``, times as integer
microseconds since the Unix epoch (UTC). The 0x00 / 0x01 prefixes keep a leaf
from ever being taken for a chain link (as in RFC 6962).

:func:`payload_hash`, :func:`leaf_hash` and :func:`chain_hash` are the only places the
formulas are written: the append path (:func:`leaf_hash_of`), the in-memory recorder and
verification all call them (hot loops through local aliases, never a copy of the formula).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

HASH_VERSION = 1
HASH_SIZE = 32
GENESIS = bytes(HASH_SIZE)
#: The canonical header, in order.
HEADER_FIELDS: tuple[str, ...] = (
    "hash_version",
    "seq",
    "envelope_id",
    "type",
    "source",
    "correlation_id",
    "causation_id",
    "envelope_time_us",
    "recorded_at_us",
    "stream",
    "entry_id",
)
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_sha256 = hashlib.sha256
#: msgpack as the chain packs it (bin type for bytes). One C call, holding the GIL: safe to share.
pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
_pack = pack


def to_micros(moment: datetime) -> int:
    """Integer microseconds since the Unix epoch of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} has no time zone")
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def payload_hash(env: bytes, sig: str | None, key_id: str | None) -> bytes:
    """SHA-256 of the stored payload: the signed ``env`` bytes, their HMAC and its key id."""
    return _sha256(_pack((env, sig, key_id))).digest()


def canonical_header(values: Sequence[Any]) -> bytes:
    """msgpack array of the header values, given in :data:`HEADER_FIELDS` order."""
    if len(values) != len(HEADER_FIELDS):
        raise ValueError(f"a header has {len(HEADER_FIELDS)} values, got {len(values)}")
    if values[0] != HASH_VERSION:
        raise ValueError(f"unsupported hash version {values[0]!r} (this code knows {HASH_VERSION})")
    packed: bytes = _pack(tuple(values))
    return packed


def leaf_hash(header: bytes, payload_digest: bytes) -> bytes:
    """``H(0x00 || canonical header || payload hash)``: the leaf of one entry."""
    return _sha256(LEAF_PREFIX + header + payload_digest).digest()


def chain_hash(previous: bytes, leaf: bytes) -> bytes:
    """``H(0x01 || previous chain hash || leaf)``: the chain hash of one entry."""
    return _sha256(NODE_PREFIX + previous + leaf).digest()


# msgpack is concatenative: an array packs as its head (the count) followed by each
# value packed alone. So a record's canonical header is packed before the append
# but for the two values the chain head decides (seq, recorded_at), which the
# append fills in: ``leaf_hash_of(header_parts(...), seq, recorded_at_us, digest)``
# equals ``leaf_hash(canonical_header([...]), digest)`` byte for byte.
_NONE_SIZE = len(_pack(None))
_HEADER_HEAD = _pack((None,) * len(HEADER_FIELDS))[: -len(HEADER_FIELDS) * _NONE_SIZE] + _pack(HASH_VERSION)
_BEFORE_HEAD = len(_pack((None,) * 6)) - 6 * _NONE_SIZE  # head of a 6-array
_AFTER_HEAD = len(_pack((None,) * 2)) - 2 * _NONE_SIZE  # head of a 2-array

HeaderParts = tuple[bytes, bytes]
"""A canonical header packed but for ``seq`` and ``recorded_at_us``: the values between
them and the values after them."""


def header_parts(
    envelope_id: str,
    type: str,
    source: str,
    correlation_id: str,
    causation_id: str | None,
    envelope_time_us: int,
    stream: str,
    entry_id: str,
) -> HeaderParts:
    """The header of a record before its place in the chain is known (see above)."""
    between: bytes = _pack((envelope_id, type, source, correlation_id, causation_id, envelope_time_us))
    after: bytes = _pack((stream, entry_id))
    return between[_BEFORE_HEAD:], after[_AFTER_HEAD:]


def leaf_hash_of(parts: HeaderParts, seq: int, recorded_at_us: int, payload_digest: bytes) -> bytes:
    """:func:`leaf_hash` of the completed header (version :data:`HASH_VERSION`)."""
    between, after = parts
    return leaf_hash(
        b"".join((_HEADER_HEAD, _pack(seq), between, _pack(recorded_at_us), after)), payload_digest
    )
