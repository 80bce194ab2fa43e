"""The audit trail in PostgreSQL: :class:`PostgresAuditStore`, the
:class:`~memory.audit.AuditRecorder` adapter (besides it, only the owner's ``admin``, the
``probe``, the verification ``walk`` and the SymPy ``metrics`` talk to the database).

One writer at a time per chain: :meth:`PostgresAuditStore.append_prepared` takes a
transaction-level advisory lock, reads the head, drops envelope ids already
stored, hashes, ``COPY``s entries and payloads, moves the head with
compare-and-set, sends one ``NOTIFY l9_audit`` and commits. Insert order is
commit order, so readers may follow ``seq > cursor`` without missing a row.
The driver's errors leave as the port's (:func:`.errors.translated`).
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
from memory.audit.checkpoints import Checkpoint, SigningKey
from memory.audit.port import AuditRecorder, AuditStoreError
from memory.audit.records import Committed, EntryFilter, EntryPage, Head, StoredEntry
from memory.audit.verify import VerifyReport
from memory.audit.walk import checkpoint_files, verify_snapshot

from . import sql
from .appending import ChainedBatch, chain_batch
from .errors import UNAVAILABLE, translated
from .sql import NOTIFY_CHANNEL
from .timestamps import timestamps_as_micros
from .walk import WALK_PLAN, PostgresSnapshot, checkpoint_of

__all__ = ["CHAIN_LOCK_KEY", "NOTIFY_CHANNEL", "PostgresAuditStore", "quiet_pool_warnings"]

log = structlog.get_logger(__name__)

#: ``pg_advisory_xact_lock`` key serialising every writer of the chain ("L9AUDIT").
CHAIN_LOCK_KEY = 0x4C39_4155_4449_54
#: The head (the row without an envelope id; ``recorded_at`` is the append's clock) and the
#: entries already stored under the ids ``$1``: one round trip under the chain lock.
HEAD_AND_STORED = (
    "SELECT NULL::text AS envelope_id, seq, chain_hash, NULL::bytea AS payload_hash, "
    "clock_timestamp() AS recorded_at FROM l9_audit.chain_head UNION ALL " + sql.STORED
)


def _head_and_stored(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The head (``seq``, ``chain_hash``, ``now``) and the stored rows by envelope id."""
    head: dict[str, Any] = {}
    stored = {}
    for row in rows:
        if row["envelope_id"] is None:
            head = {"seq": row["seq"], "chain_hash": row["chain_hash"], "now": row["recorded_at"]}
        else:
            stored[row["envelope_id"]] = row
    return head, stored


def _entry(row: Mapping[str, Any]) -> StoredEntry:
    return StoredEntry(**{name: row[name] for name in StoredEntry.__slots__})


def quiet_pool_warnings() -> None:
    """Silence the connection pool's own reconnect warnings (they carry tracebacks), for a
    caller that reports an outage itself."""
    logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)


