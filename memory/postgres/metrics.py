"""SymPy worker metrics in PostgreSQL: a bounded buffer, written in batches beside the work.

    writer = MetricsWriter(writer_dsn(url), admin_dsn=url)
    await writer.start()                 # a background task: migrate, connect, flush
    writer.add(OperationMetric(...))     # never waits, never raises
    await writer.close()                 # a last (bounded) flush, then disconnect

``add`` only appends to memory; the background task writes every
``interval_s`` seconds, or at once when ``batch_rows`` rows wait. A batch is
one transaction per connection: ``COPY`` into a session temporary table, then
``INSERT ... ON CONFLICT (id) DO NOTHING`` into the metrics table, so a batch
written twice (its commit acknowledgement lost) adds nothing the second time.
PostgreSQL away: rows stay buffered and the write is retried with backoff; past
``capacity`` rows the oldest are dropped, counted, and logged as a warning.

Migration ``0002_sympy_metrics.sql`` makes the tables; the writer applies
pending migrations (as ``admin_dsn``) before its first write. The ``l9_writer``
role may only INSERT and SELECT them. :func:`sympy_totals` reads them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from datetime import datetime
from typing import Any, ClassVar

import asyncpg
import structlog

from memory.audit.port import AuditStoreError

from .admin import migrate
from .errors import unavailable_as
from .schema import MigrationError

log = structlog.get_logger("memory.postgres.metrics")
SCHEMA = "l9_metrics"


@dataclass(frozen=True, slots=True)
class OperationMetric:
    """One operation the SymPy worker answered or refused (table ``sympy_metrics``)."""

    TABLE: ClassVar[str] = "sympy_metrics"
    id: str
    request_id: str
    session: str
    op: str
    backend: str
    expr_hash: str | None
    duration_ms: float
    cache_hit: bool
    outcome: str
    error: str | None
    requester: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CodegenMetric:
    """One code generation (``generate_code``, ``compile``) (table ``sympy_codegen_metrics``)."""

    TABLE: ClassVar[str] = "sympy_codegen_metrics"
    id: str
    request_id: str
    op: str
    language: str
    expr_hash: str | None
    duration_ms: float
    success: bool
    cache_hit: bool
    error: str | None
    at: datetime


Metric = OperationMetric | CodegenMetric
ROW_TYPES: tuple[type[OperationMetric], type[CodegenMetric]] = (OperationMetric, CodegenMetric)
#: Failures a flush waits out (the rows stay buffered): PostgreSQL away, or not ready for us yet.
_RETRY = (AuditStoreError, MigrationError, asyncpg.PostgresError, OSError)


def columns(row_type: type[Metric]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(row_type))


def _stage(row_type: type[Metric]) -> str:
    return f"_stage_{row_type.TABLE}"


async def _create_stages(conn: asyncpg.Connection) -> None:
    """Per-connection staging tables (emptied at each commit)."""
    for row_type in ROW_TYPES:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_stage(row_type)} "
            f"(LIKE {SCHEMA}.{row_type.TABLE}) ON COMMIT DELETE ROWS"
        )


class MetricsWriter:
    """Buffers metric rows in memory and writes them in batches from a background task."""

    def __init__(
        self,
        dsn: str,
        *,
        admin_dsn: str | None = None,
        capacity: int = 10_000,
        batch_rows: int = 1_000,
        interval_s: float = 1.0,
        retry_cap_s: float = 10.0,
    ) -> None:
        if capacity < 1 or batch_rows < 1 or interval_s <= 0:
            raise ValueError("capacity and batch_rows must be >= 1 and interval_s > 0")
        self.dsn, self.admin_dsn = dsn, admin_dsn
        self.capacity, self.batch_rows, self.interval_s = capacity, batch_rows, interval_s
        self.retry_cap_s = retry_cap_s
        #: Rows in arrival order, each with its arrival number (so a flush removes exactly what it wrote).
        self._buffer: deque[tuple[int, Metric]] = deque()
        self._numbers = itertools.count()
        self.written = self.dropped = self._reported_drops = 0
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._migrated = admin_dsn is None
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, row: Metric) -> None:
        """Buffer ``row``; when full, the oldest row is dropped (and counted)."""
        if len(self._buffer) >= self.capacity:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append((next(self._numbers), row))
        if len(self._buffer) >= self.batch_rows:
            self._wake.set()

    async def start(self) -> None:
        """Start writing in the background (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-writer")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop the background task, write what is buffered within ``timeout_s``, disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._report_drops()
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except (*_RETRY, TimeoutError) as exc:
            log.warning("metrics.unwritten_at_close", rows=self.pending, error=str(exc))
        await self._disconnect()

    async def flush(self) -> int:
        """Write the rows buffered now (not those arriving meanwhile: they wait for the next
        flush), in batches; the rows newly stored. Raises (rows kept) on failure."""
        stored, until = 0, self._buffer[-1][0] if self._buffer else -1
        while self._buffer and self._buffer[0][0] <= until:
            batch = [item for item in itertools.islice(self._buffer, self.batch_rows) if item[0] <= until]
            written = await self._write([row for _, row in batch])
            stored, self.written = stored + written, self.written + written
            last = batch[-1][0]
            while self._buffer and self._buffer[0][0] <= last:
                self._buffer.popleft()
        return stored

    # -- the background task ---------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await asyncio.sleep(backoff)  # PostgreSQL away: a full batch does not wake us early
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            self._report_drops()
            try:
                stored = await self.flush()
            except _RETRY as exc:
                await self._disconnect()
                backoff = min(self.retry_cap_s, max(backoff * 2, self.interval_s))
                log.warning("metrics.write_failed", error=str(exc), buffered=self.pending, retry_in_s=backoff)
                continue
            backoff = 0.0
            if stored:
                log.debug("metrics.written", rows=stored, total=self.written)

    def _report_drops(self) -> None:
        new = self.dropped - self._reported_drops
        if new:
            self._reported_drops = self.dropped
            log.warning(
                "metrics.rows_dropped", dropped=new, total_dropped=self.dropped, capacity=self.capacity
            )

    # -- PostgreSQL ------------------------------------------------------------------------------
    async def _connect(self) -> asyncpg.Pool:
        if not self._migrated and self.admin_dsn is not None:
            await migrate(self.admin_dsn)
            self._migrated = True
        if self._pool is None:
            with unavailable_as("connect the metrics writer"):
                self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=1, init=_create_stages)
        return self._pool

    async def _disconnect(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 2.0)
            except (TimeoutError, *_RETRY):
                pool.terminate()

    async def _write(self, rows: Sequence[Metric]) -> int:
        """One transaction: each table's rows COPYed to its stage, then inserted unless stored."""
        pool = await self._connect()
        stored = 0
        with unavailable_as("write metrics"):
            async with pool.acquire() as conn, conn.transaction():
                for row_type in ROW_TYPES:
                    mine = [astuple(r) for r in rows if type(r) is row_type]
                    if mine:
                        stored += await _insert(conn, row_type, mine)
        return stored


