"""The result cache: a reply's fields in Redis under its canonical key, hits and misses counted.

A hit skips the worker pool entirely. Two levels:

* Redis (shared by every worker process): ``sympy:{hash}:{op}:{backend}``,
  expiring after ``L9_SYMPY_CACHE_TTL_S``; a result larger than
  ``L9_SYMPY_CACHE_MAX_BYTES`` is returned but not stored. A lookup is one GET
  of that one key (one slot on a Redis Cluster).
* this process's memory (small results, LRU, same TTL): a repeated request is
  answered without any round trip before the reply.

Hits and misses, of either level, are counted in Redis afterwards
(:meth:`ResultCache.counted`, in the round trip that acknowledges the request), so
the counters are exact but may trail a reply by a moment. ``on_lookup`` hears of each
at once, in this process (the agent's ``l9_sympy_cache_requests_total``, :mod:`.metrics`).

Results are deterministic functions of their key, so a local copy is never stale.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from bus import Keys
from bus.connection import RedisClient, execute_many, first_error

from .keys import cache_stats_key, result_key

#: Results kept in process memory: at most this many, each at most ``LOCAL_MAX_BYTES`` of JSON.
LOCAL_ENTRIES = 1024
LOCAL_MAX_BYTES = 64 * 1024
#: Told of each lookup: ``(operation, hit)``.
OnLookup = Callable[[str, bool], None]


class ResultCache:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        *,
        ttl_s: int,
        max_bytes: int,
        on_lookup: OnLookup | None = None,
    ) -> None:
        self.redis, self.keys, self.ttl_s, self.max_bytes = redis, keys, ttl_s, max_bytes
        self.on_lookup = on_lookup
        self._local: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._uncounted: Counter[str] = Counter()

    async def get(self, digest: str, op: str, backend: str) -> dict[str, Any] | None:
        """The stored fields, or None; the hit or miss is counted at the next flush."""
        key = result_key(self.keys, digest, op, backend)
        local = self._local_get(key)
        if local is not None:
            self._uncounted.update({"hits": 1, f"hits:{op}": 1})
            if self.on_lookup is not None:
                self.on_lookup(op, True)
            return local
        raw = await self.redis.get(key)
        outcome = "misses" if raw is None else "hits"
        self._uncounted.update({outcome: 1, f"{outcome}:{op}": 1})
        if self.on_lookup is not None:
            self.on_lookup(op, raw is not None)
        if raw is None:
            return None
        fields: dict[str, Any] = json.loads(raw)
        if len(raw) <= LOCAL_MAX_BYTES:
            self._local_put(key, fields, await self.redis.ttl(key))
        return fields

    async def put(self, digest: str, op: str, backend: str, fields: dict[str, Any]) -> bool:
        """Store ``fields``; False when they are too large to cache."""
        try:
            data = json.dumps(fields, separators=(",", ":"), allow_nan=False)
        except ValueError:  # a non-finite float: the reply model would not carry it either
            return False
        if len(data) > self.max_bytes:
            return False
        key = result_key(self.keys, digest, op, backend)
        await self.redis.set(key, data, ex=self.ttl_s)
        if len(data) <= LOCAL_MAX_BYTES:
            self._local_put(key, fields, self.ttl_s)
        return True

    async def flush(self) -> None:
        """Write the hits and misses counted since the last flush to the Redis counters."""
        commands = self.counted()
        if commands:
            first_error(await execute_many(self.redis, commands))

    def counted(self) -> list[tuple[str, str, str, int]]:
        """The HINCRBYs that write the hits and misses since the last call (the worker sends
        them in the round trip that acknowledges the request)."""
        counts, self._uncounted = self._uncounted, Counter()
        return [("HINCRBY", cache_stats_key(self.keys), name, n) for name, n in counts.items()]

    async def stats(self) -> dict[str, int]:
        """Every counter, e.g. ``{"hits": 3, "misses": 1, "hits:simplify": 3, ...}``."""
        raw: dict[Any, Any] = await self.redis.hgetall(cache_stats_key(self.keys))
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}

    def _local_get(self, key: str) -> dict[str, Any] | None:
        entry = self._local.get(key)
        if entry is None:
            return None
        expires, fields = entry
        if time.monotonic() >= expires:
            del self._local[key]
            return None
        self._local.move_to_end(key)
        return fields

    def _local_put(self, key: str, fields: dict[str, Any], ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._local[key] = (time.monotonic() + ttl_s, fields)
        self._local.move_to_end(key)
        while len(self._local) > LOCAL_ENTRIES:
            self._local.popitem(last=False)


def summarise(counters: Mapping[str, int]) -> dict[str, Any]:
    """:meth:`ResultCache.stats` counters (``hits``, ``misses:evaluate``, ...) -> per-operation
    rows and a total, each ``{hits, misses, hit_ratio}`` (``hit_ratio`` None before any call)."""
    ops = sorted({k.split(":", 1)[1] for k in counters if ":" in k})
    rows = {op: _row(counters.get(f"hits:{op}", 0), counters.get(f"misses:{op}", 0)) for op in ops}
    return {"operations": rows, "total": _row(counters.get("hits", 0), counters.get("misses", 0))}


def _row(hits: int, misses: int) -> dict[str, Any]:
    return {"hits": hits, "misses": misses, "hit_ratio": hits / (hits + misses) if hits + misses else None}
