"""The result cache: a reply's fields in Redis under its canonical key, hits and misses counted.

A hit skips the worker pool entirely. A result larger than
``L9_SYMPY_CACHE_MAX_BYTES`` is returned but not stored. Entries expire after
``L9_SYMPY_CACHE_TTL_S``.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from bus import Keys

from .keys import cache_stats_key, result_key

#: GET and count the hit or miss in one round trip (a cached reply's latency is mostly round trips).
_GET_COUNTED = """
local value = redis.call('GET', KEYS[1])
local outcome = value and 'hits' or 'misses'
redis.call('HINCRBY', KEYS[2], outcome, 1)
redis.call('HINCRBY', KEYS[2], outcome .. ':' .. ARGV[1], 1)
return value
"""


class ResultCache:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, ttl_s: int, max_bytes: int) -> None:
        self.redis, self.keys, self.ttl_s, self.max_bytes = redis, keys, ttl_s, max_bytes
        self._get_counted = redis.register_script(_GET_COUNTED)

    async def get(self, digest: str, op: str, backend: str) -> dict[str, Any] | None:
        """The stored fields, or None; either way the hit or miss is counted (one round trip)."""
        keys = [result_key(self.keys, digest, op, backend), cache_stats_key(self.keys)]
        raw = await self._get_counted(keys=keys, args=[op])
        if raw is None:
            return None
        fields: dict[str, Any] = json.loads(raw)
        return fields

    async def put(self, digest: str, op: str, backend: str, fields: dict[str, Any]) -> bool:
        """Store ``fields``; False when they are too large to cache."""
        try:
            data = json.dumps(fields, separators=(",", ":"), allow_nan=False)
        except ValueError:  # a non-finite float: the reply model would not carry it either
            return False
        if len(data) > self.max_bytes:
            return False
        await self.redis.set(result_key(self.keys, digest, op, backend), data, ex=self.ttl_s)
        return True

    async def stats(self) -> dict[str, int]:
        """Every counter, e.g. ``{"hits": 3, "misses": 1, "hits:simplify": 3, ...}``."""
        raw: dict[Any, Any] = await self.redis.hgetall(cache_stats_key(self.keys))
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}
