"""Rate limits: at most ``limit`` requests per ``window_s``, per requester or per agent.

Enforced by one Lua script in Redis, so every process of every agent shares
the same counts and two racing processes can never both take the last slot.
Each limit is a sliding-window log (a sorted set of admission times, by the
Redis server clock): a request is admitted only if every limit that matches
its type has room, and then it is recorded in all of them, in one step. A
refused request is told which limit refused it and when to retry:

    limiter = RateLimiter(redis, keys, engine.rate_limits)
    decision = await limiter.check(Request.from_envelope(envelope))
    if decision.denied: ...  # decision.reason: "rate limited by ... retry after 12 s"
    await limiter.admit(request)  # the same, raising RateLimited
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Sequence
from typing import Any

import structlog

from bus import Keys
from bus.connection import RedisClient

from ._config import RateLimitSpec
from ._decision import Decision, Finding, Outcome
from ._rules import glob_regex
from ._subjects import Request
from .metrics import count_decision

log = structlog.get_logger("l9.governance.ratelimit")

#: KEYS: one sorted set per limit. ARGV[1]: the request's member (its envelope id, else unique),
#: then (limit, window_ms) per key. A member already admitted in the window is admitted again
#: without spending a slot (a redelivered envelope). Returns {admitted (0/1), retry_after_ms,
#: index of the refusing key (1-based, 0 if none), now_ms}.
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait, refusing = 0, 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - tonumber(ARGV[2 * i + 1]))
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return {1, 0, 0, now} end
for i, key in ipairs(KEYS) do
  local limit, window = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local n = redis.call('ZCARD', key)
  if n >= limit then
    local edge = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local w = tonumber(edge[2]) + window - now
    if w > wait then wait, refusing = w, i end
  end
end
if refusing > 0 then return {0, wait, refusing, now} end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return {1, 0, 0, now}
"""
_CACHE_MAX = 4096


class RateLimited(Exception):
    """A request over a rate limit; ``retry_after_s`` says when one will be admitted."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.retry_after_s = decision.retry_after_s or 0.0
        super().__init__(decision.reason)


def subject_of(spec: RateLimitSpec, request: Request) -> str:
    """Whose budget a request spends: its requester's or its agent's."""
    who = request.requester if spec.per == "requester" else request.agent
    return who or "unknown"


class RateLimiter:
    def __init__(self, redis: RedisClient, keys: Keys, limits: Sequence[RateLimitSpec]) -> None:
        self.redis, self.keys = redis, keys
        self.limits = tuple(limits)
        self._patterns: list[tuple[RateLimitSpec, re.Pattern[str]]] = [
            (s, glob_regex(s.types)) for s in limits
        ]
        self._by_type: dict[str, tuple[RateLimitSpec, ...]] = {}
        self._script = redis.register_script(SLIDING_WINDOW)
        #: Redis server time (ms) of the last admission or refusal.
        self.last_now_ms = 0

    def limits_for(self, type_: str) -> tuple[RateLimitSpec, ...]:
        found = self._by_type.get(type_)
        if found is None:
            if len(self._by_type) >= _CACHE_MAX:
                self._by_type.clear()
            found = self._by_type[type_] = tuple(s for s, p in self._patterns if p.fullmatch(type_))
        return found

    async def check(self, request: Request) -> Decision:
        """Admit ``request`` (spending one slot of every matching limit) or refuse it, atomically.

        A request with an ``envelope_id`` already admitted within the window is admitted again
        without spending a slot, so a redelivered envelope is not counted twice. A decision under
        a limit is counted (``l9_governance_decisions_total``); a type no limit matches is not."""
        limits = self.limits_for(request.type)
        refs = tuple(s.id for s in limits)
        if not limits:
            return Decision(
                outcome=Outcome.ALLOW, subject=request.describe(), reason="allowed: no rate limit"
            )
        keys = [self.keys.rate_limit(s.id, subject_of(s, request)) for s in limits]
        args: list[Any] = [request.envelope_id or uuid.uuid4().hex]
        for spec in limits:
            args += [spec.limit, max(1, round(spec.window_s * 1000))]
        admitted, wait_ms, refusing, now_ms = await self._script(keys=keys, args=args)
        self.last_now_ms = int(now_ms)
        if admitted:
            decision = Decision(
                outcome=Outcome.ALLOW,
                subject=request.describe(),
                reason="allowed: within rate limits",
                policies=refs,
            )
        else:
            decision = self._refusal(request, limits[int(refusing) - 1], int(wait_ms), refs)
        count_decision(decision)
        return decision

    def _refusal(
        self, request: Request, spec: RateLimitSpec, wait_ms: int, refs: tuple[str, ...]
    ) -> Decision:
        who = subject_of(spec, request)
        what = (
            f"rate limited by {spec.id} ({spec.limit} per {spec.window_s:g} s per {spec.per} {who!r}), "
            f"retry after {math.ceil(wait_ms / 1000)} s"
        )
        log.debug(
            "governance.rate_limited", policy=spec.id, subject=who, type=request.type, retry_after_ms=wait_ms
        )
        return Decision(
            outcome=Outcome.DENY,
            subject=request.describe(),
            reason=what,
            policy=spec.id,
            policies=refs,
            findings=(Finding(what=what, policy=spec.id, outcome=Outcome.DENY),),
            retry_after_s=wait_ms / 1000,
        )

    async def admit(self, request: Request) -> Decision:
        """Like ``check``, raising RateLimited when refused."""
        decision = await self.check(request)
        if decision.denied:
            raise RateLimited(decision)
        return decision
