"""An audit trail in a Python list: the :class:`AuditRecorder` for fast tests.

The same contract as the PostgreSQL store: the same chain bytes (the hashes of
:mod:`memory.chain`, over times kept in microseconds), dedupe by envelope id with
the same outcomes, the same head and cursor semantics, checkpoints, and the same
verification walk. What it does not have: durability, other processes, a
superuser. Tests may edit :attr:`InMemoryAuditRecorder.entries` to tamper with the
trail and see verification catch it.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memory.chain import HASH_VERSION, chain_hash, from_micros, leaf_hash_of, to_micros
from memory.merkle import CompactRange, Needs

from .appending import PreparedAppend, log_outcomes, outcomes
from .chains import ChainHead, Layout
from .checkpoints import Checkpoint, SigningKey
from .ownership import LeaseBoard, Leases
from .port import AuditRecorder, AuditStoreError
from .records import Committed, EntryFilter, EntryPage, Head, StoredEntry
from .verify import VERIFY_COLUMNS, ChainRow, Row, VerifyReport
from .walk import checkpoint_files, verify_snapshot


def _now() -> datetime:
    return datetime.now(UTC)


class InMemoryAuditRecorder(AuditRecorder):
    """The trail in memory, in ``chains`` chains. ``clock`` gives each append's ``recorded_at``
    (aware datetimes)."""

    def __init__(
        self, *, clock: Callable[[], datetime] = _now, checkpoint_dir: Path | None = None, chains: int = 1
    ) -> None:
        self.clock, self.checkpoint_dir = clock, checkpoint_dir
        self._layout = Layout(chains)
        #: The entries, by seq (the ``entries`` and ``payloads`` tables in one).
        self.entries: list[StoredEntry] = []
        #: seq -> payload hash of each redacted entry (the ``redactions`` table).
        self.redactions: dict[int, bytes] = {}
        #: Each chain's head (its size and chain hash), tree and stored tree nodes.
        self._chains = [ChainHead.empty(c) for c in range(chains)]
        self._trees = [CompactRange() for _ in range(chains)]
        self._nodes: dict[tuple[int, int, int], bytes] = {}
        self._head = Head(0, self._chains[0].chain_hash, self._tick())
        self._seq_of: dict[str, int] = {}  # envelope id -> seq
        self._board = LeaseBoard()
        self._checkpoints: list[Checkpoint] = []
        self._moved: asyncio.Event | None = None
        self.closed = False

    def _tick(self) -> datetime:
        """The clock, at the store's precision (UTC, microseconds)."""
        return from_micros(to_micros(self.clock()))

    def _open(self) -> None:
        if self.closed:
            raise AuditStoreError("the in-memory recorder is closed")

    # -- writing ------------------------------------------------------------------------------------

    async def append_prepared(self, prepared: PreparedAppend) -> list[Committed]:
        self._open()
        if not prepared.records:
            return []
        started, now = time.perf_counter(), self._tick()
        stored = {eid: self._stored_row(eid) for eid in prepared.firsts if eid in self._seq_of}
        fresh = [i for eid, i in prepared.firsts.items() if eid not in stored]
        placed = self._chain(prepared, fresh, now) if fresh else {}
        committed = outcomes(prepared, stored, placed, now)
        log_outcomes(committed, started)
        return committed

    def _stored_row(self, envelope_id: str) -> dict[str, Any]:
        """What an append reads of an entry stored before it (as the store's query does)."""
        at = self._index(self._seq_of[envelope_id])
        if at is None:
            raise AuditStoreError(f"envelope {envelope_id} is indexed but its entry is gone")
        e = self.entries[at]
        return {
            "seq": e.seq,
            "chain_hash": e.chain_hash,
            "payload_hash": e.payload_hash,
            "recorded_at": e.recorded_at,
        }

    def _chain(
        self, prepared: PreparedAppend, fresh: Sequence[int], now: datetime
    ) -> dict[str, tuple[int, bytes]]:
        """Hash the records at ``fresh`` onto their chains and trees, store them and move the
        heads (no await: nothing else runs meanwhile, the one writer of every chain)."""
        layout, recorded_us = self._layout, to_micros(now)
        placed = {}
        for i in fresh:
            rec, digest = prepared.records[i], prepared.digests[i]
            c = layout.chain_of(rec.stream)
            head = self._chains[c]
            seq = layout.seq(c, head.size + 1)
            leaf = leaf_hash_of(prepared.parts[i], seq, recorded_us, digest)
            previous = chain_hash(head.chain_hash, leaf)
            for node in self._trees[c].append([leaf]):
                self._nodes[c, node.level, node.index] = node.hash
            self._chains[c] = ChainHead(c, head.size + 1, previous, self._trees[c].root())
            entry = StoredEntry(
                seq, rec.envelope_id, rec.type, rec.source, rec.correlation_id, rec.causation_id,
                from_micros(prepared.times_us[i]), now, rec.stream, rec.entry_id, digest, leaf, previous,
                HASH_VERSION, rec.env, rec.sig, rec.key_id, c,
            )  # fmt: skip
            bisect.insort(self.entries, entry, key=_seq)
            self._seq_of[rec.envelope_id] = seq
            placed[rec.envelope_id] = (seq, previous)
            if seq > self._head.seq:
                self._head = Head(seq, previous, now)
        self._head = replace(self._head, updated_at=now)
        if self._moved is not None:
            self._moved.set()
            self._moved = None
        return placed

    async def make_checkpoint(self, signing_key: SigningKey) -> Checkpoint:
        self._open()
        last = self._checkpoints[-1] if self._checkpoints else None
        heads = tuple(self._chains)
        if last is not None and last.version == 2 and last.heads == heads:
            checkpoint = last
        else:
            checkpoint = Checkpoint.sign_heads(
                signing_key,
                id=last.id + 1 if last else 1,
                heads=heads,
                created_at=self._tick(),
                previous=last,
            )
            self._checkpoints.append(checkpoint)
        if self.checkpoint_dir is not None:
            checkpoint.write(self.checkpoint_dir)
        return checkpoint

    def redact(self, seq: int) -> None:
        """Drop the payload of ``seq``, keeping a redaction record (as ``memory.postgres.redact``)."""
        at = self._index(seq)
        if at is None or self.entries[at].env is None:
            raise AuditStoreError(f"redaction of seq {seq} refused: no such payload")
        entry = self.entries[at]
        self.redactions[seq] = entry.payload_hash
        self.entries[at] = replace(entry, env=None, sig=None, key_id=None)

    # -- reading ------------------------------------------------------------------------------------

    def _index(self, seq: int) -> int | None:
        """Where entry ``seq`` is in :attr:`entries` (kept in seq order), None when it is not."""
        at = bisect.bisect_left(self.entries, seq, key=_seq)
        return at if at < len(self.entries) and self.entries[at].seq == seq else None

    @property
    def layout(self) -> Layout:
        return self._layout

    async def head(self) -> Head:
        self._open()
        return self._head

    async def heads(self) -> list[ChainHead]:
        self._open()
        return list(self._chains)

    async def leases(self) -> Leases:
        self._open()
        return self._board.join()

    async def entry(self, envelope_id: str) -> StoredEntry | None:
        self._open()
        seq = self._seq_of.get(envelope_id)
        at = None if seq is None else self._index(seq)
        return None if at is None else self.entries[at]

    async def tree_nodes(self, chain: int, needs: Needs) -> dict[tuple[int, int], bytes]:
        self._open()
        found: dict[tuple[int, int], bytes] = {}
        for level, index in needs:
            if level == 0:
                at = self._index(self._layout.seq(chain, index + 1))
                if at is not None:
                    found[0, index] = self.entries[at].leaf_hash
            elif (hash_ := self._nodes.get((chain, level, index))) is not None:
                found[level, index] = hash_
        return found

    async def entries_after(
        self,
        after_seq: int,
        *,
        limit: int = 1000,
        filters: EntryFilter | None = None,
        until_seq: int | None = None,
    ) -> EntryPage:
        self._open()
        f = filters or EntryFilter()
        head = self._head.seq if f.chain is None else self._chains[f.chain].seq(self._layout)
        end = head if until_seq is None else min(head, until_seq)
        start = bisect.bisect_right(self.entries, after_seq, key=_seq)
        found: list[StoredEntry] = []
        for entry in self.entries[start:]:
            if entry.seq > end or len(found) == limit:
                break
            if f.matches(entry):
                found.append(entry)
        cursor = found[-1].seq if len(found) == limit else max(end, after_seq)
        return EntryPage(found, cursor)

    async def entries_for_correlation(self, correlation_id: str) -> list[StoredEntry]:
        self._open()
        return [e for e in self.entries if e.correlation_id == correlation_id]

    async def last_checkpoint(self) -> Checkpoint | None:
        self._open()
        return self._checkpoints[-1] if self._checkpoints else None

    async def checkpoints(self) -> list[Checkpoint]:
        self._open()
        return list(self._checkpoints)

    async def watch_head(self) -> AsyncIterator[int]:
        seen = self._head.seq
        while True:
            if self._head.seq == seen:
                if self._moved is None:
                    self._moved = asyncio.Event()
                await self._moved.wait()
            seen = self._head.seq
            yield seen

    # -- verifying ----------------------------------------------------------------------------------

    async def verify(
        self,
        *,
        from_checkpoint: Path | str | None = None,
        checkpoint_dir: Path | None = None,
        trusted_keys: Mapping[str, bytes] | None = None,
        chunk_size: int = 10_000,
    ) -> VerifyReport:
        self._open()
        started = time.perf_counter()
        files, presented = checkpoint_files(checkpoint_dir or self.checkpoint_dir, from_checkpoint)
        return await verify_snapshot(
            _Snapshot(self),
            files=files,
            presented=presented,
            trusted_keys=trusted_keys,
            chunk_size=chunk_size,
            started=started,
        )

    async def close(self) -> None:
        self.closed = True


