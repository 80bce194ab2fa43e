"""The audit store's errors; connection trouble is translated in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg


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
def unavailable_as(action: str) -> Iterator[None]:
    """Connection trouble as :class:`AuditStoreUnavailable`, naming what was being done."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise AuditStoreUnavailable(f"{action}: PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc
