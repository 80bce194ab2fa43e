"""Opening the audit trail from the settings: migrate as admin, then connect as the writer.

The one place that picks the trail's adapter (PostgreSQL); everything else holds
the :class:`~memory.audit.AuditRecorder` it returns.
"""

from __future__ import annotations

from collections.abc import Callable

from l9.devstack import StackEndpoints, resolve_endpoints
from l9.settings import Settings
from memory.audit import AuditRecorder
from memory.postgres import PostgresAuditStore, migrate, quiet_pool_warnings, writer_dsn


async def open_trail(
    settings: Settings,
    endpoints: StackEndpoints | None = None,
    *,
    max_size: int = 4,
    stage_hook: Callable[[str], None] | None = None,
) -> AuditRecorder:
    """The trail of ``DATABASE_URL`` (or the embedded stack), migrations applied first.

    ``stage_hook`` is called at each stage of an append that writes (the auditor's
    ``L9_AUDIT_FAILPOINT`` crash injection)."""
    database_url = (endpoints or resolve_endpoints(settings)).database_url
    await migrate(database_url, chains=settings.audit_chains)
    store = await PostgresAuditStore.open(
        writer_dsn(database_url, settings.database_writer_url),
        checkpoint_dir=settings.checkpoint_dir,
        max_size=max_size,
    )
    store.stage_hook = stage_hook
    return store


def quiet_reconnect_warnings() -> None:
    """Silence the trail store's own reconnect warnings (they carry tracebacks), for a
    command that reports an outage itself (``l9 tail --follow``)."""
    quiet_pool_warnings()
