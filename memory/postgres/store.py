"""The audit trail in PostgreSQL: :class:`PostgresAuditStore`, the
:class:`~memory.audit.AuditRecorder` adapter (besides it, only the owner's ``admin``, the
``probe``, the verification ``walk`` and the SymPy ``metrics`` talk to the database).

One writer at a time per chain: :meth:`PostgresAuditStore.append_prepared` takes the
transaction-level advisory locks of the chains its records go to (ascending), reads their
heads, drops envelope ids already stored in any chain, hashes each record onto its chain
and its chain's Merkle tree, ``COPY``s entries, payloads and the tree nodes completed,
moves the heads with compare-and-set and commits; then, in a transaction of its own, sends
one ``NOTIFY l9_audit`` (``sql.NOTIFY_HEAD`` says why apart). Within a chain insert order is
commit order, so readers may follow a chain's ``seq > cursor`` without missing a row. The
driver's errors leave as the port's (:func:`.errors.translated`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from memory.audit.appending import PreparedAppend, log_outcomes, outcomes
from memory.audit.chains import ChainHead, Layout, pack_heads
from memory.audit.checkpoints import Checkpoint, SigningKey
from memory.audit.port import AuditRecorder, AuditStoreError
from memory.audit.records import Committed, EntryFilter, EntryPage, Head, StoredEntry
from memory.audit.verify import VerifyReport
from memory.audit.walk import checkpoint_files, verify_snapshot
from memory.merkle import CompactRange, Needs

from . import sql
from .appending import ChainedBatch, ChainState, chain_batch
from .errors import UNAVAILABLE, translated
from .leases import PostgresLeases
from .sql import NOTIFY_CHANNEL
from .timestamps import timestamps_as_micros
from .walk import PostgresSnapshot, checkpoint_of

__all__ = ["CHAIN_LOCK_KEY", "NOTIFY_CHANNEL", "PostgresAuditStore", "quiet_pool_warnings"]

log = structlog.get_logger(__name__)

#: ``pg_advisory_xact_lock`` key serialising every writer of chain 0 ("L9AUDIT"); chain ``c``'s
#: is this plus ``c``.
CHAIN_LOCK_KEY = 0x4C39_4155_4449_54
#: Serialises checkpoint makers (one id each), without holding any chain's writers.
CHECKPOINT_LOCK_KEY = CHAIN_LOCK_KEY - 1
#: Leaves read at a time when a chain's tree is built from its entries.
TREE_BUILD_PAGE = 50_000
#: An append that met another auditor's concurrent insert of one of its envelope ids (in
#: another chain) is run again, finding it stored: at most this many times.
APPEND_ATTEMPTS = 3


def _entry(row: Mapping[str, Any]) -> StoredEntry:
    return StoredEntry(**{name: row[name] for name in StoredEntry.__slots__})


def _head_of(row: Mapping[str, Any]) -> ChainHead:
    tree = row["tree"]
    if tree is None:
        raise AuditStoreError(
            f"chain {row['chain']}'s Merkle tree is not built yet (the store builds it at open)"
        )
    return ChainHead(row["chain"], row["size"], row["chain_hash"], CompactRange.from_bytes(tree).root())


def _unmoved(last: Checkpoint, heads: Sequence[ChainHead]) -> bool:
    """Whether the chains stand where checkpoint ``last`` saw them (no new checkpoint is due)."""
    if last.version == 2:
        return last.heads == tuple(heads)
    return len(heads) == 1 and heads[0].size == last.seq and heads[0].chain_hash == last.chain_hash


def checkpoint_values(checkpoint: Checkpoint) -> list[Any]:
    """The checkpoint as :data:`.sql.CHECKPOINT_COLUMNS` stores it."""
    values = [getattr(checkpoint, c) for c in sql.CHECKPOINT_COLUMNS[:-1]]
    return [*values, pack_heads(checkpoint.heads) if checkpoint.version == 2 else None]


def quiet_pool_warnings() -> None:
    """Silence the connection pool's own reconnect warnings (they carry tracebacks), for a
    caller that reports an outage itself."""
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)


class PostgresAuditStore(AuditRecorder):
    """The audit trail, reached as the writer role through an asyncpg pool."""

    def __init__(
        self, pool: asyncpg.Pool, dsn: str, checkpoint_dir: Path | None = None, layout: Layout | None = None
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self.checkpoint_dir = checkpoint_dir
        self._layout = layout or Layout()
        #: Called with ``"before_copy"`` and ``"before_commit"`` inside each append that
        #: writes (fault injection for crash tests; see ``L9_AUDIT_FAILPOINT``).
        self.stage_hook: Callable[[str], None] | None = None

    @classmethod
    async def open(
        cls, dsn: str, *, checkpoint_dir: Path | None = None, min_size: int = 1, max_size: int = 4
    ) -> PostgresAuditStore:
        """Connect (``dsn`` is the writer URL, see :func:`memory.postgres.writer_dsn`)."""
        with translated("open the audit store"):
            try:
                pool = await asyncpg.create_pool(
                    dsn, min_size=min_size, max_size=max_size, init=timestamps_as_micros
                )
            except asyncpg.InvalidAuthorizationSpecificationError as exc:
                raise AuditStoreError(
                    f"cannot log in to the audit trail ({exc}): was migrate() run?"
                ) from exc
        store = cls(pool, dsn, checkpoint_dir)
        try:
            await store._check_schema()
            await store._build_trees()
        except BaseException:
            await pool.close()
            raise
        return store

    @property
    def layout(self) -> Layout:
        return self._layout

    async def _check_schema(self) -> None:
        with translated("open the audit store"):
            found = await self._pool.fetchval("SELECT to_regclass('l9_audit.chains') IS NOT NULL")
            if not found:
                raise AuditStoreError(
                    "the audit trail's tables are missing or older than this code: "
                    "run memory.postgres.migrate() first"
                )
            self._layout = Layout(await self._pool.fetchval(sql.CHAIN_COUNT))

    async def _build_trees(self) -> None:
        """Build the Merkle tree of every chain that has none yet (the chain of a trail made
        before chains had trees), each under its chain lock, from its leaves."""
        with translated("build the chains' Merkle trees"):
            missing = await self._pool.fetch(
                "SELECT chain FROM l9_audit.chains WHERE tree IS NULL ORDER BY chain"
            )
            for row in missing:
                async with self._pool.acquire() as conn, conn.transaction():
                    chain = row["chain"]
                    await conn.execute(sql.LOCK, CHAIN_LOCK_KEY + chain)
                    size = await conn.fetchval(
                        "SELECT size FROM l9_audit.chains WHERE chain = $1 AND tree IS NULL", chain
                    )
                    if size is None:
                        continue  # another process built it meanwhile
                    tree, nodes = await self._tree_from_leaves(conn, chain, size)
                    if nodes:
                        await conn.copy_records_to_table(
                            "tree_nodes", schema_name="l9_audit", records=nodes, columns=sql.NODE_COLUMNS
                        )
                    await conn.execute(sql.SET_TREE, chain, size, tree.to_bytes())
                    log.info("audit.tree.built", chain=chain, size=size, nodes=len(nodes))

    async def _tree_from_leaves(
        self, conn: asyncpg.Connection, chain: int, size: int
    ) -> tuple[CompactRange, list[tuple[int, int, int, bytes]]]:
        """Chain ``chain``'s tree over its first ``size`` leaves, and its stored nodes."""
        tree, nodes, layout = CompactRange(), list[tuple[int, int, int, bytes]](), self._layout
        seq = layout.first_seq(chain)
        while tree.size < size:
            rows = await conn.fetch(sql.LEAVES, chain, seq, min(TREE_BUILD_PAGE, size - tree.size))
            if not rows:
                raise AuditStoreError(
                    f"chain {chain} says {size} entries but only {tree.size} are stored: run l9 audit verify"
                )
            for r in rows:
                if r["seq"] != layout.seq(chain, tree.size + 1):
                    raise AuditStoreError(
                        f"chain {chain} has no entry at seq {layout.seq(chain, tree.size + 1)}: "
                        "run l9 audit verify"
                    )
                nodes.extend((chain, n.level, n.index, n.hash) for n in tree.append([r["leaf_hash"]]))
            seq = rows[-1]["seq"] + layout.chains
        return tree, nodes

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close the pool; connections not released within ``timeout_s`` are cut."""
        try:
            await asyncio.wait_for(self._pool.close(), timeout_s)
        except TimeoutError:
            log.warning("audit.store.close_timeout", timeout_s=timeout_s)
            self._pool.terminate()

    # -- writing ------------------------------------------------------------------------------------

    async def append_prepared(self, prepared: PreparedAppend) -> list[Committed]:
        if not prepared.records:
            return []
        started = time.perf_counter()
        layout = self._layout
        if layout.chains == 1:
            chain_of = [0] * len(prepared.records)
        else:
            chain_of = [layout.chain_of(rec.stream) for rec in prepared.records]
        chains = sorted(set(chain_of))
        with translated("append"):
            attempt = 1
            while True:
                try:
                    return await self._append(prepared, chain_of, chains, started)
                except asyncpg.UniqueViolationError as exc:
                    if attempt == APPEND_ATTEMPTS:
                        raise  # translated: a refusal
                    log.info("audit.append.raced", attempt=attempt, detail=str(exc))
                    attempt += 1

    async def _append(
        self, prepared: PreparedAppend, chain_of: Sequence[int], chains: list[int], started: float
    ) -> list[Committed]:
        async with self._pool.acquire() as conn:
            committed, last_seq = await self._append_in(conn, prepared, chain_of, chains, started)
            if last_seq is not None:
                await self._notify(conn, last_seq)
        return committed

    @staticmethod
    async def _notify(conn: asyncpg.Connection, last_seq: int) -> None:
        """Wake the trail's listeners (``watch_head``): a hint, so a failure is only logged."""
        try:
            await conn.execute(sql.NOTIFY_HEAD, str(last_seq))
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("audit.notify_failed", head=last_seq, error=str(exc))

    async def _append_in(
        self,
        conn: asyncpg.Connection,
        prepared: PreparedAppend,
        chain_of: Sequence[int],
        chains: list[int],
        started: float,
    ) -> tuple[list[Committed], int | None]:
        """The append in one transaction on ``conn``: what became of each record, and the
        highest seq written (None: nothing new)."""
        layout = self._layout
        async with conn.transaction():
            await conn.execute(sql.LOCK_CHAINS, [CHAIN_LOCK_KEY + c for c in chains])
            rows = await conn.fetch(sql.HEADS_AND_STORED, chains, list(prepared.firsts))
            states: dict[int, ChainState] = {}
            stored: dict[str, Any] = {}
            now: Any = None
            for row in rows:
                if row["envelope_id"] is not None:
                    stored[row["envelope_id"]] = row
                    continue
                now = row["recorded_at"]
                if row["chains"] != layout.chains:
                    raise AuditStoreError(
                        f"the trail has {row['chains']} chain(s) now, not the {layout.chains} this store "
                        "opened with: reopen it"
                    )
                tree_bytes = row["tree"]
                nodes_built: list[tuple[int, int, int, bytes]] = []
                if tree_bytes is None:
                    tree, nodes_built = await self._tree_from_leaves(conn, row["chain"], row["size"])
                else:
                    tree = CompactRange.from_bytes(tree_bytes)
                states[row["chain"]] = ChainState(row["chain"], row["size"], row["chain_hash"], tree)
                if nodes_built:
                    await conn.copy_records_to_table(
                        "tree_nodes", schema_name="l9_audit", records=nodes_built, columns=sql.NODE_COLUMNS
                    )
            fresh: dict[int, list[int]] = {}
            for eid, i in prepared.firsts.items():
                if eid not in stored:
                    fresh.setdefault(chain_of[i], []).append(i)
            batch = chain_batch(prepared, fresh, states, layout, now) if fresh else None
            if batch is not None:
                await self._write(conn, batch, now, self.stage_hook)
        committed = outcomes(prepared, stored, batch.placed if batch else {}, now)
        log_outcomes(committed, started)
        return committed, batch.last_seq if batch is not None else None

    @staticmethod
    async def _write(
        conn: asyncpg.Connection, batch: ChainedBatch, now: Any, hook: Callable[[str], None] | None
    ) -> None:
        if hook is not None:
            hook("before_copy")
        moves = batch.moves
        try:
            await conn.copy_records_to_table(
                "entries", schema_name="l9_audit", records=batch.entries, columns=sql.ENTRY_COLUMNS
            )
            await conn.copy_records_to_table(
                "payloads", schema_name="l9_audit", records=batch.payloads, columns=sql.PAYLOAD_COLUMNS
            )
            if batch.nodes:
                await conn.copy_records_to_table(
                    "tree_nodes", schema_name="l9_audit", records=batch.nodes, columns=sql.NODE_COLUMNS
                )
            moved = await conn.fetchval(
                sql.MOVE_HEADS,
                [m[0] for m in moves],
                [m[1] for m in moves],
                [m[2] for m in moves],
                [m[3] for m in moves],
                [m[4] for m in moves],
                now,
            )
        except UNAVAILABLE:
            raise  # a connection lost mid-append: translated() makes it AuditStoreUnavailable (retried)
        except asyncpg.UniqueViolationError:
            raise  # another chain's writer stored one of these envelope ids meanwhile: run again
        except asyncpg.PostgresError as exc:
            where = ", ".join(f"chain {m[0]} entries {m[4] + 1}..{m[1]}" for m in moves)
            raise AuditStoreError(f"append of {where} refused: {exc}") from exc
        if moved != len(moves):
            raise AuditStoreError(
                "a chain head moved during an append that held its chain lock: another writer "
                "does not take the lock; nothing was committed"
            )
        if hook is not None:
            hook("before_commit")

    async def make_checkpoint(self, signing_key: SigningKey) -> Checkpoint:
        """Sign the current head, linking the previous checkpoint; stored in the trail, then
        written to ``checkpoint_dir`` when set. The head not having moved since the last
        checkpoint, that one is returned (and its file rewritten if missing)."""
        with translated("make a checkpoint"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(sql.LOCK, CHECKPOINT_LOCK_KEY)
                rows = await conn.fetch(sql.HEADS)  # one statement: one moment of every chain
                heads = tuple(_head_of(r) for r in rows)
                last_row = await conn.fetchrow(sql.LAST_CHECKPOINT)
                last = checkpoint_of(last_row) if last_row else None
                if last is not None and _unmoved(last, heads):
                    checkpoint = last
                else:
                    checkpoint = Checkpoint.sign_heads(
                        signing_key,
                        id=last.id + 1 if last else 1,
                        heads=heads,
                        created_at=rows[0]["now"],
                        previous=last,
                    )
                    await conn.execute(sql.INSERT_CHECKPOINT, *checkpoint_values(checkpoint))
        path = checkpoint.write(self.checkpoint_dir) if self.checkpoint_dir else None
        if checkpoint is not last:
            log.info(
                "audit.checkpoint",
                id=checkpoint.id,
                seq=checkpoint.seq,
                chains=len(checkpoint.heads),
                key_id=checkpoint.key_id,
                root=checkpoint.chain_hash.hex(),
                file=str(path) if path else None,
            )
        return checkpoint

    # -- reading ------------------------------------------------------------------------------------

    async def head(self) -> Head:
        with translated("read the head"):
            rows = await self._pool.fetch(sql.HEADS)
        layout = Layout(rows[0]["chains"])
        newest = max(rows, key=lambda r: layout.seq(r["chain"], r["size"]))
        return Head(layout.seq(newest["chain"], newest["size"]), newest["chain_hash"], newest["updated_at"])

    async def heads(self) -> list[ChainHead]:
        with translated("read the chain heads"):
            rows = await self._pool.fetch(sql.HEADS)
        return [_head_of(r) for r in rows]

    async def leases(self) -> PostgresLeases:
        return await PostgresLeases.open(self._dsn)

    async def entry(self, envelope_id: str) -> StoredEntry | None:
        with translated("read an entry"):
            row = await self._pool.fetchrow(sql.ENTRY_OF, envelope_id)
        return _entry(row) if row else None

    async def checkpoint(self, checkpoint_id: int) -> Checkpoint | None:
        with translated("read a checkpoint"):
            row = await self._pool.fetchrow(sql.CHECKPOINT, checkpoint_id)
        return checkpoint_of(row) if row else None

    async def tree_nodes(self, chain: int, needs: Needs) -> dict[tuple[int, int], bytes]:
        layout, found = self._layout, dict[tuple[int, int], bytes]()
        with translated("read Merkle tree nodes"):
            async with self._pool.acquire() as conn:
                for level, runs in needs.levels.items():
                    indexes = [i for run in runs for i in run]
                    if level == 0:
                        seqs = [layout.seq(chain, i + 1) for i in indexes]
                        for r in await conn.fetch(sql.LEAVES_AT, chain, seqs):
                            found[0, layout.position(r["seq"]) - 1] = r["leaf_hash"]
                    else:
                        for r in await conn.fetch(sql.NODES_AT, chain, level, indexes):
                            found[level, r["idx"]] = r["hash"]
        return found

    async def entries_after(
        self,
        after_seq: int,
        *,
        limit: int = 1000,
        filters: EntryFilter | None = None,
        until_seq: int | None = None,
    ) -> EntryPage:
        f = filters or EntryFilter()
        with translated("read entries"):
            async with self._pool.acquire() as conn:
                if f.chain is None:
                    head = await conn.fetchval(sql.HEAD_SEQ)
                else:  # that chain's head: its rows up to it never change
                    head = await conn.fetchval(sql.CHAIN_HEAD_SEQ, f.chain) or 0
                end = head if until_seq is None else min(head, until_seq)
                rows = await conn.fetch(
                    sql.AFTER,
                    after_seq,
                    end,
                    f.type_like(),
                    f.source_like(),
                    f.correlation_id,
                    f.since,
                    limit,
                    f.chain,
                )
        entries = [_entry(r) for r in rows]
        cursor = entries[-1].seq if len(entries) == limit else max(end, after_seq)
        return EntryPage(entries, cursor)

    async def entries_for_correlation(self, correlation_id: str) -> list[StoredEntry]:
        with translated("read a run's entries"):
            rows = await self._pool.fetch(sql.FOR_CORRELATION, correlation_id)
        return [_entry(r) for r in rows]

    async def last_checkpoint(self) -> Checkpoint | None:
        with translated("read the last checkpoint"):
            row = await self._pool.fetchrow(sql.LAST_CHECKPOINT)
        return checkpoint_of(row) if row else None

    async def checkpoints(self) -> list[Checkpoint]:
        with translated("read checkpoints"):
            rows = await self._pool.fetch(sql.CHECKPOINTS)
        return [checkpoint_of(r) for r in rows]

    async def watch_head(self) -> AsyncIterator[int]:
        """The head seq after committed batches, from LISTEN on a dedicated connection.

        Notifications arriving while the caller is busy are coalesced into the
        newest; across reconnects some can be missed: use them to wake a tail up,
        and read by seq cursor.
        """
        latest, arrived = 0, asyncio.Event()

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            nonlocal latest
            latest = max(latest, int(payload))
            arrived.set()

        with translated("listen for appends"):
            conn = await asyncpg.connect(self._dsn)
        try:
            with translated("listen for appends"):
                await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            while True:
                await arrived.wait()
                arrived.clear()
                yield latest
        finally:
            await conn.close()

    # -- verifying ----------------------------------------------------------------------------------

    async def verify(
        self,
        *,
        from_checkpoint: Path | str | None = None,
        checkpoint_dir: Path | None = None,
        trusted_keys: Mapping[str, bytes] | None = None,
        chunk_size: int = 10_000,
    ) -> VerifyReport:
        """See :meth:`AuditRecorder.verify`. The snapshot is one exported repeatable-read
        snapshot, its chains read at once through up to :data:`.walk.READERS` connections."""
        started = time.perf_counter()
        files, presented = checkpoint_files(checkpoint_dir or self.checkpoint_dir, from_checkpoint)
        with translated("verify"):
            async with PostgresSnapshot.open(self._dsn) as snapshot:
                return await verify_snapshot(
                    snapshot,
                    files=files,
                    presented=presented,
                    trusted_keys=trusted_keys,
                    chunk_size=chunk_size,
                    started=started,
                )
