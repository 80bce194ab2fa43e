"""One verification over one snapshot of a trail, whatever holds it: the checkpoints first,
then every chain at once, each through a reader of its own (as many at a time as the
snapshot has; the others wait), in chunks (the next one read while this one is hashed)
with the stored nodes of the chain's Merkle tree, and a diagnosis of each chain's first
bad row. A recorder provides the :class:`TrailSnapshot`.

The stored tree nodes are checked against the tree recomputed from the leaves. A node that
disagrees with entries a checkpoint vouches for is a changed tree, named at its last
entry. One beyond the last checkpoint cannot tell the two apart (the entries rewritten from
there on, with their hashes, or the node changed): it is named where the chain's walk ends,
and dropped when the walk ends in a rewrite a checkpoint caught (which explains it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol

import structlog

from memory.chain import GENESIS
from memory.merkle import DEFAULT_STRIDE, CompactRange, Node, root_of

from .anchors import check_checkpoints, settle_layout
from .chains import Layout
from .checkpoints import Checkpoint, read_checkpoint, read_checkpoint_files
from .diagnosis import diagnose, swapped
from .verify import (
    ROW_LEAF,
    ROW_SEQ,
    Anchor,
    ChainReport,
    ChainRow,
    ChainWalker,
    Damage,
    Problem,
    Row,
    VerifyReport,
    chain_dropped,
    leaf_of,
)

#: Rows hashed between two looks at the event loop (a driver reads what arrived meanwhile).
SLICE = 256
#: Rows read after a bad one to tell a moved row from an edited one.
DIAGNOSIS_WINDOW = 4096
log = structlog.get_logger(__name__)


class ChainSnapshot(Protocol):
    """One chain of the snapshot, read alone. Rows are laid out as
    :data:`~memory.audit.verify.VERIFY_COLUMNS` (times as integer microseconds), by seq:
    the rows stored in this chain (its ``chain`` column), whatever their seq."""

    async def max_seq(self) -> int:
        """The highest seq among the chain's rows (0: none)."""

    async def chain_hash_at(self, seq: int) -> bytes | None:
        """The stored chain hash of the chain's entry ``seq`` (None: the chain has none)."""

    async def stored_chain(self, seq: int) -> int | None:
        """The chain entry ``seq`` is stored in, whichever it is (None: no such entry)."""

    async def rows_after(self, seq: int, limit: int) -> Sequence[Row]:
        """At most ``limit`` of the chain's rows with a seq above ``seq``."""

    async def rows_from(self, seq: int, limit: int) -> Sequence[Row]:
        """At most ``limit`` of the chain's rows from seq ``seq`` on."""

    async def tree_nodes(self, level: int, first: int, last: int) -> dict[int, bytes]:
        """The chain's stored Merkle tree nodes at ``level`` with an index in ``first..last``
        (index -> hash)."""


