"""The Postgres adapter's errors: a connection lost mid-append is "unavailable" (retried in place
by the auditor's batch loop), a refusal is an error (counted towards the dead-letter cap)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from memory.audit import AuditStoreError, AuditStoreUnavailable
from memory.postgres.errors import translated
from memory.postgres.store import PostgresAuditStore


class _Conn:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> None:
        raise self.error


async def _write_failing_with(error: Exception) -> None:
    batch: Any = SimpleNamespace(entries=[], payloads=[], nodes=[], last_seq=3, moves=[(0, 3, b"", b"", 1)])
    await PostgresAuditStore._write(_Conn(error), batch, None, None)


async def _append_failing_with(error: Exception) -> None:
    with translated("append"):
        await _write_failing_with(error)


async def test_postgres_going_away_during_the_copy_is_unavailable_not_a_refusal() -> None:
    with pytest.raises(AuditStoreUnavailable, match="PostgreSQL unavailable"):
        await _append_failing_with(
            asyncpg.AdminShutdownError("terminating connection due to administrator command")
        )


async def test_a_refused_copy_is_an_error_naming_the_chain_and_its_entries() -> None:
    with pytest.raises(AuditStoreError, match=r"append of chain 0 entries 2\.\.3 refused") as caught:
        await _append_failing_with(asyncpg.CheckViolationError("new row violates check constraint"))
    assert not isinstance(caught.value, AuditStoreUnavailable)


async def test_an_envelope_id_stored_meanwhile_by_another_chains_writer_is_left_to_the_retry() -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        await _write_failing_with(asyncpg.UniqueViolationError("duplicate key (envelope_id)"))
