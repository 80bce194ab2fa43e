"""Opening the audit trail from the settings: migrate as admin, then connect as the writer."""

from __future__ import annotations

from l9.devstack import StackEndpoints, resolve_endpoints
from l9.settings import Settings
from memory.postgres import PostgresAuditStore, migrate, writer_dsn


async def open_trail(
    settings: Settings, endpoints: StackEndpoints | None = None, *, max_size: int = 4
) -> PostgresAuditStore:
    """The trail of ``DATABASE_URL`` (or the embedded stack), migrations applied first."""
    database_url = (endpoints or resolve_endpoints(settings)).database_url
    await migrate(database_url)
    return await PostgresAuditStore.open(
        writer_dsn(database_url, settings.database_writer_url),
        checkpoint_dir=settings.checkpoint_dir,
        max_size=max_size,
    )
