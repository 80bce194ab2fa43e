"""Joins: wait for one input of each of several types with the same key, within a window.

::

    join = Join(redis, keys, "shipping", "order_ready", ["l9.order.placed.v1", "l9.payment.settled.v1"], 300)
    joined = await join.offer(order_id, envelope.type, envelope.data, envelope.id, at=envelope_time)
    if joined: ...            # every type arrived: joined.parts by type, emit the fused result
    for gone in await join.expired(time.time()): ...   # windows closed incomplete, each once

A key's join opens with its first part, at that part's time ``at``, and its deadline is
``at + window_s``. A part of another type with ``at`` up to the deadline (and not more than
``window_s`` before the first) is kept; the first part of each type is kept, a second of the
same type is not. When every type is there the join is *complete*: :meth:`Join.offer` returns
the parts to the call that completed it, and again to a repeat of that same envelope (a
handler retried after its emit, whose emits carry the same derived ids), and to no one else:
a later part (another envelope) for the closed join is a late repeat and returns None. A part
timed after the deadline of the open join is *late*: None, and the join is left to close
incomplete. :meth:`Join.expired` (called periodically by any number of processes) claims the
open joins whose deadline is before ``now``, each exactly once (the claim and the removal from
the open set are one script: of several callers, one gets it), and returns what arrived and
what is missing: the outcome of a window that closed incomplete.

Storage (``agents.rules.keys``): one hash per key (state, deadline, the parts as JSON), and
a sorted set of the open joins' keys by deadline, in one hash slot per join. A closed join's
hash stays ``closed_ttl_s`` (an hour by default, like the bus's window of handled ids) so
late repeats find it closed; then it expires and the key may open a new join. An open
join's hash expires ``window_s + closed_ttl_s`` after it opened: one that no process claimed
by then (no :meth:`Join.expired` ran) is gone, and its claim is logged as ``join.evicted``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from bus import Keys
from bus.connection import RedisClient

from .errors import RuleError
from .keys import check_envelope_id, check_key, check_name, join_key, join_open_key

log = structlog.get_logger("l9.rules.joins")

#: How long a closed join refuses late repeats, unless ``closed_ttl_s`` says otherwise.
CLOSED_TTL_S = 3600.0
#: Open joins claimed per call of :meth:`Join.expired`, unless ``limit`` says otherwise.
CLAIM_BATCH = 100
_PART = "part:"

#: KEYS[1]: the open joins (sorted set key -> deadline), KEYS[2]: this key's join (hash).
#: ARGV: key, type, part (JSON), envelope id, at, deadline if it opens, window (s), number of
#: types, TTL when opened (ms), TTL once closed (ms).
#: Returns {outcome} or {"complete", HGETALL of the join}.
_OFFER = """
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'complete' then
  if redis.call('HGET', KEYS[2], 'closer') == ARGV[4] then
    return {'complete', redis.call('HGETALL', KEYS[2])}
  end
  return {'closed'}
end
if state then
  if state ~= 'open' then return {'closed'} end
  local at, opened = tonumber(ARGV[5]), tonumber(redis.call('HGET', KEYS[2], 'opened'))
  if at > tonumber(redis.call('HGET', KEYS[2], 'deadline')) or at < opened - tonumber(ARGV[7]) then
    return {'late'}
  end