async def _insert(conn: asyncpg.Connection, row_type: type[Metric], records: list[tuple[Any, ...]]) -> int:
    names = columns(row_type)
    listed = ", ".join(names)
    await conn.copy_records_to_table(_stage(row_type), records=records, columns=names)
    status = await conn.execute(
        f"INSERT INTO {SCHEMA}.{row_type.TABLE} ({listed}) SELECT {listed} FROM {_stage(row_type)} "
        "ON CONFLICT (id) DO NOTHING"
    )
    return int(status.rsplit(" ", 1)[-1])


# -- reading -----------------------------------------------------------------------------------------
_TOTALS = f"""
SELECT op, count(*) AS count, count(*) FILTER (WHERE outcome = 'error') AS errors,
       count(*) FILTER (WHERE cache_hit) AS hits,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95_ms,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY duration_ms) AS p99_ms,
       min(at) AS first_at, max(at) AS last_at
FROM {SCHEMA}.sympy_metrics WHERE at >= $1 GROUP BY ROLLUP (op) ORDER BY op NULLS LAST
"""
_CODEGEN = f"""
SELECT language, count(*) AS count, count(*) FILTER (WHERE success) AS succeeded,
       count(*) FILTER (WHERE cache_hit) AS hits,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50_ms,
       max(duration_ms) AS max_ms
FROM {SCHEMA}.sympy_codegen_metrics WHERE at >= $1 GROUP BY language ORDER BY language
"""


async def sympy_totals(dsn: str, since: datetime) -> dict[str, Any]:
    """Per operation (and in total) and per code language, every row from ``since`` on."""
    with unavailable_as("read the SymPy metrics"):
        conn = await asyncpg.connect(dsn)
    try:
        with unavailable_as("read the SymPy metrics"):
            ops = await conn.fetch(_TOTALS, since)
            codegen = await conn.fetch(_CODEGEN, since)
    finally:
        await conn.close()
    rows = {r["op"]: _op_row(r) for r in ops if r["op"] is not None}
    total = next((_op_row(r) for r in ops if r["op"] is None), _op_row(None))
    languages = {
        r["language"]: {k: _plain(r[k]) for k in ("count", "succeeded", "hits", "p50_ms", "max_ms")}
        for r in codegen
    }
    return {"since": since.isoformat(), "operations": rows, "total": total, "codegen": languages}


def _op_row(record: Any) -> dict[str, Any]:
    names = ("p50_ms", "p95_ms", "p99_ms", "first_at", "last_at")
    count, errors, hits = (int(record[k]) if record is not None else 0 for k in ("count", "errors", "hits"))
    row: dict[str, Any] = {"count": count, "errors": errors, "hits": hits}
    row.update({k: _plain(record[k]) if record is not None else None for k in names})
    row["hit_ratio"] = round(hits / (count - errors), 4) if count > errors else None
    return row


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return round(value, 3) if isinstance(value, float) else value
