"""The rows an append ``COPY``s, hashed under the chain lock of
:meth:`PostgresAuditStore.append_prepared` (pure; the shared steps before and after
are :mod:`memory.audit.appending`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memory.audit.appending import PreparedAppend
from memory.chain import HASH_VERSION, chain_hash, leaf_hash_of, to_micros

from .timestamps import PG_EPOCH_US, pg_time


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
    now, epoch = pg_time(recorded_us), PG_EPOCH_US
    records, digests, parts, times = prepared.records, prepared.digests, prepared.parts, prepared.times_us
    leaf_of, link = leaf_hash_of, chain_hash  # memory.chain's definitions, as locals
    entries, payloads, placed = [], [], {}
    for i in fresh:
        rec, digest = records[i], digests[i]
        seq += 1
        leaf = leaf_of(parts[i], seq, recorded_us, digest)
        previous = link(previous, leaf)
        entries.append((
            seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id,
            (times[i] - epoch,), now, rec.stream, rec.entry_id, digest, leaf, previous, HASH_VERSION,
        ))  # fmt: skip
        payloads.append((seq, rec.env, rec.sig, rec.key_id))
        placed[rec.envelope_id] = (seq, previous)
    return ChainedBatch(entries, payloads, placed, seq, previous)