class PostgresAuditStore(AuditRecorder):
    """The audit trail, reached as the writer role through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, checkpoint_dir: Path | None = None) -> None:
        self._pool = pool
        self._dsn = dsn
        self.checkpoint_dir = checkpoint_dir
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
        except BaseException:
            await pool.close()
            raise
        return store

    async def _check_schema(self) -> None:
        with translated("open the audit store"):
            found = await self._pool.fetchval("SELECT to_regclass('l9_audit.chain_head') IS NOT NULL")
        if not found:
            raise AuditStoreError("the audit trail's tables are missing: run memory.postgres.migrate() first")

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
        with translated("append"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(sql.LOCK, CHAIN_LOCK_KEY)
                head, stored = _head_and_stored(await conn.fetch(HEAD_AND_STORED, list(prepared.firsts)))
                fresh = [i for eid, i in prepared.firsts.items() if eid not in stored]
                batch = chain_batch(prepared, fresh, head) if fresh else None
                if batch is not None:
                    await self._write(conn, batch, head, self.stage_hook)
        committed = outcomes(prepared, stored, batch.placed if batch else {}, head["now"])
        log_outcomes(committed, started)
        return committed

    @staticmethod
    async def _write(
        conn: asyncpg.Connection, batch: ChainedBatch, head: Any, hook: Callable[[str], None] | None
    ) -> None:
        if hook is not None:
            hook("before_copy")
        try:
            await conn.copy_records_to_table(
                "entries", schema_name="l9_audit", records=batch.entries, columns=sql.ENTRY_COLUMNS
            )
            await conn.copy_records_to_table(
                "payloads", schema_name="l9_audit", records=batch.payloads, columns=sql.PAYLOAD_COLUMNS
            )
            moved = await conn.fetch(
                sql.MOVE_HEAD, batch.last_seq, batch.last_chain, head["now"], head["seq"]
            )
        except UNAVAILABLE:
            raise  # a connection lost mid-append: translated() makes it AuditStoreUnavailable (retried)
        except asyncpg.PostgresError as exc:
            raise AuditStoreError(
                f"append of seq {head['seq'] + 1}..{batch.last_seq} refused: {exc}"
            ) from exc
        if len(moved) != 1:
            raise AuditStoreError(
                f"the chain head moved away from seq {head['seq']} during an append that held the "
                "chain lock: another writer does not take the lock; nothing was committed"
            )
        if hook is not None:
            hook("before_commit")

    async def make_checkpoint(self, signing_key: SigningKey) -> Checkpoint:
        """Sign the current head, linking the previous checkpoint; stored in the trail, then
        written to ``checkpoint_dir`` when set. The head not having moved since the last
        checkpoint, that one is returned (and its file rewritten if missing)."""
        with translated("make a checkpoint"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(sql.LOCK, CHAIN_LOCK_KEY)
                head = await conn.fetchrow(sql.HEAD)
                last_row = await conn.fetchrow(sql.LAST_CHECKPOINT)
                last = checkpoint_of(last_row) if last_row else None
                if last is not None and last.seq == head["seq"]:
                    checkpoint = last
                else:
                    checkpoint = Checkpoint.sign(
                        signing_key,
                        id=last.id + 1 if last else 1,
                        seq=head["seq"],
                        chain_hash=head["chain_hash"],
                        created_at=head["now"],
                        previous=last,
                    )
                    await conn.execute(
                        sql.INSERT_CHECKPOINT, *(getattr(checkpoint, c) for c in sql.CHECKPOINT_COLUMNS)
                    )
        path = checkpoint.write(self.checkpoint_dir) if self.checkpoint_dir else None
        if checkpoint is not last:
            log.info(
                "audit.checkpoint",
                id=checkpoint.id,
                seq=checkpoint.seq,
                key_id=checkpoint.key_id,
                chain_hash=checkpoint.chain_hash.hex(),
                file=str(path) if path else None,
            )
        return checkpoint

    # -- reading ------------------------------------------------------------------------------------

    async def head(self) -> Head:
        with translated("read the head"):
            row = await self._pool.fetchrow(sql.HEAD)
        return Head(row["seq"], row["chain_hash"], row["updated_at"])

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
                head = await conn.fetchval("SELECT seq FROM l9_audit.chain_head")
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
        """See :meth:`AuditRecorder.verify`; the snapshot is one repeatable-read transaction."""
        started = time.perf_counter()
        files, presented = checkpoint_files(checkpoint_dir or self.checkpoint_dir, from_checkpoint)
        with translated("verify"):
            conn = await asyncpg.connect(self._dsn)
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    await conn.execute(WALK_PLAN)
                    return await verify_snapshot(
                        PostgresSnapshot(conn),
                        files=files,
                        presented=presented,
                        trusted_keys=trusted_keys,
                        chunk_size=chunk_size,
                        started=started,
                    )
            finally:
                await conn.close()
