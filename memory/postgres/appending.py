"""The rows an append ``COPY``s, hashed under the chain locks of
:meth:`PostgresAuditStore.append_prepared` (pure; the shared steps before and after
are :mod:`memory.audit.appending`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memory.audit.appending import PreparedAppend
from memory.audit.chains import Layout
from memory.chain import HASH_VERSION, chain_hash, leaf_hash_of, to_micros
from memory.merkle import CompactRange

from .timestamps import PG_EPOCH_US, pg_time


@dataclass(slots=True)
class ChainState:
    """One chain as the append read it under its lock: its size, the chain hash of its last
    entry, and the right edge of its Merkle tree (extended by :func:`chain_batch`)."""

    chain: int
    size: int
    chain_hash: bytes
    tree: CompactRange


@dataclass(frozen=True, slots=True)
class ChainedBatch:
    """A batch hashed onto its chains: the rows to COPY (timestamps as :func:`pg_time`),
    where each record landed, and each chain's new head."""

    entries: list[tuple[Any, ...]]
    payloads: list[tuple[Any, ...]]
    nodes: list[tuple[int, int, int, bytes]]
    placed: dict[str, tuple[int, bytes]]
    #: (chain, new size, new chain hash, tree bytes, size before) of each chain written.
    moves: list[tuple[int, int, bytes, bytes, int]]

    @property
    def last_seq(self) -> int:
        return max(seq for seq, _ in self.placed.values())


def chain_batch(
    prepared: PreparedAppend,
    fresh: Mapping[int, Sequence[int]],
    states: Mapping[int, ChainState],
    layout: Layout,
    now: Any,
) -> ChainedBatch:
    """Place the records at indexes ``fresh[c]`` at the end of chain ``c`` (seqs of
    :meth:`Layout.seq`), hash each onto its chain and its tree (pure but for extending
    ``states[c].tree``). ``now`` is the append's clock (``recorded_at`` of every record)."""
    recorded_us = to_micros(now)
    pg_now, epoch = pg_time(recorded_us), PG_EPOCH_US
    records, digests, parts, times = prepared.records, prepared.digests, prepared.parts, prepared.times_us
    leaf_of, link = leaf_hash_of, chain_hash  # memory.chain's definitions, as locals
    entries: list[tuple[Any, ...]] = []
    payloads: list[tuple[Any, ...]] = []
    nodes: list[tuple[int, int, int, bytes]] = []
    placed: dict[str, tuple[int, bytes]] = {}
    moves = []
    step = layout.chains
    for chain in sorted(fresh):
        state = states[chain]
        seq = layout.seq(chain, state.size) if state.size else chain + 1 - step
        previous = state.chain_hash
        leaves = []
        for i in fresh[chain]:
            rec, digest = records[i], digests[i]
            seq += step
            leaf = leaf_of(parts[i], seq, recorded_us, digest)
            previous = link(previous, leaf)
            leaves.append(leaf)
            entries.append((
                seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id,
                (times[i] - epoch,), pg_now, rec.stream, rec.entry_id, digest, leaf, previous, HASH_VERSION,
                chain,
            ))  # fmt: skip
            payloads.append((seq, rec.env, rec.sig, rec.key_id))
            placed[rec.envelope_id] = (seq, previous)
        nodes.extend((chain, n.level, n.index, n.hash) for n in state.tree.append(leaves))
        moves.append((chain, state.size + len(leaves), previous, state.tree.to_bytes(), state.size))
    return ChainedBatch(entries, payloads, nodes, placed, moves)
