"""The pure steps of an append, around the I/O of :meth:`PostgresAuditStore.append`.

1. :func:`prepare_append`, before the chain lock and not depending on the chain
   (so a caller may run it for the next batch while one is being written):
   payload hashes, the canonical headers packed but for seq and recorded_at, and
   which record of the batch comes first for each envelope id;
2. :func:`chain_batch`, under the lock: seq ``head+1..`` and the leaf and chain
   hash of each record not stored yet, as the rows to ``COPY``;
3. :func:`outcomes`, after the commit: where every input record stands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memory.chain import (
    HASH_VERSION,
    HeaderParts,
    chain_hash,
    header_parts,
    leaf_hash_of,
    payload_hash,
    to_micros,
)

from .records import AppendStatus, AuditRecord, Committed
from .timestamps import PgTime, pg_time


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """Records with what their append needs that the chain head does not decide."""

    records: Sequence[AuditRecord]
    digests: list[bytes]  # payload hash of each record
    parts: list[HeaderParts]  # canonical header of each record, but for seq and recorded_at
    firsts: dict[str, int]  # envelope id -> index of its first record in the batch (it wins)
    times: list[PgTime]  # envelope time of each record, as the store's connections send it

    @classmethod
    def join(cls, parts: Sequence[PreparedAppend]) -> PreparedAppend:
        """One batch of parts prepared one after the other (a long batch prepared in slices)."""
        records: list[AuditRecord] = []
        digests: list[bytes] = []
        headers: list[HeaderParts] = []
        firsts: dict[str, int] = {}
        times: list[PgTime] = []
        for part in parts:
            for eid, i in part.firsts.items():
                firsts.setdefault(eid, len(records) + i)
            records.extend(part.records)
            digests.extend(part.digests)
            headers.extend(part.parts)
            times.extend(part.times)
        return cls(records, digests, headers, firsts, times)


def prepare_append(records: Sequence[AuditRecord]) -> PreparedAppend:
    """Hash the payloads and pack the headers of ``records`` (pure)."""
    digests: list[bytes] = []
    parts: list[HeaderParts] = []
    firsts: dict[str, int] = {}
    times: list[PgTime] = []
    for i, rec in enumerate(records):
        time_us = to_micros(rec.time)
        digests.append(payload_hash(rec.env, rec.sig, rec.key_id))
        parts.append(
            header_parts(
                rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id, time_us,
                rec.stream, rec.entry_id,
            )
        )  # fmt: skip
        firsts.setdefault(rec.envelope_id, i)
        times.append(pg_time(time_us))
    return PreparedAppend(records, digests, parts, firsts, times)


@dataclass(frozen=True, slots=True)
class ChainedBatch:
    """A batch hashed onto the chain: the rows to COPY (timestamps as :func:`pg_time`) and
    where each record landed."""

    entries: list[tuple[Any, ...]]
    payloads: list[tuple[Any, ...]]
    placed: dict[str, tuple[int, bytes]]
    last_seq: int
    last_chain: bytes


def chain_batch(prepared: PreparedAppend, fresh: Sequence[int], head: Mapping[str, Any]) -> ChainedBatch:
    """Assign seq head+1.. to the records at indexes ``fresh`` and hash each onto the chain (pure)."""
    seq, previous = head["seq"], head["chain_hash"]
    recorded_us = to_micros(head["now"])
    now = pg_time(recorded_us)
    records, digests, parts, times = prepared.records, prepared.digests, prepared.parts, prepared.times
    entries, payloads, placed = [], [], {}
    for i in fresh:
        rec, digest = records[i], digests[i]
        seq += 1
        leaf = leaf_hash_of(parts[i], seq, recorded_us, digest)
        previous = chain_hash(previous, leaf)
        entries.append((
            seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id, times[i],
            now, rec.stream, rec.entry_id, digest, leaf, previous, HASH_VERSION,
        ))  # fmt: skip
        payloads.append((seq, rec.env, rec.sig, rec.key_id))
        placed[rec.envelope_id] = (seq, previous)
    return ChainedBatch(entries, payloads, placed, seq, previous)


def outcomes(
    prepared: PreparedAppend, stored: Mapping[str, Any], batch: ChainedBatch | None, now: datetime
) -> list[Committed]:
    """One :class:`Committed` per input record, in input order: stored by this append, or a
    duplicate / conflict of a row ``stored`` before it or of a record earlier in the batch."""
    out: list[Committed] = []
    records, digests, firsts = prepared.records, prepared.digests, prepared.firsts
    for i, rec in enumerate(records):
        eid, digest = rec.envelope_id, digests[i]
        row = stored.get(eid)
        if row is not None:
            status = AppendStatus.DUPLICATE if row["payload_hash"] == digest else AppendStatus.CONFLICT
            out.append(Committed(rec, row["seq"], row["chain_hash"], row["recorded_at"], status))
            continue
        assert batch is not None
        seq, chained = batch.placed[eid]
        first = firsts[eid]
        if first == i:
            status = AppendStatus.STORED
        else:
            status = AppendStatus.DUPLICATE if digests[first] == digest else AppendStatus.CONFLICT
        out.append(Committed(rec, seq, chained, now, status))
    return out
