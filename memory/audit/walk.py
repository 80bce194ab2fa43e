"""One verification walk over one snapshot of a trail, whatever holds it: checkpoints
first, then the chain in chunks (the next one read while this one is hashed), and a
diagnosis of the first bad row. A recorder provides the :class:`TrailSnapshot`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from memory.chain import GENESIS, HEADER_FIELDS

from .checkpoints import Checkpoint, read_checkpoint, read_checkpoint_files
from .verify import (
    ROW_LEAF,
    ROW_SEQ,
    ChainWalker,
    Damage,
    Problem,
    Row,
    VerifyReport,
    check_checkpoints,
    diagnose,
    leaf_of,
    swapped,
)

#: Rows hashed between two looks at the event loop (a driver reads what arrived meanwhile).
SLICE = 256
#: Rows read after a bad one to tell a moved row from an edited one.
DIAGNOSIS_WINDOW = 4096
_SEQ = HEADER_FIELDS.index("seq")
log = structlog.get_logger(__name__)


class TrailSnapshot(Protocol):
    """One consistent view of a trail, as verification reads it. Rows are laid out as
    :data:`~memory.audit.verify.VERIFY_COLUMNS` (times as integer microseconds), by seq."""

    async def head(self) -> tuple[int, bytes]:
        """The head row: its seq and chain hash."""

    async def max_seq(self) -> int:
        """The highest seq of any entry (0: none)."""

    async def checkpoints(self) -> list[Checkpoint]:
        """The checkpoints in the trail, by id."""

    async def redactions(self) -> dict[int, bytes]:
        """seq -> payload hash of each redaction record."""

    async def chain_hash_at(self, seq: int) -> bytes | None:
        """The stored chain hash of entry ``seq`` (None: no such entry)."""

    async def rows_after(self, seq: int, limit: int) -> Sequence[Row]:
        """At most ``limit`` rows with a seq above ``seq``."""

    async def rows_from(self, seq: int, limit: int) -> Sequence[Row]:
        """At most ``limit`` rows from seq ``seq`` on."""


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
        last_seq=report.last_seq,
        entries_per_s=round(report.entries_per_s),
        seconds=round(report.seconds, 3),
    )
    return report


def start_at(start: Checkpoint) -> tuple[int, bytes]:
    """Where a walk of chain 0 starts from checkpoint ``start``: its seq and chain hash there."""
    return start.chain_heads().get(0, (0, GENESIS))


class Walk:
    """One verification over one snapshot."""

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
        head_seq, head_chain = await snapshot.head()
        max_seq = await snapshot.max_seq()
        check = check_checkpoints(await snapshot.checkpoints(), files, presented, trusted_keys)
        problems = list(check.problems)
        start = check.start
        walker = ChainWalker(
            last_seq=start_at(start)[0] if start else 0,
            chain_hash=start_at(start)[1] if start else GENESIS,
            anchors=check.anchors,
            redactions=await snapshot.redactions(),
        )
        start_problem = await self._check_start(start, max_seq) if start else None
        if start_problem is not None:
            problems.append(start_problem)
        else:
            problems.extend(await self._walk(walker, head_seq, head_chain, max_seq))
        problems.sort(key=lambda p: p.seq)  # stable: at one seq, checkpoint findings come first
        return VerifyReport(
            problems=tuple(problems),
            entries_checked=walker.checked,
            last_seq=walker.last_seq,
            chain_hash=walker.chain_hash,
            head_seq=head_seq,
            redacted=walker.redacted,
            anchors_matched=walker.anchors_matched,
            started_from=start.id if start else None,
            signatures_checked=trusted_keys is not None,
            seconds=time.perf_counter() - started,
        )

    async def _check_start(self, start: Checkpoint, max_seq: int) -> Problem | None:
        """The trail must hold the checkpoint's chain hash at its seq."""
        seq, chained = start_at(start)
        if seq == 0:  # the empty trail: its chain hash is the genesis one
            if chained == GENESIS:
                return None
            return Problem(
                Damage.CHAIN_REWRITTEN, 0, f"checkpoint #{start.id} gives seq 0 a non-genesis hash"
            )
        stored = await self.snapshot.chain_hash_at(seq)
        if stored is None and max_seq < seq:
            return Problem(
                Damage.TAIL_TRUNCATED,
                max_seq + 1,
                f"the trail ends at seq {max_seq} but checkpoint #{start.id} vouches for seq {seq}",
            )
        if stored is None:
            return Problem(Damage.MISSING_ROW, seq, f"seq {seq} of checkpoint #{start.id} is gone")
        if stored != chained:
            return Problem(
                Damage.CHAIN_REWRITTEN,
                seq,
                f"the trail's chain hash at seq {seq} "
                f"differs from checkpoint #{start.id}: the trail was rewritten",
            )
        return None

    async def _walk(
        self, walker: ChainWalker, head_seq: int, head_chain: bytes, max_seq: int
    ) -> list[Problem]:
        """Chunks of rows, the next one read while this one is hashed (in slices, yielding
        in between so a driver reads what its server sent meanwhile)."""
        fetch = self.snapshot.rows_after
        next_rows = asyncio.ensure_future(fetch(walker.last_seq, self.chunk_size))
        while rows := await next_rows:
            next_rows = asyncio.ensure_future(fetch(rows[-1][_SEQ], self.chunk_size))
            for at in range(0, len(rows), SLICE):
                await asyncio.sleep(0)
                part = rows[at : at + SLICE]
                bad = walker.feed(part)
                if bad is not None:
                    await next_rows  # the connection must be free again
                    return [walker.problem or await self._diagnose(walker, part[bad][_SEQ], head_seq)]
        return walker.finish(head_seq, head_chain, max_seq)

    async def _diagnose(self, walker: ChainWalker, bad_seq: int, head_seq: int) -> Problem:
        window = await self.snapshot.rows_from(bad_seq, DIAGNOSIS_WINDOW)
        problem = diagnose(
            walker.last_seq + 1, walker.chain_hash, window, head_seq=head_seq, redactions=walker.redactions
        )
        if problem.kind == Damage.HEADER_CHANGED and window:
            partner = await self._swapped_beyond(window[0], problem.seq + len(window), head_seq)
            if partner is not None:
                return swapped(problem.seq, partner)
        return problem

    async def _swapped_beyond(self, row: Row, first: int, head_seq: int) -> int | None:
        """The seq beyond the diagnosis window ``row`` was written at, if the row there was
        written at ``row``'s seq (two rows swapped far apart, not an edit). The seq is found
        from the row's own leaf (one hash per candidate, no reading); only that row is read."""
        seq = row[ROW_SEQ]
        for at, candidate in enumerate(range(first, head_seq + 1)):
            if at % 4096 == 0:
                await asyncio.sleep(0)  # a long trail: let the loop breathe
            if leaf_of(row, candidate) != row[ROW_LEAF]:
                continue
            found = await self.snapshot.rows_from(candidate, 1)
            there = found[0] if found else None
            if there is not None and there[ROW_SEQ] == candidate and leaf_of(there, seq) == there[ROW_LEAF]:
                return candidate
            return None
        return None
