"""One verification walk over one snapshot of the trail: checkpoints first, then the chain
in chunks streamed while the previous one is hashed, and a diagnosis of the first bad row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from memory.chain import GENESIS

from . import sql
from .checkpoints import Checkpoint
from .verify import VERIFY_COLUMNS, ChainWalker, Damage, Problem, VerifyReport, check_checkpoints, diagnose

#: Rows hashed between two looks at the socket during verification.
_SLICE = 256
#: Rows read after a bad one to tell a moved row from an edited one.
DIAGNOSIS_WINDOW = 4096

_VERIFY_SQL = {
    "envelope_time_us": "(extract(epoch FROM e.envelope_time) * 1000000)::int8",
    "recorded_at_us": "(extract(epoch FROM e.recorded_at) * 1000000)::int8",
    **{c: f"p.{c}" for c in sql.PAYLOAD_COLUMNS[1:]},
}


def _walk_sql(columns: Sequence[str], where: str) -> str:
    select = ", ".join(_VERIFY_SQL.get(c, f"e.{c}") for c in columns)
    return (
        f"SELECT {select} FROM l9_audit.entries e "
        f"LEFT JOIN l9_audit.payloads p ON p.seq = e.seq AND p.seq >= $1 "  # both index scans start at $1
        f"WHERE {where} ORDER BY e.seq"
    )


_WALK = _walk_sql(VERIFY_COLUMNS, "e.seq > $1") + " LIMIT $2"
_WINDOW = _walk_sql(VERIFY_COLUMNS, "e.seq >= $1") + " LIMIT $2"
#: For the walk: two primary-key index scans merged, never a hash join + sort of the whole trail.
WALK_PLAN = (
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_nestloop = off; SET LOCAL enable_sort = off; "
    "SET LOCAL max_parallel_workers_per_gather = 0"
)


def checkpoint_of(row: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(**{name: row[name] for name in sql.CHECKPOINT_COLUMNS})


class Walk:
    """One verification over one snapshot (times decoded as integer microseconds)."""

    def __init__(self, conn: asyncpg.Connection, chunk_size: int) -> None:
        self.conn = conn
        self.chunk_size = chunk_size

    async def run(
        self,
        files: Sequence[tuple[str, Checkpoint]],
        presented: tuple[str, Checkpoint] | None,
        trusted_keys: Mapping[str, bytes] | None,
        started: float,
    ) -> VerifyReport:
        conn = self.conn
        head = await conn.fetchrow("SELECT seq, chain_hash FROM l9_audit.chain_head")
        max_seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM l9_audit.entries")
        in_trail = [checkpoint_of(r) for r in await conn.fetch(sql.CHECKPOINTS)]
        redacted = await conn.fetch("SELECT seq, payload_hash FROM l9_audit.redactions")
        redactions: dict[int, bytes] = {r["seq"]: r["payload_hash"] for r in redacted}
        check = check_checkpoints(in_trail, files, presented, trusted_keys)
        problems = list(check.problems)
        start = check.start
        walker = ChainWalker(
            last_seq=start.seq if start else 0,
            chain_hash=start.chain_hash if start else GENESIS,
            anchors=check.anchors,
            redactions=redactions,
        )
        start_problem = await self._check_start(start, max_seq) if start else None
        if start_problem is not None:
            problems.append(start_problem)
        else:
            problems.extend(await self._walk(walker, head["seq"], head["chain_hash"], max_seq))
        problems.sort(key=lambda p: p.seq)  # stable: at one seq, checkpoint findings come first
        return VerifyReport(
            problems=tuple(problems),
            entries_checked=walker.checked,
            last_seq=walker.last_seq,
            chain_hash=walker.chain_hash,
            head_seq=head["seq"],
            redacted=walker.redacted,
            anchors_matched=walker.anchors_matched,
            started_from=start.id if start else None,
            signatures_checked=trusted_keys is not None,
            seconds=time.perf_counter() - started,
        )

    async def _check_start(self, start: Checkpoint, max_seq: int) -> Problem | None:
        """The trail must hold the checkpoint's chain hash at its seq."""
        if start.seq == 0:  # the empty trail: its chain hash is the genesis one
            if start.chain_hash == GENESIS:
                return None
            return Problem(
                Damage.CHAIN_REWRITTEN, 0, f"checkpoint #{start.id} gives seq 0 a non-genesis hash"
            )
        stored = await self.conn.fetchval("SELECT chain_hash FROM l9_audit.entries WHERE seq = $1", start.seq)
        if stored is None and max_seq < start.seq:
            return Problem(
                Damage.TAIL_TRUNCATED,
                max_seq + 1,
                f"the trail ends at seq {max_seq} but checkpoint #{start.id} vouches for seq {start.seq}",
            )
        if stored is None:
            return Problem(
                Damage.MISSING_ROW, start.seq, f"seq {start.seq} of checkpoint #{start.id} is gone"
            )
        if stored != start.chain_hash:
            return Problem(
                Damage.CHAIN_REWRITTEN,
                start.seq,
                f"the trail's chain hash at seq {start.seq} "
                f"differs from checkpoint #{start.id}: the trail was rewritten",
            )
        return None

    async def _walk(
        self, walker: ChainWalker, head_seq: int, head_chain: bytes, max_seq: int
    ) -> list[Problem]:
        """Chunks of rows, the next one streaming in while this one is hashed (in slices,
        yielding in between so asyncpg reads what the server sent meanwhile)."""
        fetch = self.conn.fetch
        next_rows = asyncio.ensure_future(fetch(_WALK, walker.last_seq, self.chunk_size))
        while rows := await next_rows:
            next_rows = asyncio.ensure_future(fetch(_WALK, rows[-1][1], self.chunk_size))
            for at in range(0, len(rows), _SLICE):
                await asyncio.sleep(0)
                part = rows[at : at + _SLICE]
                bad = walker.feed(part)
                if bad is not None:
                    await next_rows  # the connection must be free again
                    return [walker.problem or await self._diagnose(walker, part[bad][1], head_seq)]
        return walker.finish(head_seq, head_chain, max_seq)

    async def _diagnose(self, walker: ChainWalker, bad_seq: int, head_seq: int) -> Problem:
        window = await self.conn.fetch(_WINDOW, bad_seq, DIAGNOSIS_WINDOW)
        return diagnose(
            walker.last_seq + 1, walker.chain_hash, window, head_seq=head_seq, redactions=walker.redactions
        )
