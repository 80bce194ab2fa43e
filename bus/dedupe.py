"""Idempotence: ids that make a repeat recognisable, and a group's window of handled ids.

Delivery is at-least-once, so one envelope can come more than once: a handler retried
after a crash between its emit and its ack emits again, and a publisher that lost the
reply to a publish adds the entry again. Two things make the repeat harmless:

* :func:`derived_id`: what a handler emits gets an id derived from the envelope it
  handles (the cause's id, the emitting agent, the emitted type and how many of that
  type the handler emitted before), so a retried handler emits the same ids and every
  reader (the audit trail, an idempotent consumer, the window below) can tell a repeat
  from a new envelope (``agents.Context``);
* :class:`HandledWindow`: the envelope ids a consumer group handled on a stream in the
  last ``DeliveryPolicy.dedupe_window_s`` seconds, a sorted set in the stream's slot
  (``Keys.handled``: envelope id -> Unix ms it was handled), shared by every consumer
  of the group. The per-entry loop (``bus.consumer``) looks the ids of each read up
  with one ZMSCORE per stream before any of them is handled (a task beside its read
  loop), acks an entry whose id is in the window unhandled (``consumer.duplicate``, at
  info), and records the id (ZADD) in the round trip of the entry's XACK, just before
  it (in the MULTI/EXEC of its emits when it has some): an id is in the window once an
  entry of it was handled and its handler returned, so a handler that fails marks
  nothing and an envelope accepted is never dropped. Ids older than the window are
  trimmed (ZREMRANGEBYSCORE) every ``trim_every_s`` and count as not handled until then;
  the key's expiry is set at each trim, a window and a trim interval ahead.

What the window does not cover: two entries of one id handled at the same time by two
consumers of the group (each looked before the other acked). Their emits carry the
same derived ids, so downstream still sees one of each.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import ResponseError

from .connection import RedisClient, execute_many
from .errors import TRANSIENT, error_code
from .keys import Keys

#: How often at most one consumer trims the window of one stream.
TRIM_EVERY_S = 60.0


def derived_id(cause_id: str, scope: str, type_: str, index: int = 0) -> str:
    """The id of the ``index``-th (from 0) envelope of type ``type_`` that ``scope`` (an
    agent, a consumer group) emits in answer to envelope ``cause_id``: the same inputs, the
    same id. A UUIDv8 (RFC 9562) of their SHA-256, lowercase as the envelope's id pattern
    wants; not ordered by time."""
    text = f"l9.emit\x1f{scope}\x1f{cause_id}\x1f{type_}\x1f{index}"
    raw = bytearray(hashlib.sha256(text.encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Repeat:
    """Why an entry is acked unhandled: its envelope id was handled by the group at
    ``handled_at`` (Unix s, inside the window), or another entry of it is in this
    consumer's hand (``in_hand``: that entry's id)."""

    handled_at: float | None = None
    in_hand: str | None = None

    def log_fields(self) -> dict[str, Any]:
        if self.in_hand is not None or self.handled_at is None:
            return {"in_hand": self.in_hand}
        return {"handled_at": datetime.fromtimestamp(self.handled_at, UTC).isoformat()}


class HandledWindow:
    """Group ``group``'s window of handled envelope ids, ``ttl_s`` seconds long, on each stream
    it reads (see the module doc). ``clock`` gives the time the ids are scored with (Unix s)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        group: str,
        ttl_s: float,
        *,
        log: Any,
        clock: Callable[[], float] = time.time,
        trim_every_s: float = TRIM_EVERY_S,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"a window of handled ids needs a ttl_s > 0, not {ttl_s}")
        self.redis, self.keys, self.group, self.log, self.clock = redis, keys, group, log, clock
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.trim_every_s = min(trim_every_s, ttl_s)
        self._keys: dict[str, str] = {}
        self._next_trim: dict[str, float] = {}  # stream -> monotonic time its trim is due
        self._off: set[str] = set()  # streams whose window the Redis user may not touch

    def key(self, stream: str) -> str:
        key = self._keys.get(stream)
        if key is None:
            key = self._keys[stream] = self.keys.handled(stream, self.group)
        return key

    def on(self, stream: str) -> bool:
        """Whether ids of ``stream`` are looked up and recorded (not after a NOPERM)."""
        return stream not in self._off

    async def lookup(self, ids: Mapping[str, Sequence[bytes | str]]) -> dict[tuple[str, str], float]:
        """Of the envelope ids read on each stream (as Redis returned them), those the group
        handled inside the window: (stream, id as text) -> when (Unix s). One round trip, one ZMSCORE
        per stream. Redis trouble is logged and finds nothing: the entries are handled (at
        least once)."""
        streams = [s for s, some in ids.items() if some and s not in self._off]
        if not streams:
            return {}
        try:
            replies = await execute_many(self.redis, [("ZMSCORE", self.key(s), *ids[s]) for s in streams])
        except TRANSIENT as exc:
            self.log.warning("consumer.window_unavailable", error=str(exc), hint="handled without a look")
            return {}
        since_ms = self.clock() * 1000 - self.ttl_ms
        found: dict[tuple[str, str], float] = {}
        for stream, reply in zip(streams, replies, strict=True):
            if isinstance(reply, ResponseError):
                self._refused(stream, reply)
                continue
            if not any(reply):  # the usual case: none of them
                continue
            for eid, score in zip(ids[stream], reply, strict=True):
                if score is not None and (ms := float(score)) > since_ms:
                    found[(stream, eid.decode() if isinstance(eid, bytes) else eid)] = ms / 1000
        return found

    def record(self, stream: str, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """The commands that put ``ids`` in the window of ``stream`` as handled now (sent just
        before their XACK): a ZADD and, every ``trim_every_s``, the key's expiry (a window and a
        trim interval ahead) and the trim of ids older than the window."""
        now_ms = int(self.clock() * 1000)
        key = self.key(stream)
        scored = [x for eid in ids for x in (now_ms, eid)]
        commands: list[tuple[Any, ...]] = [("ZADD", key, *scored)]
        due = time.monotonic()
        if self._next_trim.get(stream, 0.0) <= due:
            self._next_trim[stream] = due + self.trim_every_s
            commands.append(("PEXPIRE", key, self.ttl_ms + int(self.trim_every_s * 1000)))
            commands.append(("ZREMRANGEBYSCORE", key, "-inf", f"({now_ms - self.ttl_ms}"))
        return commands

    def _refused(self, stream: str, reply: ResponseError) -> None:
        if error_code(reply) == "NOPERM":
            self._off.add(stream)
            self.log.error(
                "consumer.window_off",
                stream=stream,
                key=self.key(stream),
                error=str(reply),
                hint="this Redis user may not use the window of handled ids: render and load the ACL "
                "again (l9 acl render), then restart the agent; until then repeats on this stream "
                "are handled again",
            )
        else:
            self.log.warning("consumer.window_failed", stream=stream, error=str(reply))