def _seq(entry: StoredEntry) -> int:
    return entry.seq


_ROW_SEQ, _ROW_CHAIN = VERIFY_COLUMNS.index("seq"), VERIFY_COLUMNS.index("chain_hash")


def _row(e: StoredEntry) -> Row:
    """``e`` laid out as :data:`~memory.audit.verify.VERIFY_COLUMNS`."""
    return (
        e.hash_version, e.seq, e.envelope_id, e.type, e.source, e.correlation_id, e.causation_id,
        to_micros(e.envelope_time), to_micros(e.recorded_at), e.stream, e.entry_id,
        e.payload_hash, e.leaf_hash, e.chain_hash, e.env, e.sig, e.key_id,
    )  # fmt: skip


class _Snapshot:
    """The recorder's trail as it is when the walk starts (a copy: appends do not disturb it):
    each chain's rows are the entries whose ``chain`` is that chain, as in the store's table."""

    def __init__(self, recorder: InMemoryAuditRecorder) -> None:
        self._layout = recorder._layout
        self._heads = {
            h.chain: ChainRow(h.chain, h.size, h.chain_hash, recorder._trees[h.chain].to_bytes())
            for h in recorder._chains
        }
        self._rows: dict[int, list[Row]] = {}
        self._chain_of: dict[int, int] = {}  # seq -> the chain it is stored in
        for e in sorted(recorder.entries, key=_seq):
            self._rows.setdefault(e.chain, []).append(_row(e))
            self._chain_of[e.seq] = e.chain
        self._nodes = dict(recorder._nodes)
        self._checkpoints = list(recorder._checkpoints)
        self._redactions = dict(recorder.redactions)

    async def layout(self) -> Layout | None:
        return self._layout

    async def heads(self) -> dict[int, ChainRow]:
        return self._heads

    async def checkpoints(self) -> list[Checkpoint]:
        return self._checkpoints

    async def redactions(self) -> dict[int, bytes]:
        return self._redactions

    @asynccontextmanager
    async def chain(self, chain: int) -> AsyncIterator[_ChainRows]:
        nodes = {(level, index): h for (c, level, index), h in self._nodes.items() if c == chain}
        yield _ChainRows(self._rows.get(chain, []), self._chain_of, nodes)


