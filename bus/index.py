"""The streams index: the names of a namespace's streams, a set per partition.

Stream ``name`` is listed in ``Keys.index_of(name)``, a set in the stream's own slot
(``bus.keys``), so listing a stream never touches another slot. Reading the whole index
is one SMEMBERS per partition, sent in one round trip per node (``execute_many``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .connection import RedisClient, as_text, execute_many, first_error
from .keys import Keys


def index_commands(keys: Keys, names: Iterable[str]) -> list[tuple[Any, ...]]:
    """The SADDs listing ``names`` in the index: one per partition among them."""
    by_index: dict[str, list[str]] = {}
    for name in names:
        by_index.setdefault(keys.index_of(name), []).append(name)
    return [("SADD", index, *members) for index, members in by_index.items()]


async def index_streams(redis: RedisClient, keys: Keys, names: Iterable[str]) -> None:
    """List ``names`` in the streams index."""
    commands = index_commands(keys, names)
    if commands:
        first_error(await execute_many(redis, commands))


async def forget_stream(redis: RedisClient, keys: Keys, name: str) -> None:
    """Take ``name`` out of the streams index."""
    await redis.srem(keys.index_of(name), name)


async def known_streams(redis: RedisClient, keys: Keys, partitions: Iterable[int] | None = None) -> set[str]:
    """The names in the streams index (of ``partitions`` only, if given)."""
    replies = await execute_many(redis, [("SMEMBERS", index) for index in keys.indexes(partitions)])
    first_error(replies)
    return {as_text(name) for members in replies for name in members}
