"""What the enforcer already did for one handled envelope, so a redelivery repeats nothing new.

Delivery is at-least-once: a crash after publishing but before the ack brings
the same ``l9.generate.completed.v1`` back. Per handled envelope, one Redis
hash (kept a week) holds, for each stage (``decisions``, ``final``), the
envelopes built for it (stored before they are published) and whether they
were published. A redelivery publishes the very same envelopes (same ids, so
the auditor stores each once) only if the stage had not finished, and skips a
finished stage; escalations are made idempotent by their own key
(:meth:`governance.Escalations.escalate`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis

from bus import Keys
from envelope import PacketEnvelope

#: How long the record of a handled envelope is kept (seconds).
LEDGER_TTL_S = 7 * 86_400


def ledger_key(keys: Keys, envelope_id: str) -> str:
    return f"{keys.namespace}:enforcer:{envelope_id}"


class Ledger:
    def __init__(self, redis: aioredis.Redis, key: str, ttl_s: int = LEDGER_TTL_S) -> None:
        self.redis, self.key, self.ttl_s = redis, key, ttl_s

    async def envelopes(
        self, stage: str, build: Callable[[], Sequence[PacketEnvelope]]
    ) -> list[PacketEnvelope]:
        """The envelopes of ``stage``: those stored by an earlier delivery, else ``build()``'s, stored."""
        stored = await self.redis.hget(self.key, stage)
        if stored is None:
            built = [e.model_dump_json() for e in build()]
            if await self.redis.hsetnx(self.key, stage, json.dumps(built)):
                await self.redis.expire(self.key, self.ttl_s)
                return [PacketEnvelope.model_validate_json(e) for e in built]
            stored = await self.redis.hget(self.key, stage)
        return [PacketEnvelope.model_validate_json(e) for e in json.loads(stored or "[]")]

    async def published(self, stage: str) -> bool:
        return bool(await self.redis.hexists(self.key, f"{stage}:published"))

    async def mark_published(self, stage: str) -> None:
        await self.redis.hset(self.key, f"{stage}:published", "1")
        await self.redis.expire(self.key, self.ttl_s)


__all__ = ["LEDGER_TTL_S", "Ledger", "ledger_key"]
