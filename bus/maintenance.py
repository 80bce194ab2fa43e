"""A consumer's housekeeping: heartbeat, lease extension, reclaiming.

* heartbeat: an expiring key per consumer name, refreshed every
  ``heartbeat_ms``; a consumer whose key is gone is presumed dead;
* lease: entries held longer than a third of ``lease_ms`` are re-claimed by
  their own consumer (XCLAIM JUSTID), which resets their idle time;
* reclaim: pending entries of dead consumers, and any entry idle past the
  lease, are moved to this consumer (JUSTID); the retry scan then redelivers
  them with the right delivery count.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import structlog
from redis.exceptions import ResponseError

from .connection import RedisClient, as_text
from .errors import TRANSIENT
from .keys import Keys
from .policy import DeliveryPolicy

log = structlog.get_logger("l9.bus.maintenance")


class ConsumerNameTaken(RuntimeError):
    """Another live process holds this consumer name."""


async def claim_consumer_name(
    redis: RedisClient, keys: Keys, base: str, ttl_ms: int, *, instance: str | None = None
) -> str:
    """A stable consumer name: ``base-<instance>`` if given, else the lowest free ``base-<n>``.

    The claim is the heartbeat key itself (SET NX PX), so a name is free again
    once its holder stops beating.
    """
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    if instance is not None:
        name = f"{base}-{instance}"
        if not await redis.set(keys.heartbeat(name), info, nx=True, px=ttl_ms):
            raise ConsumerNameTaken(f"consumer name {name!r} is held by a live process")
        return name
    for n in range(10_000):
        name = f"{base}-{n}"
        if await redis.set(keys.heartbeat(name), info, nx=True, px=ttl_ms):
            return name
    raise ConsumerNameTaken(f"no free consumer name {base}-<n> for n < 10000")


async def hold_consumer_name(redis: RedisClient, keys: Keys, name: str, ttl_ms: int) -> None:
    """Keep the claim on ``name`` alive (until cancelled) while its consumer is not beating yet,
    e.g. during a slow ``on_start``: otherwise the key expires and another process takes the name."""
    while True:
        await anyio.sleep(ttl_ms / 3000)
        try:
            await redis.pexpire(keys.heartbeat(name), ttl_ms)
        except TRANSIENT as exc:
            log.warning("consumer.name_hold_failed", consumer=name, error=str(exc))


class LeaseHolder(Protocol):
    """What maintenance needs of a consumer (the per-entry and the batch delivery loops)."""

    redis: RedisClient
    keys: Keys
    group: str
    consumer: str
    policy: DeliveryPolicy
    in_flight: dict[tuple[str, str], float]

    @property
    def streams(self) -> Sequence[str]: ...


class Maintenance:
    def __init__(self, consumer: LeaseHolder) -> None:
        self.c = consumer
        self.redis = consumer.redis
        self.hb_key = consumer.keys.heartbeat(consumer.consumer)
        self.info = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "group": consumer.group,
                "streams": consumer.streams,
                "since": time.time(),
            }
        )

    async def run(self) -> None:
        policy = self.c.policy
        next_autoclaim = 0.0
        while True:
            try:
                await self.beat()
                await self.extend_leases()
                await self.reclaim_from_dead()
                if time.monotonic() >= next_autoclaim:
                    await self.reclaim_expired_leases()
                    next_autoclaim = time.monotonic() + policy.lease_ms / 2000
            except (ResponseError, *TRANSIENT) as exc:
                log.warning("consumer.maintenance_failed", error=str(exc), consumer=self.c.consumer)
            await anyio.sleep(policy.heartbeat_ms / 1000)

    async def beat(self) -> None:
        await self.redis.set(self.hb_key, self.info, px=self.c.policy.heartbeat_ttl_ms)

    async def release(self) -> None:
        """Stop beating at once, so others may reclaim what is left pending."""
        try:
            await self.redis.delete(self.hb_key)
        except TRANSIENT as exc:
            log.warning("consumer.release_failed", error=str(exc))

    async def extend_leases(self) -> None:
        c, now = self.c, time.monotonic()
        due: dict[str, list[Any]] = {}
        for (stream, entry_id), since in list(c.in_flight.items()):
            if now - since > c.policy.lease_ms / 3000:
                due.setdefault(stream, []).append(entry_id)
        for stream, ids in due.items():
            await self.redis.xclaim(c.keys.stream(stream), c.group, c.consumer, 0, ids, justid=True)
            for entry_id in ids:
                if (stream, entry_id) in c.in_flight:
                    c.in_flight[(stream, entry_id)] = now

    async def reclaim_from_dead(self) -> None:
        c = self.c
        for stream in c.streams:
            key = c.keys.stream(stream)
            others = [
                x for x in await self.redis.xinfo_consumers(key, c.group) if as_text(x["name"]) != c.consumer
            ]
            if not others:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for x in others:
                pipe.exists(c.keys.heartbeat(as_text(x["name"])))
            alive = await pipe.execute()
            for x, live in zip(others, alive, strict=True):
                if not live:
                    await self._take_over(stream, key, x)

    async def _take_over(self, stream: str, key: str, dead: dict[str, Any]) -> None:
        c, name = self.c, as_text(dead["name"])
        if int(dead["pending"]) == 0:
            inactive = int(dead.get("inactive", dead["idle"]))
            if inactive > 2 * c.policy.lease_ms:
                await self.redis.xgroup_delconsumer(key, c.group, name)
            return
        rows = await self.redis.xpending_range(key, c.group, "-", "+", 1000, consumername=name)
        ids: list[Any] = [r["message_id"] for r in rows]
        claimed = await self.redis.xclaim(
            key, c.group, c.consumer, c.policy.heartbeat_ttl_ms, ids, justid=True
        )
        if claimed:
            log.warning(
                "consumer.reclaimed",
                stream=stream,
                dead_consumer=name,
                count=len(claimed),
                consumer=c.consumer,
            )

    async def reclaim_expired_leases(self) -> None:
        """Entries idle past the lease, whoever holds them (a hung handler)."""
        c = self.c
        for stream in c.streams:
            key, cursor = c.keys.stream(stream), "-"
            for _ in range(10):
                rows = await self.redis.xpending_range(key, c.group, cursor, "+", 100, idle=c.policy.lease_ms)
                ids: list[Any] = [r["message_id"] for r in rows if as_text(r["consumer"]) != c.consumer]
                if ids:
                    claimed = await self.redis.xclaim(
                        key, c.group, c.consumer, c.policy.lease_ms, ids, justid=True
                    )
                    log.warning("consumer.lease_expired_reclaimed", stream=stream, count=len(claimed))
                if len(rows) < 100:
                    break
                cursor = "(" + as_text(rows[-1]["message_id"])
