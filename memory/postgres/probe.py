"""Is PostgreSQL there? One ``SELECT 1``, for the extraction baseline's backend check."""

from __future__ import annotations

import asyncpg


async def probe(dsn: str, *, timeout_s: float = 5.0) -> None:
    """Connect to ``dsn`` and run ``SELECT 1``; raises the driver's own error when PostgreSQL
    is not there (its name and message are what the baseline records, as for Redis)."""
    conn = await asyncpg.connect(dsn, timeout=timeout_s)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
