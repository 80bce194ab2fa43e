"""The chains this auditor writes, kept in step with the other auditors (memory.audit.ownership).

An auditor reads the streams of the chains whose leases it holds, and only those: so the
auditors of a deployment split the trail by chain, each commits under its own chains'
locks, and they commit in parallel. Every ``interval_s`` the :class:`ChainKeeper` reads who
is alive and which chains this auditor should write (rendezvous hashing), gives up the
chains it should no longer write and takes the ones it should (as soon as their leases
are free). Giving a chain up: its streams are read no more, the entries of them in hand are
committed and acked, then its lease goes; what the group still holds pending of them for
this consumer is claimed by the new writer once its lease (``L9_LEASE_MS``) lapsed, and
dedupes in the trail by envelope id. A chain whose writer died is free at once.
"""

from __future__ import annotations

from collections.abc import Iterable

import anyio
import structlog

from bus import BatchConsumer
from bus.keys import PARTITIONS
from memory.audit import AuditStoreUnavailable
from memory.audit.chains import Layout
from memory.audit.ownership import Leases, wanted

__all__ = ["INTERVAL_S", "ChainKeeper"]

log = structlog.get_logger("l9.auditor")

#: How often the keeper looks at who is alive.
INTERVAL_S = 1.0
#: How often a chain being given up looks whether its entries in hand were acked.
DRAIN_POLL_S = 0.05


class ChainKeeper:
    """This auditor's chains: the stream share its :class:`~agents.auditor.agent.Auditor`
    reads (``partitions()`` / ``owns()``, as a ``bus.PartitionSet``)."""

    def __init__(
        self,
        leases: Leases,
        layout: Layout,
        *,
        interval_s: float = INTERVAL_S,
        drain_s: float = 30.0,
    ) -> None:
        """``drain_s``: the longest a chain given up waits for its entries in hand (then its
        lease goes anyway: what is left is claimed by the next writer and dedupes)."""
        self.leases, self.layout = leases, layout
        self.interval_s, self.drain_s = interval_s, drain_s
        self.consumer: BatchConsumer | None = None
        self._owned: frozenset[int] = frozenset()
        self._partitions: list[int] = []
        self.changed = anyio.Event()

    # -- the share, as the auditor reads it ----------------------------------------------------
    @property
    def owned(self) -> frozenset[int]:
        return self._owned

    def partitions(self) -> list[int]:
        """The bus partitions of the chains held."""
        return self._partitions

    def owns(self, stream: str) -> bool:
        return self.layout.chain_of(stream) in self._owned

    def _set(self, owned: Iterable[int]) -> None:
        self._owned = frozenset(owned)
        n = self.layout.chains
        self._partitions = [p for p in range(PARTITIONS) if p % n in self._owned]
        self.changed.set()
        self.changed = anyio.Event()

    # -- keeping it --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Rebalance every ``interval_s`` until cancelled; the store being away is waited out."""
        while True:
            try:
                await self.rebalance()
            except AuditStoreUnavailable as exc:
                log.warning("auditor.chains.unavailable", error=str(exc))
            await anyio.sleep(self.interval_s)

    async def rebalance(self) -> None:
        """Give up the chains this auditor should no longer write, take those it should."""
        members = await self.leases.members()
        want = wanted(self.leases.member, members, self.layout.chains)
        for chain in sorted(self._owned - want):
            await self._give_up(chain)
        taken = [c for c in sorted(want - self._owned) if await self.leases.take(c)]
        if taken:
            self._set(self._owned | set(taken))
            log.info("auditor.chains.taken", chains=taken, owned=sorted(self._owned), members=sorted(members))

    async def _give_up(self, chain: int) -> None:
        self._set(self._owned - {chain})
        consumer = self.consumer
        if consumer is not None:
            consumer.retire_streams([s for s in list(consumer.streams) if self.layout.chain_of(s) == chain])
            # a read under way when the streams were retired may still bring entries of them
            await anyio.sleep(min(self.interval_s, self.drain_s))
            for _ in range(max(1, int(self.drain_s / DRAIN_POLL_S))):
                if not self._in_hand(consumer, chain):
                    break
                await anyio.sleep(DRAIN_POLL_S)
        await self.leases.release(chain)
        log.info("auditor.chains.given_up", chain=chain, owned=sorted(self._owned))

    def _in_hand(self, consumer: BatchConsumer, chain: int) -> bool:
        chain_of = self.layout.chain_of
        return any(chain_of(stream) == chain for stream, _ in list(consumer.in_flight))

    async def close(self) -> None:
        """Give every lease up (at the auditor's stop, once its batches are acked)."""
        self._set(())
        with anyio.CancelScope(shield=True):
            await self.leases.close()