else
  redis.call('HSET', KEYS[2], 'state', 'open', 'opened', ARGV[5], 'deadline', ARGV[6], 'have', 0)
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
end
if redis.call('HSETNX', KEYS[2], 'part:' .. ARGV[2], ARGV[3]) == 0 then return {'held'} end
if redis.call('HINCRBY', KEYS[2], 'have', 1) < tonumber(ARGV[8]) then return {'open'} end
redis.call('HSET', KEYS[2], 'state', 'complete', 'closer', ARGV[4])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[10])
return {'complete', redis.call('HGETALL', KEYS[2])}
"""

#: KEYS[1]: the open joins, KEYS[2]: the key's join. ARGV: key, now, TTL once closed (ms).
#: Returns nil (not due, or claimed by another caller), {} (due, but its hash expired), or the
#: join's HGETALL, now marked incomplete.
_CLAIM = """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) >= tonumber(ARGV[2]) then return false end
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], 'state') ~= 'open' then return {} end
redis.call('HSET', KEYS[2], 'state', 'incomplete')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('HGETALL', KEYS[2])
"""


@dataclass(frozen=True)
class Part:
    """One input a join kept: its type, envelope, time and data."""

    type: str
    envelope_id: str
    at: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Joined:
    """A complete join: one part per type (in the join's order of types)."""

    key: str
    parts: dict[str, Part]
    opened_at: float
    deadline: float
    #: The envelope whose part completed it.
    closed_by: str


@dataclass(frozen=True)
class Incomplete:
    """A join whose window closed before every type arrived."""

    key: str
    parts: dict[str, Part]
    missing: tuple[str, ...]
    opened_at: float
    deadline: float


class Join:
    """One join of agent ``agent`` (see the module docstring)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        agent: str,
        name: str,
        types: Sequence[str],
        window_s: float,
        *,
        closed_ttl_s: float = CLOSED_TTL_S,
    ) -> None:
        self.where = f"join {name}"
        self.agent, self.name = check_name("agent", agent), check_name("join", name)
        self.redis, self.keys = redis, keys
        self.types = self._types(types)
        self.window_s = self._seconds("window_s", window_s)
        self.closed_ttl_s = self._seconds("closed_ttl_s", closed_ttl_s)
        self.open_key = join_open_key(keys, agent, name)
        self._offer = redis.register_script(_OFFER)
        self._claim = redis.register_script(_CLAIM)
        self.log = log.bind(agent=agent, join=name)

    def _types(self, types: Sequence[str]) -> tuple[str, ...]:
        if isinstance(types, str) or len(types) < 2 or len(set(types)) != len(types):
            raise RuleError(
                self.where, f"types must be two or more different envelope types, got {types!r:.200}"
            )
        for type_ in types:
            if not isinstance(type_, str) or not 0 < len(type_) <= 200:
                raise RuleError(self.where, f"type {type_!r:.60}: want 1 to 200 characters")
        return tuple(types)

    def _seconds(self, what: str, value: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise RuleError(self.where, f"{what} must be a number of seconds > 0, got {value!r}")
        return float(value)

    def key_of(self, key: str) -> str:
        """The Redis hash of ``key``'s join."""
        return join_key(self.keys, self.agent, self.name, check_key(self.where, key))

    async def offer(
        self, key: str, type_: str, payload: Mapping[str, Any], envelope_id: str, at: float
    ) -> Joined | None:
        """Add the part ``payload`` of type ``type_`` to ``key``'s join: the complete join if this
        part completed it (or completed it before: a repeat of the same envelope), else None."""
        if type_ not in self.types:
            raise RuleError(self.where, f"type {type_!r} is not joined here: {', '.join(self.types)}")
        check_envelope_id(self.where, envelope_id)
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise RuleError(self.where, f"at must be a finite number of seconds, got {at!r:.40}")
        part = self._encode(type_, payload, envelope_id, float(at))
        args = [key, type_, part, envelope_id, repr(float(at)), repr(float(at) + self.window_s)]
        ttls = [_ms(self.window_s + self.closed_ttl_s), _ms(self.closed_ttl_s)]
        reply = await self._offer(
            keys=[self.open_key, self.key_of(key)], args=[*args, repr(self.window_s), len(self.types), *ttls]
        )
        outcome = _text(reply[0])
        if outcome != "complete":
            (self.log.info if outcome == "late" else self.log.debug)(
                f"join.{outcome}", key=key, type=type_, envelope_id=envelope_id
            )
            return None
        fields = _fields(reply[1])
        self.log.info("join.complete", key=key, closed_by=fields["closer"], envelope_id=envelope_id)
        parts = _parts(fields)
        return Joined(
            key=key,
            parts={t: parts[t] for t in self.types},
            opened_at=float(fields["opened"]),
            deadline=float(fields["deadline"]),
            closed_by=fields["closer"],
        )

    async def expired(self, now: float, *, limit: int = CLAIM_BATCH) -> list[Incomplete]:
        """The open joins whose deadline is before ``now`` (at most ``limit``), claimed: each is
        returned by one call only, however many processes call at once."""
        if isinstance(now, bool) or not isinstance(now, int | float) or not math.isfinite(now):
            raise RuleError(self.where, f"now must be a finite number of seconds, got {now!r:.40}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RuleError(self.where, f"limit must be a whole number >= 1, got {limit!r}")
        due = await self.redis.zrangebyscore(self.open_key, "-inf", f"({float(now)!r}", start=0, num=limit)
        found = []
        for member in due:
            key = _text(member)
            reply = await self._claim(
                keys=[self.open_key, self.key_of(key)], args=[key, repr(float(now)), _ms(self.closed_ttl_s)]
            )
            if reply is None:
                continue  # another caller claimed it, or it completed meanwhile
            if not reply:
                self.log.warning(
                    "join.evicted", key=key, detail="its window closed long ago: what arrived is gone"
                )
                continue
            fields = _fields(reply)
            parts = _parts(fields)
            missing = tuple(t for t in self.types if t not in parts)
            self.log.info("join.incomplete", key=key, missing=list(missing))
            found.append(
                Incomplete(
                    key=key,
                    parts={t: parts[t] for t in self.types if t in parts},
                    missing=missing,
                    opened_at=float(fields["opened"]),
                    deadline=float(fields["deadline"]),
                )
            )
        return found

    def _encode(self, type_: str, payload: Mapping[str, Any], envelope_id: str, at: float) -> str:
        if not isinstance(payload, Mapping):
            raise RuleError(
                self.where, f"the payload of {type_} must be a mapping, got {type(payload).__name__}"
            )
        try:
            data = {"envelope_id": envelope_id, "at": at, "payload": dict(payload)}
            return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RuleError(self.where, f"the payload of {type_} is not JSON: {exc}") from None


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(flat: Sequence[Any]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


def _parts(fields: Mapping[str, str]) -> dict[str, Part]:
    parts = {}
    for name, text in fields.items():
        if name.startswith(_PART):
            data = json.loads(text)
            type_ = name.removeprefix(_PART)
            parts[type_] = Part(type_, data["envelope_id"], float(data["at"]), data["payload"])
    return parts
