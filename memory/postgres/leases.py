"""Leases on the trail's chains in PostgreSQL (:mod:`memory.audit.ownership`): session-level
advisory locks held on one connection of the process.

A lease is ``pg_try_advisory_lock(key)`` on a connection opened for the leases alone: held
until released or until the connection ends, which PostgreSQL notices when the process
dies (its socket closes). The member slots held by every process are read from
``pg_locks`` (readable by every role), so no table is written to know who is alive.
"""

from __future__ import annotations

import asyncpg
import structlog

from memory.audit.ownership import MAX_MEMBERS
from memory.audit.port import AuditStoreError

from .errors import translated

log = structlog.get_logger(__name__)

#: Advisory lock keys: the member slots ("L9MEMB" + slot), the chains' leases ("L9LEAS" + chain).
MEMBER_KEY = 0x4C39_4D45_4D42_0000
LEASE_KEY = 0x4C39_4C45_4153_0000
#: Advisory locks on one bigint key show in pg_locks as classid = high and objid = low 32 bits.
_MEMBERS = (
    "SELECT ((classid::int8 << 32) | objid::int8) - $1 AS slot FROM pg_locks "
    "WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND ((classid::int8 << 32) | objid::int8) BETWEEN $1 AND $1 + $2 - 1"
)


class PostgresLeases:
    """One process's leases (``memory.audit.ownership.Leases``) on its own connection."""

    def __init__(self, conn: asyncpg.Connection, member: int) -> None:
        self._conn, self._member = conn, member
        self._held: set[int] = set()

    @classmethod
    async def open(cls, dsn: str) -> PostgresLeases:
        """Connect and take the first free member slot."""
        with translated("take an auditor's member lease"):
            conn = await asyncpg.connect(dsn)
            try:
                for slot in range(MAX_MEMBERS):
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", MEMBER_KEY + slot):
                        log.info("audit.member.joined", member=slot)
                        return cls(conn, slot)
            except BaseException:
                await conn.close()
                raise
        await conn.close()
        raise AuditStoreError(f"all {MAX_MEMBERS} auditor member slots are held: too many auditors")

    @property
    def member(self) -> int:
        return self._member

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    async def members(self) -> set[int]:
        with translated("read the auditors' member leases"):
            rows = await self._conn.fetch(_MEMBERS, MEMBER_KEY, MAX_MEMBERS)
        return {r["slot"] for r in rows} | {self._member}

    async def take(self, chain: int) -> bool:
        if chain in self._held:
            return True
        with translated("take a chain's lease"):
            got = bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", LEASE_KEY + chain))
        if got:
            self._held.add(chain)
        return got

    async def release(self, chain: int) -> None:
        if chain not in self._held:
            return
        with translated("release a chain's lease"):
            await self._conn.fetchval("SELECT pg_advisory_unlock($1)", LEASE_KEY + chain)
        self._held.discard(chain)

    async def close(self) -> None:
        self._held.clear()
        try:
            await self._conn.close(timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            self._conn.terminate()
