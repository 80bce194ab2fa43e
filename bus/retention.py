"""Retention: trim only what every consumer group has acknowledged.

The safe boundary of a stream is, over all its groups, the smallest of: the
oldest pending entry, or the entry after the last one delivered. Nothing at
or after it is touched. On Redis >= 8.2 the trim also carries ``ACKED``, so
the server itself refuses to drop an entry some group still references.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

import structlog
from redis.exceptions import ResponseError

from .connection import RedisClient, as_text
from .errors import is_no_such_key
from .index import forget_stream, known_streams
from .keys import RPC_PREFIX, Keys

log = structlog.get_logger("l9.bus.retention")


def _successor(entry_id: str) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def _older(a: str, b: str) -> str:
    pa, pb = a.split("-"), b.split("-")
    return a if (int(pa[0]), int(pa[1])) <= (int(pb[0]), int(pb[1])) else b


async def safe_trim_boundary(redis: RedisClient, key: str) -> str | None:
    """The oldest entry id some group still needs, or None if no group reads ``key``."""
    groups = await redis.xinfo_groups(key)
    if not groups:
        return None
    boundary: str | None = None
    for group in groups:
        name = as_text(group["name"])
        if int(group["pending"]):
            summary = await redis.xpending(key, name)
            needed = as_text(summary["min"])
        else:
            needed = _successor(as_text(group["last-delivered-id"]))
        boundary = needed if boundary is None else _older(boundary, needed)
    return boundary


async def trim_acknowledged(redis: RedisClient, key: str, *, max_age_s: float | None = None) -> int:
    """Remove acknowledged entries (older than ``max_age_s`` if given); returns how many."""
    boundary = await safe_trim_boundary(redis, key)
    if boundary is None:
        return 0
    if max_age_s is not None:
        age_boundary = f"{int((time.time() - max_age_s) * 1000)}-0"
        boundary = _older(boundary, age_boundary)
    args: list[Any] = ["XTRIM", key, "MINID", boundary]
    if await _supports_acked(redis):
        args.append("ACKED")
    removed = int(await redis.execute_command(*args))
    if removed:
        log.info("retention.trimmed", stream=key, removed=removed, boundary=boundary)
    return removed


async def fully_consumed(redis: RedisClient, key: str, *, without_groups: bool = True) -> bool:
    """Whether every group of ``key`` has read and acked its last entry; a missing stream is
    consumed, one without any group is ``without_groups``."""
    try:
        info = await redis.xinfo_stream(key)
    except ResponseError as exc:
        if is_no_such_key(exc):
            return True
        raise
    groups = await redis.xinfo_groups(key)
    if not groups:
        return without_groups
    last = as_text(info["last-generated-id"])
    return all(int(g["pending"]) == 0 and as_text(g["last-delivered-id"]) == last for g in groups)


async def drop_finished_reply_streams(redis: RedisClient, keys: Keys, *, idle_s: float) -> list[str]:
    """Delete the RPC reply streams that every group consumed and nobody wrote to for
    ``idle_s`` seconds, and forget them in the streams index. Returns their names."""
    dropped = []
    for name in sorted(await known_streams(redis, keys)):
        if not name.startswith(RPC_PREFIX):
            continue
        key = keys.stream(name)
        try:
            info = await redis.xinfo_stream(key)
        except ResponseError as exc:
            if not is_no_such_key(exc):
                raise
            await forget_stream(redis, keys, name)
            continue
        last_ms = int(as_text(info["last-generated-id"]).partition("-")[0])
        if time.time() * 1000 - last_ms < idle_s * 1000 or not await fully_consumed(redis, key):
            continue
        await redis.delete(key)
        await forget_stream(redis, keys, name)
        dropped.append(name)
    if dropped:
        log.info("retention.reply_streams_dropped", count=len(dropped))
    return dropped


_ACKED_SUPPORT: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


async def _supports_acked(redis: RedisClient) -> bool:
    """Whether XTRIM takes ACKED (Redis 8.2+): asked once per client; a cluster answers for
    every primary, and the oldest of them decides (a rolling upgrade is not over)."""
    if redis not in _ACKED_SUPPORT:
        info: dict[str, Any] = await redis.info("server")
        answers = [info] if "redis_version" in info else [i for i in info.values() if isinstance(i, dict)]
        versions = [tuple(int(p) for p in str(i["redis_version"]).split(".")[:2]) for i in answers]
        _ACKED_SUPPORT[redis] = bool(versions) and min(versions) >= (8, 2)
    return _ACKED_SUPPORT[redis]
