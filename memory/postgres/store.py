"""The audit trail in PostgreSQL: the only module that talks to the database (asyncpg).

One writer at a time per chain: :meth:`PostgresAuditStore.append` takes a
transaction-level advisory lock, reads the head, drops envelope ids already
stored, hashes, ``COPY``s entries and payloads, moves the head with
compare-and-set, sends one ``NOTIFY l9_audit`` and commits. Insert order is
commit order, so readers may follow ``seq > cursor`` without missing a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from memory.chain import (
    GENESIS,
    HASH_VERSION,
    canonical_header,
    chain_hash,
    leaf_hash,
    payload_hash,
    to_micros,
)

from .checkpoints import Checkpoint, SigningKey, read_checkpoint, read_checkpoint_dir
from .records import AppendStatus, AuditRecord, Committed, EntryFilter, EntryPage, Head, StoredEntry
from .schema import BOOKKEEPING_SQL, MIGRATION_LOCK_KEY, load_migrations, pending
from .verify import (
    VERIFY_COLUMNS,
    ChainWalker,
    Damage,
    Problem,
    VerifyReport,
    check_checkpoints,
    diagnose,
)

log = structlog.get_logger(__name__)

#: ``pg_advisory_xact_lock`` key serialising every writer of the chain ("L9AUDIT").
CHAIN_LOCK_KEY = 0x4C39_4155_4449_54
#: Channel of the one NOTIFY per committed batch; the payload is the new head seq.
NOTIFY_CHANNEL = "l9_audit"
#: Rows hashed between two looks at the socket during verification.
_SLICE = 256
#: Rows read after a bad one to tell a moved row from an edited one.
DIAGNOSIS_WINDOW = 4096

_ENTRY_COLUMNS = (
    "seq",
    "envelope_id",
    "type",
    "source",
    "correlation_id",
    "causation_id",
    "envelope_time",
    "recorded_at",
    "stream",
    "entry_id",
    "payload_hash",
    "leaf_hash",
    "chain_hash",
    "hash_version",
)
_PAYLOAD_COLUMNS = ("seq", "env", "sig", "key_id")
_CHECKPOINT_COLUMNS = (
    "id",
    "seq",
    "chain_hash",
    "created_at",
    "prev_id",
    "prev_digest",
    "key_id",
    "digest",
    "signature",
)
_SELECT_ENTRY = (
    "SELECT " + ", ".join(f"e.{c}" for c in _ENTRY_COLUMNS) + ", p.env, p.sig, p.key_id "
    "FROM l9_audit.entries e LEFT JOIN l9_audit.payloads p USING (seq) "
)
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_HEAD = "SELECT seq, chain_hash, updated_at, clock_timestamp() AS now FROM l9_audit.chain_head"
_STORED = (
    "SELECT envelope_id, seq, chain_hash, payload_hash, recorded_at FROM l9_audit.entries "
    "WHERE envelope_id = ANY($1::text[])"
)
_MOVE_HEAD = f"""
WITH moved AS (
    UPDATE l9_audit.chain_head SET seq = $1, chain_hash = $2, updated_at = $3 WHERE seq = $4 RETURNING seq
)
SELECT seq, pg_notify('{NOTIFY_CHANNEL}', seq::text) FROM moved
"""
_AFTER = (
    _SELECT_ENTRY + "WHERE e.seq > $1 AND e.seq <= $2 AND ($3::text IS NULL OR e.type LIKE $3) "
    "AND ($4::text IS NULL OR e.source LIKE $4) AND ($5::text IS NULL OR e.correlation_id = $5) "
    "AND ($6::timestamptz IS NULL OR e.recorded_at >= $6) ORDER BY e.seq LIMIT $7"
)
_FOR_CORRELATION = _SELECT_ENTRY + "WHERE e.correlation_id = $1 ORDER BY e.seq"
_CHECKPOINTS = f"SELECT {', '.join(_CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints ORDER BY id"
_LAST_CHECKPOINT = (
    f"SELECT {', '.join(_CHECKPOINT_COLUMNS)} FROM l9_audit.checkpoints ORDER BY id DESC LIMIT 1"
)
_INSERT_CHECKPOINT = (
    f"INSERT INTO l9_audit.checkpoints ({', '.join(_CHECKPOINT_COLUMNS)}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_VERIFY_SQL = {
    "envelope_time_us": "(extract(epoch FROM e.envelope_time) * 1000000)::int8",
    "recorded_at_us": "(extract(epoch FROM e.recorded_at) * 1000000)::int8",
    **{c: f"p.{c}" for c in _PAYLOAD_COLUMNS[1:]},
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
_WALK_PLAN = (
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_nestloop = off; SET LOCAL enable_sort = off; "
    "SET LOCAL max_parallel_workers_per_gather = 0"
)


class AuditStoreError(RuntimeError):
    """The trail refused an operation, or is not in the state the operation needs."""


class AuditStoreUnavailable(AuditStoreError):
    """PostgreSQL could not be reached, or the connection broke: retry later. An append
    cut off at its commit may have landed; retrying it is safe (envelope ids dedupe)."""


_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)


@contextlib.contextmanager
def _unavailable_as(action: str) -> Iterator[None]:
    """Connection trouble as :class:`AuditStoreUnavailable`, naming what was being done."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise AuditStoreUnavailable(f"{action}: PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc


