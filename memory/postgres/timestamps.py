"""``timestamptz`` on the audit store's connections: integer microseconds on the way in.

asyncpg encodes a ``datetime`` through a handful of Python-level calls (compare with
infinity, ``astimezone``, subtract, read ``days``/``seconds``/``microseconds``), which
made the two timestamps of an ``entries`` row cost more client CPU than its twelve
other columns together. On the store's connections a ``timestamptz`` parameter may
therefore also be given as :func:`pg_time` of integer Unix microseconds, which goes
to the wire as it is; a ``datetime`` is still accepted, and values read come back as
the usual aware UTC ``datetime``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from memory.chain import from_micros, to_micros

#: PostgreSQL's epoch (2000-01-01 UTC) in Unix microseconds.
PG_EPOCH_US = to_micros(datetime(2000, 1, 1, tzinfo=UTC))

PgTime = tuple[int]
"""A ``timestamptz`` as asyncpg's tuple format has it: microseconds since PostgreSQL's epoch."""


def pg_time(unix_us: int) -> PgTime:
    return (unix_us - PG_EPOCH_US,)


def _encode(value: PgTime | datetime) -> PgTime:
    if isinstance(value, datetime):
        return (to_micros(value) - PG_EPOCH_US,)
    return value


def _decode(value: PgTime) -> datetime:
    return from_micros(value[0] + PG_EPOCH_US)


async def timestamps_as_micros(conn: Any) -> None:
    """Pool ``init`` hook: the codec above on one connection."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode, decoder=_decode, format="tuple"
    )
