"""The dead-letter stream: entries the group gives up on, with the reason.

Moving an entry there is one MULTI: XADD to ``<stream>:dead``, XACK on the
source stream, and dropping its error note, so an entry is never both
dead-lettered and pending, nor acked without a trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from envelope import utcnow

from .connection import RedisClient
from .keys import Keys

ERROR_NOTE_TTL_MS = 7 * 24 * 3600 * 1000
log = structlog.get_logger("l9.bus.deadletter")


class DeadLetters:
    def __init__(self, redis: RedisClient, keys: Keys, group: str, consumer: str) -> None:
        self.redis, self.keys, self.group, self.consumer = redis, keys, group, consumer

    async def letter(
        self,
        stream: str,
        entry_id: str,
        fields: Mapping[Any, Any],
        reason: str,
        detail: str,
        deliveries: int,
    ) -> None:
        """Move one entry to the dead-letter stream and ack it, atomically."""
        record: dict[Any, Any] = dict(fields)
        record.update(
            {
                "dl_reason": reason,
                "dl_detail": detail,
                "dl_stream": stream,
                "dl_entry_id": entry_id,
                "dl_group": self.group,
                "dl_consumer": self.consumer,
                "dl_deliveries": str(deliveries),
                "dl_time": utcnow().isoformat(),
            }
        )
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.keys.dead(stream), record)
        pipe.xack(self.keys.stream(stream), self.group, entry_id)
        pipe.hdel(self.keys.errors(stream), entry_id)
        await pipe.execute()
        log.error(
            "consumer.dead_lettered",
            stream=stream,
            entry_id=entry_id,
            reason=reason,
            detail=detail,
            deliveries=deliveries,
            group=self.group,
        )

    async def over_cap(self, stream: str, key: str, entry_id: str, deliveries: int) -> None:
        """Dead-letter a pending entry that reached the delivery cap."""
        entries = await self.redis.xrange(key, min=entry_id, max=entry_id)
        last = await self.redis.hget(self.keys.errors(stream), entry_id)
        error = last.decode(errors="replace") if isinstance(last, bytes) else "unknown"
        fields: Mapping[Any, Any] = (entries[0][1] or {}) if entries else {}
        detail = f"delivered {deliveries} time(s) without success; last error: {error}"
        await self.letter(stream, entry_id, fields, "delivery_cap", detail, deliveries)

    async def note_error(self, stream: str, entry_id: str, error: str) -> None:
        """Remember a handler's error so whoever retries the entry can report it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.errors(stream), entry_id, error[:2000])
        pipe.pexpire(self.keys.errors(stream), ERROR_NOTE_TTL_MS)
        await pipe.execute()
