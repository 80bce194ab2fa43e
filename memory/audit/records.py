"""What goes into the audit trail and what comes out of it (plain data, no I/O): the values
every :class:`~memory.audit.AuditRecorder` takes and returns."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import msgpack

from envelope import (
    ENVELOPE_FIELD,
    SIGNATURE_FIELD,
    SIGNED_FIELDS,
    PacketEnvelope,
    Signer,
    Verifier,
    decode_envelope,
    encode,
)
from memory.summary import summarize_env

_ID, _TYPE, _SOURCE, _CORRELATION, _CAUSATION, _TIME, _KEY_ID = (
    SIGNED_FIELDS.index(n)
    for n in ("id", "type", "source", "correlation_id", "causation_id", "time", "key_id")
)
_ENV_KEY, _SIG_KEY = ENVELOPE_FIELD.encode(), SIGNATURE_FIELD.encode()


class AuditRecordError(ValueError):
    """A stream entry that cannot become an audit record (no envelope in it)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


class AuditRecord(NamedTuple):
    """One envelope as read from a stream: its header fields and its exact wire bytes.

    A named tuple (immutable, and built in a fifth of a frozen dataclass's time: the
    auditor makes one per envelope, tens of thousands a second)."""

    envelope_id: str
    type: str
    source: str
    correlation_id: str
    causation_id: str | None
    time: datetime
    stream: str
    entry_id: str
    env: bytes
    sig: str | None
    key_id: str | None

    @classmethod
    def from_stream_entry(
        cls, stream: str, entry_id: str | bytes, fields: Mapping[bytes, bytes] | Mapping[str, Any]
    ) -> AuditRecord:
        """The record of a stream entry (``env`` + ``sig``), header fields taken from
        the signed ``env`` array. Checking the signature is the caller's business."""
        return decode_entry(stream, entry_id, fields)[0]

    @classmethod
    def from_envelope(
        cls, envelope: PacketEnvelope, *, stream: str, entry_id: str, signer: Signer | None = None
    ) -> AuditRecord:
        """The record of an envelope published as ``entry_id`` on ``stream``."""
        return cls.from_stream_entry(stream, entry_id, encode(envelope, signer))


def decode_entry(
    stream: str, entry_id: str | bytes, fields: Mapping[bytes, bytes] | Mapping[str, Any]
) -> tuple[AuditRecord, list[Any]]:
    """:meth:`AuditRecord.from_stream_entry`, with the unpacked ``env`` array beside the record
    (values in :data:`SIGNED_FIELDS` order), for callers that need more of it than the header."""
    get: Any = fields.get
    env = get(_ENV_KEY) or get(ENVELOPE_FIELD)
    if type(entry_id) is not str:
        entry_id = _text(entry_id)
    if not isinstance(env, bytes | bytearray):
        raise AuditRecordError(f"{stream} entry {entry_id} has no {ENVELOPE_FIELD!r} field")
    sig = get(_SIG_KEY) or get(SIGNATURE_FIELD)
    try:
        values = msgpack.unpackb(env, raw=False)
        eid, type_, source, correlation_id = values[_ID], values[_TYPE], values[_SOURCE], values[_CORRELATION]
        causation_id, key_id = values[_CAUSATION], values[_KEY_ID]
        time = datetime.fromisoformat(values[_TIME])
    except Exception as exc:  # msgpack, index, type and value errors alike
        raise AuditRecordError(f"{stream} entry {entry_id}: undecodable envelope: {exc}") from None
    if not (
        type(eid) is str and type(type_) is str and type(source) is str and type(correlation_id) is str
    ) or not (eid and type_ and source and correlation_id and time.tzinfo is not None):
        raise AuditRecordError(
            f"{stream} entry {entry_id}: envelope lacks id/type/source/correlation_id/time"
        )
    for name, value in (("causation_id", causation_id), ("key_id", key_id)):
        if value is not None and type(value) is not str:
            raise AuditRecordError(
                f"{stream} entry {entry_id}: {name} is a {type(value).__name__}, not a string"
            )
    sig = None if sig is None else _text(sig)
    record = AuditRecord(
        eid, type_, source, correlation_id, causation_id, time, stream, entry_id, bytes(env), sig, key_id
    )
    return record, values


class AppendStatus(StrEnum):
    STORED = "stored"  # appended by this call
    DUPLICATE = "duplicate"  # already in the trail (or earlier in the same batch)
    CONFLICT = "conflict"  # the id is in the trail with a different payload; the first one stays


