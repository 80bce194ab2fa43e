"""Episodic memory of an agent: records appended to a PostgreSQL table, read back by key.

::

    episodes = Episodic(database_url, "fraud", "alerts")     # or an asyncpg pool to share
    await episodes.migrate()                                  # once, at start (idempotent)
    await episodes.append(account, {"risk": 0.93}, envelope.id, at=envelope_time)
    latest = await episodes.latest(account)                   # Episode | None

Each agent has its own schema ``l9_agent_<agent>``, each table there
``(envelope_id text primary key, key text, at timestamptz, record jsonb)`` with an index on
``(key, at desc)`` (:meth:`Episodic.migration_sql`, the generated code's migration). An
append is idempotent: the envelope id is the primary key and a repeat changes nothing (``ON
CONFLICT DO NOTHING``), so a retried handler appends once. The latest record of a key is the
one with the greatest ``at`` (then the greatest envelope id). Agent and table names are
identifiers of a strict pattern, quoted in the SQL; every value travels as a parameter.

The only module of ``agents`` that speaks to PostgreSQL's driver: its connection errors are
:class:`StoreUnavailable` (retry later), a missing table a :class:`RuleError` naming
:meth:`Episodic.migrate`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import structlog

from .errors import RuleError, StoreUnavailable
from .keys import check_envelope_id, check_key, check_name

log = structlog.get_logger("l9.rules.episodic")

SCHEMA_PREFIX = "l9_agent_"
#: A table's name; short enough for its index's name (``<table>_key_at``) to fit PostgreSQL's 63.
TABLE = re.compile(r"^[a-z][a-z0-9_]{0,55}$")
#: Most records :meth:`Episodic.history` returns at once.
HISTORY_MAX = 10_000
#: The driver's errors that mean PostgreSQL is away, not that it refused.
_UNAVAILABLE = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


@dataclass(frozen=True)
class Episode:
    """One record of a key: its envelope, its time (Unix seconds, to the microsecond) and data."""

    envelope_id: str
    key: str
    at: float
    record: dict[str, Any]


class Episodic:
    """The table ``table`` of agent ``agent`` (see the module docstring)."""

    def __init__(self, dsn_or_pool: str | asyncpg.Pool, agent: str, table: str) -> None:
        check_name("agent", agent)
        if not isinstance(table, str) or not TABLE.match(table):
            raise RuleError(
                "episodic table",
                f"{table!r} is not a table name: want a-z, 0-9 and _, from a letter, at most 56",
            )
        self.schema = SCHEMA_PREFIX + agent
        if len(self.schema) > 63:
            raise RuleError(
                "agent", f"{agent!r}: its schema name {self.schema!r} is longer than PostgreSQL's 63"
            )
        self.agent, self.table = agent, table
        self.where = f"episodic {self.schema}.{table}"
        self.qualified = f'"{self.schema}"."{table}"'
        self._dsn = dsn_or_pool if isinstance(dsn_or_pool, str) else None
        self._pool: asyncpg.Pool | None = None if isinstance(dsn_or_pool, str) else dsn_or_pool
        self._opening = anyio.Lock()
        self.log = log.bind(agent=agent, table=table)

    def migration_sql(self) -> str:
        """The DDL of the table: schema, table and index, each ``IF NOT EXISTS``."""
        return (
            f'CREATE SCHEMA IF NOT EXISTS "{self.schema}";\n'
            f"CREATE TABLE IF NOT EXISTS {self.qualified} (\n"
            "    envelope_id text PRIMARY KEY,\n"
            "    key text NOT NULL,\n"
            "    at timestamptz NOT NULL,\n"
            "    record jsonb NOT NULL\n"
            ");\n"
            f'CREATE INDEX IF NOT EXISTS "{self.table}_key_at" ON {self.qualified} (key, at DESC);\n'
        )

    async def migrate(self) -> None:
        """Run :meth:`migration_sql`, in a transaction holding a lock of the schema's name, so
        processes starting together do not race on ``CREATE SCHEMA``."""
        async with self._connection("migrate") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.schema)
            await conn.execute(self.migration_sql())
        self.log.info("episodic.migrated", schema=self.schema)

    async def append(self, key: str, record: Mapping[str, Any], envelope_id: str, at: float) -> bool:
        """Append ``record`` for ``key``; False if the envelope's record is there already."""
        check_key(self.where, key)
        check_envelope_id(self.where, envelope_id)
        data = self._json(record)
        sql = f"INSERT INTO {self.qualified} (envelope_id, key, at, record) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (envelope_id) DO NOTHING"  # noqa: E501
        async with self._connection("append") as conn:
            status = await conn.execute(sql, envelope_id, key, self._time(at), data)
        return bool(status == "INSERT 0 1")

    async def latest(self, key: str) -> Episode | None:
        """The latest record of ``key``, None if it has none."""
        found = await self.history(key, 1)
        return found[0] if found else None

    async def history(self, key: str, limit: int) -> list[Episode]:
        """The ``limit`` latest records of ``key``, latest first."""
        check_key(self.where, key)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HISTORY_MAX:
            raise RuleError(self.where, f"limit must be 1 to {HISTORY_MAX}, got {limit!r}")
        sql = f"SELECT envelope_id, key, at, record FROM {self.qualified} WHERE key = $1 ORDER BY at DESC, envelope_id DESC LIMIT $2"  # noqa: E501
        async with self._connection("read") as conn:
            rows = await conn.fetch(sql, key, limit)
        return [
            Episode(r["envelope_id"], r["key"], r["at"].timestamp(), json.loads(r["record"])) for r in rows
        ]

    async def close(self) -> None:
        """Close the pool this object opened (one it was given is its owner's to close)."""
        if self._dsn is not None and self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- plumbing ------------------------------------------------------------------------------
    @asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[Any]:
        try:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=4)
            async with self._pool.acquire() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"{self.where}: {action}: PostgreSQL unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        except asyncpg.UndefinedTableError:
            raise RuleError(self.where, f"{action}: the table does not exist: run migrate() first") from None
        except asyncpg.InvalidSchemaNameError:
            raise RuleError(self.where, f"{action}: the schema does not exist: run migrate() first") from None

    def _json(self, record: Mapping[str, Any]) -> str:
        if not isinstance(record, Mapping):
            raise RuleError(self.where, f"a record must be a mapping, got {type(record).__name__}")
        try:
            return json.dumps(dict(record), sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RuleError(self.where, f"the record is not JSON: {exc}") from None

    def _time(self, at: float) -> datetime:
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise RuleError(self.where, f"at must be a finite number of seconds, got {at!r:.40}")
        try:
            return datetime.fromtimestamp(at, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise RuleError(self.where, f"at {at!r} is not a time: {exc}") from None