class _ChainRows:
    """One chain of a :class:`_Snapshot`: its rows by seq, and its stored tree nodes."""

    def __init__(
        self, rows: list[Row], chain_of: Mapping[int, int], nodes: Mapping[tuple[int, int], bytes]
    ) -> None:
        self._rows, self._chain_of, self._nodes = rows, chain_of, nodes
        self._seqs = [r[_ROW_SEQ] for r in rows]

    async def max_seq(self) -> int:
        return self._seqs[-1] if self._seqs else 0

    async def chain_hash_at(self, seq: int) -> bytes | None:
        at = bisect.bisect_left(self._seqs, seq)
        return self._rows[at][_ROW_CHAIN] if at < len(self._seqs) and self._seqs[at] == seq else None

    async def stored_chain(self, seq: int) -> int | None:
        return self._chain_of.get(seq)

    async def rows_after(self, seq: int, limit: int) -> Sequence[Row]:
        at = bisect.bisect_right(self._seqs, seq)
        return self._rows[at : at + limit]

    async def rows_from(self, seq: int, limit: int) -> Sequence[Row]:
        at = bisect.bisect_left(self._seqs, seq)
        return self._rows[at : at + limit]

    async def tree_nodes(self, level: int, first: int, last: int) -> dict[int, bytes]:
        return {i: h for (lv, i), h in self._nodes.items() if lv == level and first <= i <= last}
