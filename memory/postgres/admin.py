"""The owner's operations on the trail: migrations at start, redaction."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import structlog

from memory.audit.port import AuditStoreError

from .errors import unavailable_as
from .schema import BOOKKEEPING_SQL, MIGRATION_LOCK_KEY, load_migrations, pending

log = structlog.get_logger("memory.postgres.store")


async def migrate(admin_dsn: str, directory: Path | None = None, *, chains: int | None = None) -> None:
    """Apply the pending migrations (each in its own transaction), idempotently.

    Refuses, naming the file, when a migration changed after it was applied. ``chains``:
    the trail's chain count (``memory.audit.chains``), set while the trail is empty; an
    :class:`AuditStoreError` names both counts when the trail already holds entries in
    another.
    """
    migrations = load_migrations() if directory is None else load_migrations(directory)
    with unavailable_as("migrate"):
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
        if chains is not None and directory is None:
            await _set_chains(conn, chains)
    finally:
        await conn.close()


async def _set_chains(conn: asyncpg.Connection, chains: int) -> None:
    have = await conn.fetchval("SELECT chains FROM l9_audit.trail")
    if have == chains:
        return
    try:
        await conn.execute("UPDATE l9_audit.trail SET chains = $1", chains)
    except asyncpg.PostgresError as exc:
        raise AuditStoreError(
            f"L9_AUDIT_CHAINS={chains}, but the trail already holds entries in {have} chain(s) "
            f"and its chain count is fixed: set L9_AUDIT_CHAINS={have} or leave it unset ({exc})"
        ) from exc
    log.info("audit.chains.set", chains=chains, was=have)


async def redact(admin_dsn: str, seq: int, reason: str) -> None:
    """Remove the payload of ``seq``, appending a redaction record; the chain still verifies.

    Owner-only: ``admin_dsn`` must be a superuser or a member of ``l9_owner``.
    """
    with unavailable_as("redact"):
        conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("SELECT l9_audit.redact($1, $2)", seq, reason)
    except asyncpg.PostgresError as exc:
        raise AuditStoreError(f"redaction of seq {seq} refused: {exc}") from exc
    finally:
        await conn.close()
    log.info("audit.redacted", seq=seq, reason=reason)
