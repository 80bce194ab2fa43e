"""The audit trail in PostgreSQL: the only module that talks to the database (asyncpg)
besides the owner's ``admin`` and the verification ``walk``.

One writer at a time per chain: :meth:`PostgresAuditStore.append` takes a
transaction-level advisory lock, reads the head, drops envelope ids already
stored, hashes, ``COPY``s entries and payloads, moves the head with
compare-and-set, sends one ``NOTIFY l9_audit`` and commits. Insert order is
commit order, so readers may follow ``seq > cursor`` without missing a row.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from . import sql
from .admin import migrate, redact
from .appending import ChainedBatch, PreparedAppend, chain_batch, outcomes, prepare_append
from .checkpoints import Checkpoint, SigningKey, read_checkpoint, read_checkpoint_dir
from .errors import AuditStoreError, AuditStoreUnavailable, unavailable_as
from .records import AppendStatus, AuditRecord, Committed, EntryFilter, EntryPage, Head, StoredEntry
from .sql import NOTIFY_CHANNEL
from .timestamps import timestamps_as_micros
from .verify import VerifyReport
from .walk import WALK_PLAN, Walk, checkpoint_of

__all__ = [
    "CHAIN_LOCK_KEY",
    "NOTIFY_CHANNEL",
    "AuditStoreError",
    "AuditStoreUnavailable",
    "PostgresAuditStore",
    "migrate",
    "redact",
]

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


class PostgresAuditStore:
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
        try:
            with unavailable_as("open the audit store"):
                pool = await asyncpg.create_pool(
                    dsn, min_size=min_size, max_size=max_size, init=timestamps_as_micros
                )
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise AuditStoreError(f"cannot log in to the audit trail ({exc}): was migrate() run?") from exc
        store = cls(pool, dsn, checkpoint_dir)
        try:
            await store._check_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _check_schema(self) -> None:
        with unavailable_as("open the audit store"):
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

    async def __aenter__(self) -> PostgresAuditStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- writing ------------------------------------------------------------------------------------

    async def append(self, records: Sequence[AuditRecord]) -> list[Committed]:
        """Append the records not stored yet, in one transaction; one :class:`Committed`
        per input record, in order (``status`` says stored / duplicate / conflict)."""
        return await self.append_prepared(prepare_append(records)) if records else []

    async def append_prepared(self, prepared: PreparedAppend) -> list[Committed]:
        """:meth:`append` of records already run through :func:`prepare_append` (which a
        caller may do for its next batch while this one is written)."""
        if not prepared.records:
            return []
        started = time.perf_counter()
        with unavailable_as("append"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(sql.LOCK, CHAIN_LOCK_KEY)
                head, stored = _head_and_stored(await conn.fetch(HEAD_AND_STORED, list(prepared.firsts)))
                fresh = [i for eid, i in prepared.firsts.items() if eid not in stored]
                batch = chain_batch(prepared, fresh, head) if fresh else None
                if batch is not None:
                    await self._write(conn, batch, head, self.stage_hook)
        committed = outcomes(prepared, stored, batch, head["now"])
        self._log_append(committed, started)
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

    @staticmethod
    def _log_append(outcomes: Sequence[Committed], started: float) -> None:
        stored = sum(1 for c in outcomes if c.new)
        conflicts = [c for c in outcomes if c.status is AppendStatus.CONFLICT]
        for c in conflicts:
            log.warning(
                "audit.append.conflict",
                envelope_id=c.record.envelope_id,
                seq=c.seq,
                stream=c.record.stream,
                entry_id=c.record.entry_id,
            )
        log.debug(
            "audit.append",
            records=len(outcomes),
            stored=stored,
            conflicts=len(conflicts),
            head=max((c.seq for c in outcomes), default=0),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def make_checkpoint(self, signing_key: SigningKey) -> Checkpoint:
        """Sign the current head, linking the previous checkpoint; stored in the trail, then
        written to ``checkpoint_dir`` when set. The head not having moved since the last
        checkpoint, that one is returned (and its file rewritten if missing)."""
        with unavailable_as("make a checkpoint"):
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
        with unavailable_as("read the head"):
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
        """Committed entries with ``seq > after_seq`` matching ``filters``, by seq, at most ``limit``;
        with ``until_seq``, none beyond it (a window, for reading backwards from the head).

        ``cursor`` of the page is the last seq examined (the head, or ``until_seq``, when
        fewer than ``limit`` matched): rows up to it never change, so a tail resumes from it.
        """
        f = filters or EntryFilter()
        with unavailable_as("read entries"):
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
        """Every entry of one run (correlation id), by seq, with its payload."""
        with unavailable_as("read a run's entries"):
            rows = await self._pool.fetch(sql.FOR_CORRELATION, correlation_id)
        return [_entry(r) for r in rows]

    async def last_checkpoint(self) -> Checkpoint | None:
        with unavailable_as("read the last checkpoint"):
            row = await self._pool.fetchrow(sql.LAST_CHECKPOINT)
        return checkpoint_of(row) if row else None

    async def checkpoints(self) -> list[Checkpoint]:
        with unavailable_as("read checkpoints"):
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

        with unavailable_as("listen for appends"):
            conn = await asyncpg.connect(self._dsn)
        try:
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
        """Recompute the chain and check the checkpoints; the report names the first bad seq.

        ``from_checkpoint``: a checkpoint file to start from; the trail must hold its
        chain hash at its seq. ``checkpoint_dir`` (default: the store's): files whose
        checkpoints must be in the trail and match the chain. ``trusted_keys``
        (``{key_id: Ed25519 public key}``): without them signatures are not checked.
        The whole walk reads one snapshot: appends meanwhile do not disturb it.
        """
        started = time.perf_counter()
        directory = checkpoint_dir or self.checkpoint_dir
        files = (
            [(str(directory / c.file_name()), c) for c in read_checkpoint_dir(directory)] if directory else []
        )
        presented = (
            (str(from_checkpoint), read_checkpoint(Path(from_checkpoint))) if from_checkpoint else None
        )
        with unavailable_as("verify"):
            conn = await asyncpg.connect(self._dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(WALK_PLAN)
                walk = Walk(conn, chunk_size)
                report = await walk.run(files, presented, trusted_keys, started)
        finally:
            await conn.close()
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
