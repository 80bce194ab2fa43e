"""Publishing envelopes: one at a time, or a pipelined batch in one round trip."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from envelope import PacketEnvelope, Signer, encode

from .keys import Keys
from .topology import DEFAULT_TOPOLOGY, Topology


class Publisher:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        signer: Signer | None,
        topology: Topology = DEFAULT_TOPOLOGY,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.signer = signer
        self.topology = topology

    def stream_of(self, envelope: PacketEnvelope) -> str:
        return self.topology.stream_for(envelope.type)

    async def publish(self, envelope: PacketEnvelope, stream: str | None = None) -> str:
        """Append ``envelope`` to its stream; returns the stream entry id."""
        ids = await self.publish_many([envelope], stream)
        return ids[0]

    async def publish_many(self, envelopes: Sequence[PacketEnvelope], stream: str | None = None) -> list[str]:
        """Append a batch in one pipelined round trip; entry ids in input order."""
        if not envelopes:
            return []
        pipe = self.redis.pipeline(transaction=False)
        names: set[str] = set()
        for envelope in envelopes:
            name = stream or self.stream_of(envelope)
            names.add(name)
            pipe.xadd(self.keys.stream(name), encode(envelope, self.signer))  # type: ignore[arg-type]
        pipe.sadd(self.keys.streams_index(), *names)
        replies = await pipe.execute()
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies[:-1]]
