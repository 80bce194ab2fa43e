"""The trail as verification reads it: one repeatable-read snapshot of the tables,
as :class:`memory.audit.walk.TrailSnapshot` (the walk itself is :mod:`memory.audit.walk`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from memory.audit.chains import unpack_heads
from memory.audit.checkpoints import Checkpoint
from memory.audit.port import AuditStoreError
from memory.audit.verify import VERIFY_COLUMNS, Row

from . import sql

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
    """A checkpoints row as a :class:`Checkpoint` (its heads unpacked)."""
    values = {name: row[name] for name in sql.CHECKPOINT_COLUMNS}
    heads = values.pop("heads")
    try:
        unpacked = unpack_heads(heads) if heads is not None else ()
    except ValueError as exc:
        raise AuditStoreError(f"checkpoint #{values['id']}: {exc}") from None
    return Checkpoint(**values, heads=unpacked)


class PostgresSnapshot:
    """The trail read through ``conn``, inside a repeatable-read transaction (times decoded
    as integer microseconds, :data:`WALK_PLAN` set)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def head(self) -> tuple[int, bytes]:
        row = await self.conn.fetchrow("SELECT size, chain_hash FROM l9_audit.chains WHERE chain = 0")
        return row["size"], row["chain_hash"]

    async def max_seq(self) -> int:
        found: int = await self.conn.fetchval("SELECT coalesce(max(seq), 0) FROM l9_audit.entries")
        return found

    async def checkpoints(self) -> list[Checkpoint]:
        return [checkpoint_of(r) for r in await self.conn.fetch(sql.CHECKPOINTS)]

    async def redactions(self) -> dict[int, bytes]:
        rows = await self.conn.fetch("SELECT seq, payload_hash FROM l9_audit.redactions")
        return {r["seq"]: r["payload_hash"] for r in rows}

    async def chain_hash_at(self, seq: int) -> bytes | None:
        found: bytes | None = await self.conn.fetchval(
            "SELECT chain_hash FROM l9_audit.entries WHERE seq = $1", seq
        )
        return found

    async def rows_after(self, seq: int, limit: int) -> Sequence[Row]:
        rows: list[Row] = await self.conn.fetch(_WALK, seq, limit)
        return rows

    async def rows_from(self, seq: int, limit: int) -> Sequence[Row]:
        rows: list[Row] = await self.conn.fetch(_WINDOW, seq, limit)
        return rows
