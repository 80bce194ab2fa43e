"""The driver's errors as the port's (:mod:`memory.audit.port`), translated in one place."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from memory.audit.port import AuditStoreError, AuditStoreUnavailable

#: The driver's errors that mean PostgreSQL is away (retry later), not that it refused.
UNAVAILABLE = (
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
    except UNAVAILABLE as exc:
        raise AuditStoreUnavailable(f"{action}: PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """:func:`unavailable_as`, and any other refusal by PostgreSQL as :class:`AuditStoreError`:
    what the recorder raises, so that its callers never see the driver's errors."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise AuditStoreUnavailable(f"{action}: PostgreSQL unavailable: {type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise AuditStoreError(f"{action}: PostgreSQL refused: {type(exc).__name__}: {exc}") from exc