class Committed(NamedTuple):
    """Where one appended record stands in the trail (a named tuple, as :class:`AuditRecord`)."""

    record: AuditRecord
    seq: int
    chain_hash: bytes
    recorded_at: datetime
    status: AppendStatus

    @property
    def new(self) -> bool:
        return self.status is AppendStatus.STORED


@dataclass(frozen=True, slots=True)
class Head:
    """The chain head: the last committed ``seq`` and its chain hash (0 and 32 zero bytes when empty)."""

    seq: int
    chain_hash: bytes
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One entry of the trail with its payload (``env`` None once redacted)."""

    seq: int
    envelope_id: str
    type: str
    source: str
    correlation_id: str
    causation_id: str | None
    envelope_time: datetime
    recorded_at: datetime
    stream: str
    entry_id: str
    payload_hash: bytes
    leaf_hash: bytes
    chain_hash: bytes
    hash_version: int
    env: bytes | None
    sig: str | None
    key_id: str | None
    #: The chain the entry is in (``Layout.chain_at(seq)``).
    chain: int = 0

    @property
    def redacted(self) -> bool:
        return self.env is None

    def summary(self) -> str:
        """One line of what the payload holds (see :func:`memory.summary.summarize`)."""
        return summarize_env(self.env)

    def envelope(self, verifier: Verifier | None = None) -> PacketEnvelope:
        """The stored envelope, its signature checked when a verifier is given."""
        if self.env is None:
            raise AuditRecordError(f"the payload of seq {self.seq} was redacted")
        fields: dict[str, Any] = {ENVELOPE_FIELD: self.env}
        if self.sig is not None:
            fields[SIGNATURE_FIELD] = self.sig
        return decode_envelope(fields, verifier)


def _like_literal(text: str) -> str:
    """``text`` escaped for SQL LIKE: ``%``, ``_`` and ``\\`` match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@functools.lru_cache(maxsize=256)
def _like_regex(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (``%`` any run, ``_`` any one character, ``\\`` escapes) as a regex."""
    parts, chars = [], iter(pattern)
    for char in chars:
        if char == "\\":
            parts.append(re.escape(next(chars, "\\")))
        else:
            parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def like(text: str, pattern: str) -> bool:
    """``text LIKE pattern``, as PostgreSQL has it (case-sensitive, the whole text)."""
    return _like_regex(pattern).fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries a tail wants: ``type_glob`` as in ``l9 tail --type 'l9.plan.*'``;
    ``source`` a full source URI, or an agent name matching each of its instances."""

    type_glob: str | None = None
    source: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    #: Only the entries of this chain (``memory.audit.chains``).
    chain: int | None = None

    def type_like(self) -> str | None:
        """The glob as a SQL LIKE pattern (``*`` -> ``%``, ``?`` -> ``_``, rest literal)."""
        if self.type_glob is None:
            return None
        return _like_literal(self.type_glob).replace("*", "%").replace("?", "_")

    def source_like(self) -> str | None:
        """``source`` as a SQL LIKE pattern: a URI (``agent://planner/planner-0``) matches
        only itself, an agent name (``planner``) every ``agent://planner/<instance>``."""
        if self.source is None:
            return None
        literal = _like_literal(self.source)
        return literal if "://" in self.source else f"agent://{literal}/%"

    def matches(self, entry: StoredEntry) -> bool:
        """Whether ``entry`` passes the filter: the same test a store runs in its query."""
        type_like, source_like = self.type_like(), self.source_like()
        return (
            (type_like is None or like(entry.type, type_like))
            and (source_like is None or like(entry.source, source_like))
            and (self.correlation_id is None or entry.correlation_id == self.correlation_id)
            and (self.since is None or entry.recorded_at >= self.since)
            and (self.chain is None or entry.chain == self.chain)
        )


@dataclass(frozen=True, slots=True)
class EntryPage:
    """Entries after a cursor; ``cursor`` is the last seq examined: pass it to the next call."""

    entries: list[StoredEntry] = field(default_factory=list)
    cursor: int = 0


def commit_order(entry: StoredEntry) -> tuple[datetime, int]:
    """The order entries of several chains were committed in: the clock of the append that
    committed them (the trail's server, one clock), then seq (the order within one batch).
    Within a chain it is seq order; across chains it is what ``l9 tail`` and the reports show."""
    return entry.recorded_at, entry.seq
