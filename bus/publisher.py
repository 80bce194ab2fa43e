"""Publishing envelopes: one at a time, or a pipelined batch in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from envelope import PacketEnvelope, Signer, encode

from .connection import execute_many, first_error
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
        replies = await execute_many(self.redis, self.commands(envelopes, stream))
        first_error(replies)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in replies[:-1]]

    def commands(
        self, envelopes: Sequence[PacketEnvelope], stream: str | None = None
    ) -> list[tuple[Any, ...]]:
        """The Redis commands that publish ``envelopes``: one XADD each (signed), then the
        SADD that lists their streams in the streams index (how the auditor finds them)."""
        commands: list[tuple[Any, ...]] = []
        names: set[str] = set()
        for envelope in envelopes:
            name = stream or self.stream_of(envelope)
            names.add(name)
            entry = encode(envelope, self.signer)
            commands.append(("XADD", self.keys.stream(name), "*", *(x for kv in entry.items() for x in kv)))
        commands.append(("SADD", self.keys.streams_index(), *sorted(names)))
        return commands