class TrailSnapshot(Protocol):
    """One consistent view of a trail, as verification reads it: what concerns the whole
    trail (read first), then each chain through :meth:`chain`."""

    async def layout(self) -> Layout | None:
        """The chain count the trail records (None: it is gone or not one)."""

    async def heads(self) -> dict[int, ChainRow]:
        """Every chain's head row the trail holds, by chain."""

    async def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints in the trail, by id."""

    async def redactions(self) -> dict[int, bytes]:
        """seq -> payload hash of each redaction record."""

    def chain(self, chain: int) -> AbstractAsyncContextManager[ChainSnapshot]:
        """A reader of chain ``chain``, its own while in use (waiting for one to be free
        when the snapshot has as many readers in use as it allows)."""


def checkpoint_files(
    directory: Path | None, from_checkpoint: Path | str | None
) -> tuple[list[tuple[str, Checkpoint]] | None, tuple[str, Checkpoint] | None]:
    """The checkpoint files of ``directory`` (None without one: no file is expected) and the
    one to start from, each with its path (CheckpointError when one cannot be read)."""
    files = [(str(p), c) for p, c in read_checkpoint_files(directory)] if directory else None
    presented = (str(from_checkpoint), read_checkpoint(Path(from_checkpoint))) if from_checkpoint else None
    return files, presented


async def verify_snapshot(
    snapshot: TrailSnapshot,
    *,
    files: Sequence[tuple[str, Checkpoint]] | None,
    presented: tuple[str, Checkpoint] | None,
    trusted_keys: Mapping[str, bytes] | None,
    chunk_size: int,
    started: float,
) -> VerifyReport:
    """The :class:`VerifyReport` of one snapshot (see ``AuditRecorder.verify``), logged."""
    report = await Walk(snapshot, chunk_size).run(files, presented, trusted_keys, started)
    log.info(
        "audit.verify",
        ok=report.ok,
        first=str(report.first) if report.first else None,
        entries=report.entries_checked,
        chains=len(report.chains),
        last_seq=report.last_seq,
        entries_per_s=round(report.entries_per_s),
        seconds=round(report.seconds, 3),
    )
    return report


class Walk:
    """One verification over one snapshot: every chain's :class:`ChainWalk`, at once."""

    def __init__(self, snapshot: TrailSnapshot, chunk_size: int) -> None:
        self.snapshot = snapshot
        self.chunk_size = chunk_size

    async def run(
        self,
        files: Sequence[tuple[str, Checkpoint]] | None,
        presented: tuple[str, Checkpoint] | None,
        trusted_keys: Mapping[str, bytes] | None,
        started: float,
    ) -> VerifyReport:
        snapshot = self.snapshot
        trail, heads = await snapshot.layout(), await snapshot.heads()
        check = check_checkpoints(await snapshot.checkpoints(), files, presented, trusted_keys)
        layout, count_problems = settle_layout(trail, heads, check)
        redactions = await snapshot.redactions()
        anchors: dict[int, list[Anchor]] = {}
        for anchor in check.anchors:
            anchors.setdefault(layout.chain_at(anchor.seq), []).append(anchor)
        walks = [ChainWalk(snapshot, layout, c, heads.get(c), self.chunk_size) for c in range(layout.chains)]
        await _all(w.run(anchors.get(w.chain, []), check.start, redactions) for w in walks)
        problems = [*check.problems, *count_problems, *_merged(w.problems for w in walks)]
        problems.sort(key=lambda p: p.seq)  # stable: at one seq, checkpoint findings come first
        chains = tuple(w.report() for w in walks)
        top = max(chains, key=lambda r: r.last_seq)
        return VerifyReport(
            problems=tuple(problems),
            entries_checked=sum(r.entries for r in chains),
            last_seq=top.last_seq,
            chain_hash=top.chain_hash,
            head_seq=max(r.head_seq for r in chains),
            redacted=sum(w.walker.redacted for w in walks),
            anchors_matched=sum(w.walker.anchors_matched for w in walks),
            started_from=check.start.id if check.start else None,
            signatures_checked=trusted_keys is not None,
            seconds=time.perf_counter() - started,
            chains=chains,
        )


async def _all(runs: Iterable[Awaitable[None]]) -> None:
    """Run them at once; the first error cancels the others (and is raised once they ended)."""
    tasks = [asyncio.ensure_future(r) for r in runs]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _merged(per_chain: Iterable[list[Problem]]) -> list[Problem]:
    """Every chain's problems; an entry moved between two chains is named once (both see it)."""
    moved: set[int] = set()
    out = []
    for problems in per_chain:
        for problem in problems:
            if problem.kind is Damage.ENTRY_MOVED:
                if problem.seq in moved:
                    continue
                moved.add(problem.seq)
            out.append(problem)
    return out


