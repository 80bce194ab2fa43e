"""Which auditor writes which chain: leases on the chains, and a rendezvous over the live auditors.

Every auditor process holds a *member* lease (a slot number, 0 to :data:`MAX_MEMBERS` - 1)
for as long as it lives, and a *chain* lease for each chain it writes. A lease belongs to
the process's connection to the trail's store: a process that dies (kill -9 included)
loses them when the store sees its connection go, and nothing else takes them away. Two
processes never hold one chain's lease, so two auditors never write one chain (each
append also takes the chain's lock, so even a writer without the lease cannot fork it).

Who should write chain ``c`` is decided by rendezvous hashing (highest random weight)
with a share per member: chain by chain, the live member with the highest
``SHA-256(c, member)`` among those holding fewer than ``ceil(chains / members)``. Every
auditor computes the same answer from the same members and the chains spread evenly;
when one comes or goes, the chains move that even the shares out again
(:func:`assignment`). An auditor gives up a chain it should no longer write once the
batches it holds of it are committed, and takes the chains it should write as soon as
their leases are free; a chain whose owner died is free
at once. So no chain is left without a writer for longer than it takes the survivors to
notice (their next round).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

__all__ = ["MAX_MEMBERS", "InMemoryLeases", "LeaseBoard", "Leases", "assignment", "owner", "wanted"]

#: Auditor processes that can hold a member lease at once.
MAX_MEMBERS = 256


def _weight(chain: int, member: int) -> bytes:
    return hashlib.sha256(f"l9.audit.owner\x1f{chain}\x1f{member}".encode()).digest()


def assignment(members: Iterable[int], chains: int) -> dict[int, int]:
    """Who should write each of ``chains`` chains, given the live ``members``: chain by chain,
    the member of highest weight among those with fewer than their share (``ceil(chains /
    members)``), so the chains are spread evenly."""
    alive = sorted(set(members))
    if not alive:
        return {}
    share, load, out = -(-chains // len(alive)), dict.fromkeys(alive, 0), {}
    for chain in range(chains):
        for member in sorted(alive, key=lambda m: _weight(chain, m), reverse=True):
            if load[member] < share:
                out[chain] = member
                load[member] += 1
                break
    return out


def owner(chain: int, members: Iterable[int], chains: int) -> int | None:
    """The member that should write ``chain`` of ``chains`` (None: no member is alive)."""
    return assignment(members, chains).get(chain)


def wanted(me: int, members: Iterable[int], chains: int) -> set[int]:
    """The chains of ``chains`` that member ``me`` should write, given the live ``members``."""
    return {c for c, m in assignment({*members, me}, chains).items() if m == me}


class Leases(Protocol):
    """One process's leases on a trail (see the module doc). Every method raises only the
    port's ``AuditStoreError`` / ``AuditStoreUnavailable``."""

    @property
    def member(self) -> int:
        """This process's member slot."""

    async def members(self) -> set[int]:
        """The member slots held now (this process's among them)."""

    async def take(self, chain: int) -> bool:
        """Take chain ``chain``'s lease if it is free (True), or say it is held (False)."""

    async def release(self, chain: int) -> None:
        """Give chain ``chain``'s lease up (a lease not held: nothing happens)."""

    @property
    def held(self) -> frozenset[int]:
        """The chains whose leases this process holds."""

    async def close(self) -> None:
        """Give every lease up (never raises)."""


class LeaseBoard:
    """The leases of one in-memory trail, shared by the processes (tasks) that use it."""

    def __init__(self) -> None:
        self.members: set[int] = set()
        self.chains: dict[int, int] = {}  # chain -> member holding it

    def join(self) -> InMemoryLeases:
        member = next(m for m in range(MAX_MEMBERS) if m not in self.members)
        self.members.add(member)
        return InMemoryLeases(self, member)


class InMemoryLeases:
    """:class:`Leases` on a :class:`LeaseBoard` (``InMemoryAuditRecorder.leases``)."""

    def __init__(self, board: LeaseBoard, member: int) -> None:
        self._board, self._member = board, member
        self._held: set[int] = set()

    @property
    def member(self) -> int:
        return self._member

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    async def members(self) -> set[int]:
        return set(self._board.members)

    async def take(self, chain: int) -> bool:
        holder = self._board.chains.setdefault(chain, self._member)
        if holder == self._member:
            self._held.add(chain)
        return holder == self._member

    async def release(self, chain: int) -> None:
        if chain in self._held:
            self._held.discard(chain)
            del self._board.chains[chain]

    async def close(self) -> None:
        for chain in list(self._held):
            await self.release(chain)
        self._board.members.discard(self._member)
