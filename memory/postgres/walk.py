"""The trail as verification reads it: one repeatable-read snapshot of the tables, as
:class:`memory.audit.walk.TrailSnapshot` (the walk itself is :mod:`memory.audit.walk`).

The first connection exports its snapshot (``pg_export_snapshot()``); each chain is read
through a connection of its own, opened when a chain walk first needs one (at most
:data:`READERS`), whose transaction imports that snapshot (``SET TRANSACTION SNAPSHOT``):
every chain is read as of the same moment, and appends meanwhile do not disturb the walk.
A chain's rows come from ``entries_chain_idx`` (chain, seq) in its order, each payload by
its key (:data:`WALK_PLAN`): index scans, never a sort of the trail.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from memory.audit.chains import Layout, unpack_heads
from memory.audit.checkpoints import Checkpoint
from memory.audit.port import AuditStoreError
from memory.audit.verify import VERIFY_COLUMNS, ChainRow, Row

from . import sql

#: The most connections one verification reads the chains through (one chain each at a time).
READERS = 4

_VERIFY_SQL = {
    "envelope_time_us": "(extract(epoch FROM e.envelope_time) * 1000000)::int8",
    "recorded_at_us": "(extract(epoch FROM e.recorded_at) * 1000000)::int8",
    **{c: f"p.{c}" for c in sql.PAYLOAD_COLUMNS[1:]},
}


def _rows_sql(where: str) -> str:
    """Chain ``$3``'s rows from ``entries_chain_idx`` in its order, each with its payload
    by key. A range on chain, not an equality: with an equality the planner may read the
    primary key and filter (every chain's rows, for each chain); with the index's order
    asked, no other index gives it without a sort."""
    select = ", ".join(_VERIFY_SQL.get(c, f"e.{c}") for c in VERIFY_COLUMNS)
    return (
        f"SELECT {select} FROM l9_audit.entries e LEFT JOIN LATERAL "
        f"(SELECT env, sig, key_id FROM l9_audit.payloads WHERE seq = e.seq) p ON true "
        f"WHERE e.chain BETWEEN $3 AND $3 AND {where} ORDER BY e.chain, e.seq LIMIT $2"
    )


_WALK = _rows_sql("e.seq > $1")
_WINDOW = _rows_sql("e.seq >= $1")
_HEADS = "SELECT chain, size, chain_hash, tree FROM l9_audit.chains ORDER BY chain"
_MAX_SEQ = (
    "SELECT seq FROM l9_audit.entries WHERE chain BETWEEN $1 AND $1 ORDER BY chain DESC, seq DESC LIMIT 1"
)
_CHAIN_HASH_AT = "SELECT chain_hash FROM l9_audit.entries WHERE seq = $2 AND chain = $1"
_STORED_CHAIN = "SELECT chain FROM l9_audit.entries WHERE seq = $1"
_NODES = (
    "SELECT idx, hash FROM l9_audit.tree_nodes "
    "WHERE chain = $1 AND level = $2 AND idx BETWEEN $3 AND $4 ORDER BY idx"
)
#: For the walk: index scans in their index's order (payloads looked up by key), never a hash
#: join or a sort of the trail.
WALK_PLAN = (
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_sort = off; "
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
    """The trail read through ``first`` (whose repeatable-read transaction exported the
    snapshot ``snapshot_id``) and up to ``readers`` connections in all, each reading one
    chain at a time (times decoded as integer microseconds, :data:`WALK_PLAN` set). The
    trail-wide reads go through ``first``, before any chain is read."""

    def __init__(self, first: asyncpg.Connection, dsn: str, snapshot_id: str, readers: int = READERS) -> None:
        self.conn = first
        self._dsn, self._snapshot_id, self._readers = dsn, snapshot_id, readers
        self._connections = [first]
        self._opened = 1  # connections opened or being opened
        self._free: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        self._free.put_nowait(first)

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str, readers: int = READERS) -> AsyncIterator[PostgresSnapshot]:
        """A snapshot of the trail as it is now, its connections closed on the way out."""
        first = await asyncpg.connect(dsn)
        snapshot = None
        try:
            await first.transaction(isolation="repeatable_read", readonly=True).start()
            snapshot_id: str = await first.fetchval("SELECT pg_export_snapshot()")
            await first.execute(WALK_PLAN)
            snapshot = cls(first, dsn, snapshot_id, readers)
            yield snapshot
        finally:
            if snapshot is not None:
                await snapshot.close()
            else:
                await first.close()

    async def close(self) -> None:
        """Close every connection (ending its transaction); one that will not close is cut."""
        for conn in self._connections:
            try:
                await conn.close(timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    async def _reader(self) -> asyncpg.Connection:
        """A free connection: one in the pool, a new one while there are fewer than allowed,
        else the next one released."""
        if self._free.empty() and self._opened < self._readers:
            self._opened += 1
            conn = await asyncpg.connect(self._dsn)
            self._connections.append(conn)
            await conn.transaction(isolation="repeatable_read", readonly=True).start()
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{self._snapshot_id}'")
            await conn.execute(WALK_PLAN)
            return conn
        return await self._free.get()

    @asynccontextmanager
    async def chain(self, chain: int) -> AsyncIterator[PostgresChainSnapshot]:
        conn = await self._reader()
        try:
            yield PostgresChainSnapshot(conn, chain)
        finally:
            self._free.put_nowait(conn)

    async def layout(self) -> Layout | None:
        chains = await self.conn.fetchval(sql.CHAIN_COUNT)
        try:
            return Layout(chains)
        except ValueError:
            return None

    async def heads(self) -> dict[int, ChainRow]:
        rows = await self.conn.fetch(_HEADS)
        return {r["chain"]: ChainRow(r["chain"], r["size"], r["chain_hash"], r["tree"]) for r in rows}

    async def checkpoints(self) -> list[Checkpoint]:
        return [checkpoint_of(r) for r in await self.conn.fetch(sql.CHECKPOINTS)]

    async def redactions(self) -> dict[int, bytes]:
        rows = await self.conn.fetch("SELECT seq, payload_hash FROM l9_audit.redactions")
        return {r["seq"]: r["payload_hash"] for r in rows}


class PostgresChainSnapshot:
    """Chain ``chain`` of the snapshot, read through ``conn`` (its own while in use)."""

    def __init__(self, conn: asyncpg.Connection, chain: int) -> None:
        self.conn, self.chain = conn, chain

    async def max_seq(self) -> int:
        found: int | None = await self.conn.fetchval(_MAX_SEQ, self.chain)
        return found or 0

    async def chain_hash_at(self, seq: int) -> bytes | None:
        found: bytes | None = await self.conn.fetchval(_CHAIN_HASH_AT, self.chain, seq)
        return found

    async def stored_chain(self, seq: int) -> int | None:
        found: int | None = await self.conn.fetchval(_STORED_CHAIN, seq)
        return found

    async def rows_after(self, seq: int, limit: int) -> Sequence[Row]:
        rows: list[Row] = await self.conn.fetch(_WALK, seq, limit, self.chain)
        return rows

    async def rows_from(self, seq: int, limit: int) -> Sequence[Row]:
        rows: list[Row] = await self.conn.fetch(_WINDOW, seq, limit, self.chain)
        return rows

    async def tree_nodes(self, level: int, first: int, last: int) -> dict[int, bytes]:
        rows = await self.conn.fetch(_NODES, self.chain, level, first, last)
        return {r["idx"]: r["hash"] for r in rows}
