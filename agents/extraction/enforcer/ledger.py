"""What the enforcer already did for one handled envelope, so a redelivery repeats nothing new.

Delivery is at-least-once: a crash after publishing but before the ack brings
the same ``l9.generate.completed.v1`` back, and the same envelope published
twice may reach two handlers at once. So one handler at a time works on an
envelope (:meth:`Ledger.exclusively`: a lock that its holder keeps alive while
it works, e.g. while it waits for an escalation, and that lapses within seconds
if the holder dies), and one Redis hash per envelope (kept a week) holds, for
each stage (``decisions``, ``final``), the envelopes built for it (stored
before they are published) and whether they were published. A redelivery
publishes the very same envelopes (same ids, so the auditor stores each once)
only if the stage had not finished, and skips a finished stage; escalations are
made idempotent by their own key (:meth:`governance.Escalations.escalate`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence

import anyio

from bus import Keys
from bus.connection import RedisClient
from envelope import PacketEnvelope

#: How long the record of a handled envelope is kept (seconds).
LEDGER_TTL_S = 7 * 86_400
#: The work lock lapses this long after its holder last renewed it (renewed every third of it).
LOCK_MS = 6_000
#: KEYS: the lock. ARGV: the holder's token, then a TTL (ms) to renew it, or nothing to release it.
OWN_LOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


def ledger_key(keys: Keys, envelope_id: str) -> str:
    return f"{keys.namespace}:enforcer:{envelope_id}"


class Ledger:
    def __init__(self, redis: RedisClient, key: str, ttl_s: int = LEDGER_TTL_S) -> None:
        self.redis, self.key, self.ttl_s = redis, key, ttl_s
        self._own = redis.register_script(OWN_LOCK)

    async def exclusively(self, work: Callable[[], Awaitable[None]], *, poll_s: float = 0.2) -> None:
        """Run ``work`` while holding this envelope's lock (waiting for another holder to finish)."""
        lock, token = f"{self.key}:lock", uuid.uuid4().hex
        while True:
            if await self.redis.set(lock, token, nx=True, px=LOCK_MS):
                break
            await anyio.sleep(poll_s)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, lock, token)
                await work()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise sole(group) from None  # the handler's error as itself, for the retry log and dead letter
        finally:
            with anyio.CancelScope(shield=True):
                await self._own(keys=[lock], args=[token])

    async def _renew(self, lock: str, token: str) -> None:
        while True:
            await anyio.sleep(LOCK_MS / 3000)
            await self._own(keys=[lock], args=[token, LOCK_MS])

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


def sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception inside (nested) task-group errors, or the group when there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


__all__ = ["LEDGER_TTL_S", "Ledger", "ledger_key", "sole"]
