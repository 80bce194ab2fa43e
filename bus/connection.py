"""Redis clients for L9: redis-py asyncio, with commands packed in C by hiredis.

redis-py packs commands for its asyncio connections in Python (~9 us per
XADD); its sync client already uses ``hiredis.pack_command``. This connection
does the same for asyncio. Arguments hiredis refuses (None, bool, bytearray,
...) fall back to redis-py's packer, so errors stay redis-py's own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection


def _split_command(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``("CONFIG GET", x)`` -> ``(b"CONFIG", b"GET", x)``, as redis-py does."""
    first = args[0]
    if isinstance(first, str):
        return (*first.encode().split(), *args[1:]) if " " in first else args
    if isinstance(first, bytes) and b" " in first:
        return (*first.split(), *args[1:])
    return args


class HiredisPackingConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            return [hiredis.pack_command(_split_command(args))]
        except TypeError:
            return super().pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(b"".join(self.pack_command(*command)) for command in commands)]


def as_text(value: Any) -> str:
    """A Redis reply value (bytes unless decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (TCP URLs get the hiredis-packing connection)."""
    if url.startswith("redis://"):
        options.setdefault("connection_class", HiredisPackingConnection)
    return aioredis.from_url(url, **options)