class ChainWalk:
    """The walk of one chain: its start, its rows and tree nodes, its end."""

    reader: ChainSnapshot

    def __init__(
        self, snapshot: TrailSnapshot, layout: Layout, chain: int, head: ChainRow | None, chunk_size: int
    ) -> None:
        self.snapshot, self.layout, self.chain, self.head = snapshot, layout, chain, head
        self.chunk_size = chunk_size
        self.head_seq = layout.seq(chain, head.size) if head is not None else 0
        self.stride = _stride_of(head)
        self.walker = ChainWalker(chain, layout, 0, GENESIS)
        self.problems: list[Problem] = []
        self._mismatch: tuple[Node, bool] | None = None  # the first stored node that differs, is it missing

    async def run(
        self, anchors: Sequence[Anchor], start: Checkpoint | None, redactions: Mapping[int, bytes]
    ) -> None:
        async with self.snapshot.chain(self.chain) as reader:
            self.reader = reader
            self.problems = await self._run(anchors, start, redactions)

    def report(self) -> ChainReport:
        w = self.walker
        root = w.tree.root() if w.tree is not None else None
        return ChainReport(self.chain, w.last_seq, w.chain_hash, root, w.checked, self.head_seq)

    async def _run(
        self, anchors: Sequence[Anchor], start: Checkpoint | None, redactions: Mapping[int, bytes]
    ) -> list[Problem]:
        seq, chained = start.chain_heads().get(self.chain, (0, GENESIS)) if start else (0, GENESIS)
        self.walker = ChainWalker(self.chain, self.layout, seq, chained, anchors, redactions)
        max_seq = await self.reader.max_seq()
        if start is not None:
            problem = await self._check_start(start, seq, chained, max_seq)
            if problem is not None:
                return [problem]
        tree_problems = await self._start_tree(start, seq)
        found, stopped = await self._walk(max_seq)
        return [*tree_problems, *found, *self._tree_findings(found[0] if stopped else None)]

    # -- the start --------------------------------------------------------------------------------

    async def _check_start(self, start: Checkpoint, seq: int, chained: bytes, max_seq: int) -> Problem | None:
        """The chain must hold the checkpoint's chain hash at its seq."""
        if seq == 0:  # the empty chain: its chain hash is the genesis one
            if chained == GENESIS:
                return None
            return Problem(
                Damage.CHAIN_REWRITTEN, 0, f"checkpoint #{start.id} gives seq 0 a non-genesis hash"
            )
        stored = await self.reader.chain_hash_at(seq)
        if stored is None and max_seq == 0:
            return chain_dropped(self.layout, self.chain, f"checkpoint #{start.id} vouches for seq {seq}")
        if stored is None and max_seq < seq:
            where = "the trail" if self.layout.chains == 1 else f"chain {self.chain}"
            return Problem(
                Damage.TAIL_TRUNCATED,
                self.layout.seq(self.chain, self.layout.position(max_seq) + 1),
                f"{where} ends at seq {max_seq} but checkpoint #{start.id} vouches for seq {seq}",
            )
        if stored is None:
            elsewhere = await self.reader.stored_chain(seq)
            if elsewhere is not None:
                return self._moved_out(seq, elsewhere)
            return Problem(Damage.MISSING_ROW, seq, f"seq {seq} of checkpoint #{start.id} is gone")
        if stored != chained:
            return Problem(
                Damage.CHAIN_REWRITTEN,
                seq,
                f"the trail's chain hash at seq {seq} "
                f"differs from checkpoint #{start.id}: the trail was rewritten",
            )
        return None

    def _moved_out(self, seq: int, elsewhere: int) -> Problem:
        return Problem(
            Damage.ENTRY_MOVED,
            seq,
            f"seq {seq} is chain {self.chain}'s place, but its row is stored in chain {elsewhere}",
        )

    async def _start_tree(self, start: Checkpoint | None, seq: int) -> list[Problem]:
        """The chain's tree at the start, from its stored nodes, checked against the root
        the start checkpoint signs (version 2); without it the tree is not checked."""
        size = self.layout.position(seq) if seq else 0
        if size == 0 or start is None:
            self.walker.tree = CompactRange(self.stride)
            return []
        edge = await self._edge(size)
        label = f"chain {self.chain}'s Merkle tree at seq {seq}, where checkpoint #{start.id} starts the walk"
        if edge is None:
            return [Problem(Damage.TREE_CHANGED, seq, f"stored nodes of {label}, are missing")]
        tree = CompactRange.from_bytes(size.to_bytes(8, "big") + bytes((self.stride,)) + b"".join(edge))
        signed = start.heads[self.chain].root if start.version == 2 else None
        if signed is not None and tree.root() != signed:
            return [
                Problem(
                    Damage.TREE_CHANGED, seq, f"the stored nodes of {label}, do not make the root it signs"
                )
            ]
        self.walker.tree = tree
        return []

    async def _edge(self, size: int) -> list[bytes] | None:
        """The roots of the maximal complete subtrees of the chain's first ``size`` leaves,
        each folded from the stored nodes (or leaves) below it; None when one is missing."""
        layout, chain, stride, reader = self.layout, self.chain, self.stride, self.reader
        edge, start = [], 0
        for level in reversed(range(size.bit_length())):
            if not size >> level & 1:
                continue
            below = level - level % stride
            first, count = (start >> level) << (level - below), 1 << (level - below)
            if below == 0:
                rows = await reader.rows_from(layout.seq(chain, first + 1), count)
                seqs = [layout.seq(chain, first + 1 + at) for at in range(len(rows))]
                parts = [r[ROW_LEAF] for r, s in zip(rows, seqs, strict=True) if r[ROW_SEQ] == s]
            else:
                nodes = await reader.tree_nodes(below, first, first + count - 1)
                parts = [nodes[i] for i in range(first, first + count) if i in nodes]
            if len(parts) != count:
                return None
            edge.append(root_of(parts))
            start += 1 << level
        return edge

    # -- the rows ---------------------------------------------------------------------------------

    async def _walk(self, max_seq: int) -> tuple[list[Problem], bool]:
        """Chunks of rows with the stored tree nodes they complete, the next one read while
        this one is hashed (in slices, yielding in between so a driver reads what its server
        sent meanwhile); the problems, and whether the walk stopped at a bad row."""
        walker = self.walker
        next_chunk = asyncio.ensure_future(self._chunk(walker.last_seq))
        try:
            while True:
                rows, stored = await next_chunk
                if not rows:
                    break
                next_chunk = asyncio.ensure_future(self._chunk(rows[-1][ROW_SEQ]))
                for at in range(0, len(rows), SLICE):
                    await asyncio.sleep(0)
                    part = rows[at : at + SLICE]
                    bad = walker.feed(part)
                    if bad is not None:
                        self._compare(stored)
                        await next_chunk  # the connection must be free again
                        return [walker.problem or await self._diagnose(part[bad][ROW_SEQ])], True
                self._compare(stored)
        finally:
            next_chunk.cancel()  # done already, unless the walk itself was cancelled
        found = walker.finish(self.head, max_seq)
        if any(p.kind is Damage.CHAIN_DROPPED for p in found):
            return found, False
        return found + await self._nodes_beyond(max_seq), False

    async def _chunk(self, after: int) -> tuple[Sequence[Row], dict[tuple[int, int], bytes]]:
        """The chain's next rows after seq ``after``, and the stored nodes they complete."""
        rows = await self.reader.rows_after(after, self.chunk_size)
        if not rows or self.walker.tree is None:
            return rows, {}
        first = self.layout.position(after) if after else 0
        return rows, await self._stored_nodes(first, first + len(rows))

    async def _stored_nodes(self, first: int, stop: int) -> dict[tuple[int, int], bytes]:
        """The stored nodes that leaves ``first..stop - 1`` complete: (level, index) -> hash."""
        found: dict[tuple[int, int], bytes] = {}
        for level in range(self.stride, 65, self.stride):
            if 1 << level > stop:
                break
            low, high = first >> level, (stop >> level) - 1
            if high >= low:
                for index, hash_ in (await self.reader.tree_nodes(level, low, high)).items():
                    found[level, index] = hash_
        return found

    def _compare(self, stored: Mapping[tuple[int, int], bytes]) -> None:
        """Keep the first of the nodes the walker completed that is not stored as computed."""
        for node in self.walker.take_nodes():
            if self._mismatch is None and stored.get((node.level, node.index)) != node.hash:
                self._mismatch = (node, (node.level, node.index) not in stored)

    async def _nodes_beyond(self, max_seq: int) -> list[Problem]:
        """A stored node over entries beyond the chain's end (at the lowest stored level, where
        the first one is when the tail was cut): the tail was truncated."""
        walker = self.walker
        if walker.tree is None or max_seq > walker.last_seq:
            return []
        index = walker.tree.size >> self.stride
        if not await self.reader.tree_nodes(self.stride, index, index):
            return []
        covers = self.layout.seq(self.chain, (index + 1) << self.stride)
        where = "the trail" if self.layout.chains == 1 else f"chain {self.chain}"
        return [
            Problem(
                Damage.TAIL_TRUNCATED,
                walker.next_seq,
                f"{where} ends at seq {walker.last_seq} but its stored Merkle tree has a node "
                f"over the entries up to seq {covers}",
            )
        ]

    def _tree_findings(self, stop: Problem | None) -> list[Problem]:
        """The first stored node that disagrees with the recomputed tree, named (see the
        module doc); ``stop`` is the problem the walk stopped at, if it did."""
        if self._mismatch is None:
            return []
        (node, missing), layout, chain, walker = self._mismatch, self.layout, self.chain, self.walker
        first = layout.seq(chain, (node.index << node.level) + 1)
        last = layout.seq(chain, (node.index + 1) << node.level)
        how = "is missing" if missing else "differs from the one recomputed from the entries"
        what = (
            f"chain {chain}'s stored Merkle node (level {node.level}, index {node.index}) "
            f"over seq {first}..{last} {how}"
        )
        if walker.vouched >= last:
            return [Problem(Damage.TREE_CHANGED, last, f"{what}; {walker.last_good} vouches for them")]
        if stop is not None and stop.kind is Damage.CHAIN_REWRITTEN:
            return []
        return [
            Problem(
                Damage.TREE_CHANGED,
                stop.seq if stop is not None else walker.last_seq,
                f"{what}, and no checkpoint vouches for them: either they were rewritten from there on "
                "or the stored tree was changed",
            )
        ]

    # -- the first bad row --------------------------------------------------------------------------

    async def _diagnose(self, bad_seq: int) -> Problem:
        walker, reader, layout = self.walker, self.reader, self.layout
        s = walker.next_seq
        window = await reader.rows_from(bad_seq, DIAGNOSIS_WINDOW)
        there = window[0][ROW_SEQ]
        if there != s and layout.chain_at(there) == self.chain:  # a gap: is seq s in another chain?
            elsewhere = await reader.stored_chain(s)
            if elsewhere is not None and elsewhere != self.chain:
                return self._moved_out(s, elsewhere)
        problem = diagnose(
            s, window, layout=layout, chain=self.chain, head_seq=self.head_seq, redactions=walker.redactions
        )
        if problem.kind == Damage.HEADER_CHANGED and window:
            partner = await self._swapped_beyond(window[0], problem.seq + len(window) * layout.chains)
            if partner is not None:
                return swapped(problem.seq, partner)
        return problem

    async def _swapped_beyond(self, row: Row, first: int) -> int | None:
        """The seq of the chain beyond the diagnosis window ``row`` was written at, if the row
        there was written at ``row``'s seq (two rows swapped far apart, not an edit). The seq is
        found from the row's own leaf (one hash per candidate, no reading); only that row is read."""
        seq = row[ROW_SEQ]
        for at, candidate in enumerate(range(first, self.head_seq + 1, self.layout.chains)):
            if at % 4096 == 0:
                await asyncio.sleep(0)  # a long trail: let the loop breathe
            if leaf_of(row, candidate) != row[ROW_LEAF]:
                continue
            found = await self.reader.rows_from(candidate, 1)
            there = found[0] if found else None
            if there is not None and there[ROW_SEQ] == candidate and leaf_of(there, seq) == there[ROW_LEAF]:
                return candidate
            return None
        return None


def _stride_of(head: ChainRow | None) -> int:
    """The stored levels of the chain's tree: its head row's tree's stride (else the default)."""
    if head is not None and head.tree is not None:
        try:
            return CompactRange.from_bytes(head.tree).stride
        except ValueError:
            pass  # the head check names an undecodable tree
    return DEFAULT_STRIDE
