"""The pure steps of an append that every recorder shares, around its own I/O.

1. :func:`prepare_append`, before the chain lock and not depending on the chain
   (so a caller may run it for the next batch while one is being written):
   payload hashes, the canonical headers packed but for seq and recorded_at, and
   which record of the batch comes first for each envelope id;
2. the recorder, under its lock: seq ``head+1..`` and the leaf and chain hash
   (:func:`memory.chain.leaf_hash_of`, :func:`memory.chain.chain_hash`) of each
   record not stored yet;
3. :func:`outcomes`, after the commit: where every input record stands.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from memory.chain import HeaderParts, header_parts, payload_hash, to_micros

from .records import AppendStatus, AuditRecord, Committed

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedAppend:
    """Records with what their append needs that the chain head does not decide."""

    records: Sequence[AuditRecord]
    digests: list[bytes]  # payload hash of each record
    parts: list[HeaderParts]  # canonical header of each record, but for seq and recorded_at
    firsts: dict[str, int]  # envelope id -> index of its first record in the batch (it wins)
    times_us: list[int]  # envelope time of each record, in Unix microseconds

    @classmethod
    def join(cls, parts: Sequence[PreparedAppend]) -> PreparedAppend:
        """One batch of parts prepared one after the other (a long batch prepared in slices)."""
        records: list[AuditRecord] = []
        digests: list[bytes] = []
        headers: list[HeaderParts] = []
        firsts: dict[str, int] = {}
        times: list[int] = []
        for part in parts:
            for eid, i in part.firsts.items():
                firsts.setdefault(eid, len(records) + i)
            records.extend(part.records)
            digests.extend(part.digests)
            headers.extend(part.parts)
            times.extend(part.times_us)
        return cls(records, digests, headers, firsts, times)


def prepare_append(records: Sequence[AuditRecord]) -> PreparedAppend:
    """Hash the payloads and pack the headers of ``records`` (pure)."""
    digests: list[bytes] = []
    parts: list[HeaderParts] = []
    firsts: dict[str, int] = {}
    times: list[int] = []
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
        times.append(time_us)
    return PreparedAppend(records, digests, parts, firsts, times)


Placed = Mapping[str, tuple[int, bytes]]
"""Envelope id -> (seq, chain hash) of each record an append stored."""


def outcomes(
    prepared: PreparedAppend, stored: Mapping[str, Mapping[str, Any]], placed: Placed, now: datetime
) -> list[Committed]:
    """One :class:`Committed` per input record, in input order: ``placed`` by this append (at
    ``now``), or a duplicate / conflict of a row ``stored`` before it (``seq``, ``chain_hash``,
    ``payload_hash``, ``recorded_at`` by envelope id) or of a record earlier in the batch."""
    out: list[Committed] = []
    records, digests, firsts = prepared.records, prepared.digests, prepared.firsts
    for i, rec in enumerate(records):
        eid, digest = rec.envelope_id, digests[i]
        row = stored.get(eid)
        if row is not None:
            status = AppendStatus.DUPLICATE if row["payload_hash"] == digest else AppendStatus.CONFLICT
            out.append(Committed(rec, row["seq"], row["chain_hash"], row["recorded_at"], status))
            continue
        seq, chained = placed[eid]
        first = firsts[eid]
        if first == i:
            status = AppendStatus.STORED
        else:
            status = AppendStatus.DUPLICATE if digests[first] == digest else AppendStatus.CONFLICT
        out.append(Committed(rec, seq, chained, now, status))
    return out


def log_outcomes(committed: Sequence[Committed], started: float) -> None:
    """Log an append (``started`` on :func:`time.perf_counter`): each conflict, then the totals."""
    stored = sum(1 for c in committed if c.new)
    conflicts = [c for c in committed if c.status is AppendStatus.CONFLICT]
    for c in conflicts:
        log.warning(
            "audit.append.conflict",
            envelope_id=c.record.envelope_id,
            seq=c.seq,
            stream=c.record.stream,
            entry_id=c.record.entry_id,
        )
    log.debug(
        "audit.append",
        records=len(committed),
        stored=stored,
        conflicts=len(conflicts),
        head=max((c.seq for c in committed), default=0),
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