# -- migrations and the owner's operations -----------------------------------------------------------


async def migrate(admin_dsn: str, directory: Path | None = None) -> None:
    """Apply the pending migrations (each in its own transaction), idempotently.

    Refuses, naming the file, when a migration changed after it was applied.
    """
    migrations = load_migrations() if directory is None else load_migrations(directory)
    with _unavailable_as("migrate"):
        conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(BOOKKEEPING_SQL)
        rows = await conn.fetch("SELECT version, name, checksum FROM public.schema_migrations")
        for migration in pending(migrations, {r["version"]: (r["name"], r["checksum"]) for r in rows}):
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("RESET ROLE")
                await conn.execute(
                    "INSERT INTO public.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("audit.migration.applied", version=migration.version, name=migration.name)
    finally:
        await conn.close()


async def redact(admin_dsn: str, seq: int, reason: str) -> None:
    """Remove the payload of ``seq``, appending a redaction record; the chain still verifies.

    Owner-only: ``admin_dsn`` must be a superuser or a member of ``l9_owner``.
    """
    with _unavailable_as("redact"):
        conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT l9_audit.redact($1, $2)", seq, reason)
    except asyncpg.PostgresError as exc:
        raise AuditStoreError(f"redaction of seq {seq} refused: {exc}") from exc
    finally:
        await conn.close()
    log.info("audit.redacted", seq=seq, reason=reason)


# -- appending --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Batch:
    """A batch hashed onto the chain: the rows to COPY and where each record landed."""

    entries: list[tuple[Any, ...]]
    payloads: list[tuple[Any, ...]]
    placed: dict[str, tuple[int, bytes]]
    last_seq: int
    last_chain: bytes


def _chain_batch(records: Sequence[AuditRecord], digests: Mapping[str, bytes], head: Any) -> _Batch:
    """Assign seq head+1.. and hash each record onto the chain (pure)."""
    seq, previous, now = head["seq"], head["chain_hash"], head["now"]
    recorded_us = to_micros(now)
    entries, payloads, placed = [], [], {}
    for rec in records:
        seq += 1
        eid, digest = rec.envelope_id, digests[rec.envelope_id]
        header = canonical_header([
            HASH_VERSION, seq, eid, rec.type, rec.source, rec.correlation_id, rec.causation_id,
            to_micros(rec.time), recorded_us, rec.stream, rec.entry_id,
        ])  # fmt: skip
        leaf = leaf_hash(header, digest)
        previous = chain_hash(previous, leaf)
        entries.append((
            seq, eid, rec.type, rec.source, rec.correlation_id, rec.causation_id, rec.time, now,
            rec.stream, rec.entry_id, digest, leaf, previous, HASH_VERSION,
        ))  # fmt: skip
        payloads.append((seq, rec.env, rec.sig, rec.key_id))
        placed[eid] = (seq, previous)
    return _Batch(entries, payloads, placed, seq, previous)


def _outcomes(
    records: Sequence[AuditRecord],
    digests: Sequence[bytes],
    stored: Mapping[str, Any],
    batch: _Batch | None,
    now: datetime,
) -> list[Committed]:
    """One :class:`Committed` per input record, in input order (``digests`` likewise)."""
    out: list[Committed] = []
    first_digest: dict[str, bytes] = {}
    for rec, digest in zip(records, digests, strict=True):
        eid = rec.envelope_id
        if eid in stored:
            row = stored[eid]
            status = AppendStatus.DUPLICATE if row["payload_hash"] == digest else AppendStatus.CONFLICT
            out.append(Committed(rec, row["seq"], row["chain_hash"], row["recorded_at"], status))
            continue
        assert batch is not None
        seq, chained = batch.placed[eid]
        if eid not in first_digest:
            first_digest[eid] = digest
            status = AppendStatus.STORED
        else:
            status = AppendStatus.DUPLICATE if first_digest[eid] == digest else AppendStatus.CONFLICT
        out.append(Committed(rec, seq, chained, now, status))
    return out


def _entry(row: Mapping[str, Any]) -> StoredEntry:
    return StoredEntry(**{name: row[name] for name in StoredEntry.__slots__})


def _checkpoint(row: Mapping[str, Any]) -> Checkpoint:
    return Checkpoint(**{name: row[name] for name in _CHECKPOINT_COLUMNS})


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
            with _unavailable_as("open the audit store"):
                pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
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
        with _unavailable_as("open the audit store"):
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
        if not records:
            return []
        digests = [payload_hash(rec.env, rec.sig, rec.key_id) for rec in records]
        firsts: dict[str, AuditRecord] = {}
        first_digests: dict[str, bytes] = {}
        for rec, digest in zip(records, digests, strict=True):  # the first occurrence wins
            if firsts.setdefault(rec.envelope_id, rec) is rec:
                first_digests[rec.envelope_id] = digest
        started = time.perf_counter()
        with _unavailable_as("append"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK, CHAIN_LOCK_KEY)
                head = await conn.fetchrow(_HEAD)
                stored = {r["envelope_id"]: r for r in await conn.fetch(_STORED, list(firsts))}
                fresh = [rec for eid, rec in firsts.items() if eid not in stored]
                batch = _chain_batch(fresh, first_digests, head) if fresh else None
                if batch is not None:
                    await self._write(conn, batch, head, self.stage_hook)
        outcomes = _outcomes(records, digests, stored, batch, head["now"])
        self._log_append(outcomes, started)
        return outcomes

    @staticmethod
    async def _write(
        conn: asyncpg.Connection, batch: _Batch, head: Any, hook: Callable[[str], None] | None
    ) -> None:
        if hook is not None:
            hook("before_copy")
        try:
            await conn.copy_records_to_table(
                "entries", schema_name="l9_audit", records=batch.entries, columns=_ENTRY_COLUMNS
            )
            await conn.copy_records_to_table(
                "payloads", schema_name="l9_audit", records=batch.payloads, columns=_PAYLOAD_COLUMNS
            )
            moved = await conn.fetch(_MOVE_HEAD, batch.last_seq, batch.last_chain, head["now"], head["seq"])
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
        with _unavailable_as("make a checkpoint"):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK, CHAIN_LOCK_KEY)
                head = await conn.fetchrow(_HEAD)
                last_row = await conn.fetchrow(_LAST_CHECKPOINT)
                last = _checkpoint(last_row) if last_row else None
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
                        _INSERT_CHECKPOINT, *(getattr(checkpoint, c) for c in _CHECKPOINT_COLUMNS)
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
        with _unavailable_as("read the head"):
            row = await self._pool.fetchrow(_HEAD)
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
        with _unavailable_as("read entries"):
            async with self._pool.acquire() as conn:
                head = await conn.fetchval("SELECT seq FROM l9_audit.chain_head")
                end = head if until_seq is None else min(head, until_seq)
                rows = await conn.fetch(
                    _AFTER, after_seq, end, f.type_like(), f.source_like(), f.correlation_id, f.since, limit
                )
        entries = [_entry(r) for r in rows]
        cursor = entries[-1].seq if len(entries) == limit else max(end, after_seq)
        return EntryPage(entries, cursor)

    async def entries_for_correlation(self, correlation_id: str) -> list[StoredEntry]:
        """Every entry of one run (correlation id), by seq, with its payload."""
        with _unavailable_as("read a run's entries"):
            rows = await self._pool.fetch(_FOR_CORRELATION, correlation_id)
        return [_entry(r) for r in rows]

    async def last_checkpoint(self) -> Checkpoint | None:
        with _unavailable_as("read the last checkpoint"):
            row = await self._pool.fetchrow(_LAST_CHECKPOINT)
        return _checkpoint(row) if row else None

    async def checkpoints(self) -> list[Checkpoint]:
        with _unavailable_as("read checkpoints"):
            rows = await self._pool.fetch(_CHECKPOINTS)
        return [_checkpoint(r) for r in rows]

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

        with _unavailable_as("listen for appends"):
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
        with _unavailable_as("verify"):
            conn = await asyncpg.connect(self._dsn)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(_WALK_PLAN)
                walk = _Walk(conn, chunk_size)
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


class _Walk:
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
        in_trail = [_checkpoint(r) for r in await conn.fetch(_CHECKPOINTS)]
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
