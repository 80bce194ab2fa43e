"""Dead letters: list them, and put them back on their stream once the cause is fixed.

A dead letter (``<ns>:{stream}:dead``, written by ``bus/deadletter.py``) holds
the original entry's fields plus ``dl_*`` fields saying why. Replaying one is a
script: XDEL the dead letter and, only if it was still there, XADD the original
fields (the same envelope, same id) to the stream, so two operators replaying at
once never put it back twice, and nothing is lost in between. The new
entry reaches every group of the stream; handlers are idempotent by envelope id
(the auditor, for one, already holds it and skips it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bus import Keys, as_text
from bus.connection import RedisClient

DL_PREFIX = b"dl_"
#: KEYS: stream, its dead-letter stream; ARGV: dead-letter id, then the fields to add.
_REPLAY = """
if redis.call('XDEL', KEYS[2], ARGV[1]) == 0 then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


@dataclass(frozen=True)
class DeadLetter:
    stream: str
    #: The id of the dead-letter entry (what ``l9 dead replay`` takes).
    id: str
    envelope_id: str
    type: str
    reason: str
    detail: str
    group: str
    deliveries: int
    time: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _field(fields: dict[bytes, bytes], name: bytes) -> str:
    value = fields.get(name)
    return value.decode(errors="replace") if value is not None else ""


def dead_letter(stream: str, entry_id: Any, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        stream=stream,
        id=as_text(entry_id),
        envelope_id=_field(fields, b"id"),
        type=_field(fields, b"type"),
        reason=_field(fields, b"dl_reason"),
        detail=_field(fields, b"dl_detail"),
        group=_field(fields, b"dl_group"),
        deliveries=int(_field(fields, b"dl_deliveries") or 0),
        time=_field(fields, b"dl_time"),
    )


async def list_dead(redis: RedisClient, keys: Keys, stream: str, limit: int = 100) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``stream``."""
    rows: Any = await redis.xrange(keys.dead(stream), count=limit)
    return [dead_letter(stream, entry_id, fields) for entry_id, fields in rows]


class NotDead(LookupError):
    """No such dead letter."""


async def replay(
    redis: RedisClient, keys: Keys, stream: str, ids: Sequence[str] | None = None
) -> dict[str, str]:
    """Put dead letters (``ids``, or all) back on ``stream``: ``{dead-letter id: new entry id}``.

    A letter someone else replayed meanwhile is left out of the answer."""
    dead_key = keys.dead(stream)
    if ids is None:
        rows: Any = await redis.xrange(dead_key)
    else:
        rows = []
        for entry_id in ids:
            found: Any = await redis.xrange(dead_key, min=entry_id, max=entry_id)
            if not found:
                raise NotDead(f"no dead letter {entry_id} on stream {stream!r} ({dead_key})")
            rows += found
    script = redis.register_script(_REPLAY)
    replayed = {}
    for entry_id, fields in rows:
        args = [entry_id]
        for name, value in fields.items():
            if not name.startswith(DL_PREFIX):
                args += [name, value]
        new_id = await script(keys=[keys.stream(stream), dead_key], args=args)
        if new_id is not None:
            replayed[as_text(entry_id)] = as_text(new_id)
    return replayed
