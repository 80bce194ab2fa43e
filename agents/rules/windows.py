"""Windows of numbers per key in Redis, and their aggregates (count, sum, mean, min, max).

A window keeps, per key (a field of the inputs: an account, a sensor), either the values
of the last ``last_s`` seconds or the last ``last_n`` values::

    window = Window(redis, keys, "fraud", "amounts", last_s=60)
    await window.add(account, amount, envelope.id, at=envelope_time)   # idempotent per envelope id
    if await window.aggregate(account, "count") >= 5: ...

Time is the inputs' own (``at``, Unix seconds: the envelope's time), not the clock of the
process that adds, so a replay of the same inputs gives the same aggregates. The window of
``last_s`` ends at the newest value added to the key: it holds the values with ``at`` in
``(newest - last_s, newest]``; one older than that is dropped when added. The window of
``last_n`` holds the ``last_n`` latest values (by ``at``, then by envelope id).

Each key's values are a sorted set scored by ``at`` whose members are ``"<value> <envelope
id>"``, beside a hash of the envelope ids it holds (``agents.rules.keys``). One Lua script
adds and trims, so racing handlers never double-count: an envelope id the window holds is
not added again (a retried handler adds nothing twice), and a repeat of one trimmed since is
trimmed again at once (it is older than everything kept). Each add sets both keys' expiry:
``last_s`` + :data:`TTL_MARGIN_S` (a key idle that long holds nothing its next value would
keep), or ``ttl_s`` for a window of ``last_n`` (:data:`LAST_N_TTL_S` by default: a key idle
that long is forgotten).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import structlog

from bus import Keys
from bus.connection import RedisClient

from .errors import RuleError
from .keys import check_envelope_id, check_key, check_name, window_keys

log = structlog.get_logger("l9.rules.windows")

Aggregate = Literal["count", "sum", "mean", "min", "max"]
AGGREGATES: tuple[str, ...] = get_args(Aggregate)
#: Kept beyond ``last_s`` before an idle key expires (the inputs' clocks may lag Redis's).
TTL_MARGIN_S = 60.0
#: How long an idle key of a ``last_n`` window lives, unless ``ttl_s`` says otherwise.
LAST_N_TTL_S = 86_400.0

#: KEYS[1]: the entries (sorted set), KEYS[2]: the ids (hash). ARGV: envelope id, member, at,
#: "s" (last seconds) or "n" (last entries), the bound (seconds or entries), TTL (ms).
#: Returns 1 if the value is in the window now, 0 if it was there already or falls outside.
_ADD = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local gone
if ARGV[4] == 's' then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
  local edge = string.format('%.17g', tonumber(newest) - tonumber(ARGV[5]))
  gone = redis.call('ZRANGE', KEYS[1], '-inf', edge, 'BYSCORE')
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', edge)
else
  local keep = tonumber(ARGV[5])
  gone = redis.call('ZRANGE', KEYS[1], 0, -keep - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
end
for _, member in ipairs(gone) do
  redis.call('HDEL', KEYS[2], string.match(member, '^%S+ (.*)$'))
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 1 end
return 0
"""


class Window:
    """One window of agent ``agent`` (see the module docstring): exactly one of ``last_s``
    (seconds) and ``last_n`` (entries)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        agent: str,
        name: str,
        *,
        last_s: float | None = None,
        last_n: int | None = None,
        ttl_s: float | None = None,
    ) -> None:
        self.where = f"window {name}"
        self.agent, self.name = check_name("agent", agent), check_name("window", name)
        self.redis, self.keys = redis, keys
        self.last_s, self.last_n = last_s, last_n
        self.ttl_s = self._ttl(last_s, last_n, ttl_s)
        self._add = redis.register_script(_ADD)
        self.log = log.bind(agent=agent, window=name)

    def _ttl(self, last_s: float | None, last_n: int | None, ttl_s: float | None) -> float:
        if (last_s is None) == (last_n is None):
            raise RuleError(self.where, "state exactly one of last_s (seconds) and last_n (entries)")
        if last_s is not None:
            if isinstance(last_s, bool) or not isinstance(last_s, int | float) or not 0 < last_s < math.inf:
                raise RuleError(self.where, f"last_s must be a number of seconds > 0, got {last_s!r}")
            if ttl_s is not None:
                raise RuleError(self.where, "ttl_s is for a window of last_n: one of last_s expires after it")
            return float(last_s) + TTL_MARGIN_S
        if isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1:
            raise RuleError(self.where, f"last_n must be a whole number of entries >= 1, got {last_n!r}")
        ttl = LAST_N_TTL_S if ttl_s is None else ttl_s
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < math.inf:
            raise RuleError(self.where, f"ttl_s must be a number of seconds > 0, got {ttl_s!r}")
        return float(ttl)

    def keys_of(self, key: str) -> tuple[str, str]:
        """The Redis keys of ``key``'s values: the entries (sorted set) and the ids (hash)."""
        return window_keys(self.keys, self.agent, self.name, check_key(self.where, key))

    async def add(self, key: str, value: float, envelope_id: str, at: float) -> bool:
        """Add ``value`` (of the envelope ``envelope_id``, at time ``at``) to ``key``'s window.

        True if it is in the window now; False if this envelope's value was there already
        (a repeat) or falls outside (older than the window)."""
        number, when = self._number("value", value), self._number("at", at)
        check_envelope_id(self.where, envelope_id)
        bound = self.last_s if self.last_s is not None else self.last_n
        entries, ids = self.keys_of(key)
        args = [envelope_id, f"{number!r} {envelope_id}", repr(when), "s" if self.last_s is not None else "n"]
        added = await self._add(keys=[entries, ids], args=[*args, repr(bound), math.ceil(self.ttl_s * 1000)])
        if not added:
            self.log.debug("window.unchanged", key=key, envelope_id=envelope_id)
        return bool(added)

    async def aggregate(self, key: str, fn: str) -> float | None:
        """``fn`` (count, sum, mean, min, max) of ``key``'s window: 0 for the count and sum of
        an empty window, None for its mean, min and max."""
        return (await self.aggregates(key, [fn]))[fn]

    async def aggregates(self, key: str, fns: Sequence[str]) -> dict[str, float | None]:
        """Several aggregates of ``key``'s window, from one read."""
        for fn in fns:
            if fn not in AGGREGATES:
                raise RuleError(self.where, f"unknown aggregate {fn!r}: one of {', '.join(AGGREGATES)}")
        values = await self.values(key)
        return {fn: _aggregate(fn, values) for fn in fns}

    async def values(self, key: str) -> list[float]:
        """The values in ``key``'s window, oldest first."""
        entries, _ = self.keys_of(key)
        members = await self.redis.zrange(entries, 0, -1)
        return [float(_text(m).partition(" ")[0]) for m in members]

    def _number(self, what: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RuleError(self.where, f"{what} must be a finite number, got {value!r:.40}")
        return float(value)


def _aggregate(fn: str, values: list[float]) -> float | None:
    if fn == "count":
        return float(len(values))
    if fn == "sum":
        return math.fsum(values)
    if not values:
        return None
    if fn == "mean":
        return math.fsum(values) / len(values)
    return min(values) if fn == "min" else max(values)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
