"""Redis clients for L9: redis-py asyncio, with commands packed in C by hiredis.

redis-py packs commands for its asyncio connections in Python (~9 us per
XADD); its sync client already uses ``hiredis.pack_command``. This connection
does the same for asyncio. Arguments hiredis refuses (None, bool, bytearray,
...) fall back to redis-py's packer, so errors stay redis-py's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ResponseError


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


async def execute_many(redis: aioredis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` in one write on one pooled connection and read every reply.

    What ``redis.pipeline(transaction=False).execute(raise_on_error=False)`` does for
    plain commands (replies unconverted by response callbacks: ids as bytes, counts as
    ints), without the per-pipeline bookkeeping redis-py 8 adds (~55 us a call, on the
    latency path of every publish and every RPC reply). An error reply comes back as
    its ``ResponseError`` in the list, after every reply was read (the connection stays
    in step); connection errors are retried under the connection's ``Retry`` policy, the
    connection dropped in between, as redis-py's own pipeline does.
    """
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def attempt() -> list[Any]:
        await conn.send_packed_command(conn.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies

    async def dropped(_error: Exception) -> None:
        await conn.disconnect()

    try:
        replies: list[Any] = await conn.retry.call_with_retry(attempt, dropped)
        return replies
    finally:
        await pool.release(conn)


def first_error(replies: Iterable[Any]) -> None:
    """Raise the first ``ResponseError`` among :func:`execute_many`'s replies."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply


def as_text(value: Any) -> str:
    """A Redis reply value (bytes unless decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (TCP URLs get the hiredis-packing connection)."""
    if url.startswith("redis://"):
        options.setdefault("connection_class", HiredisPackingConnection)
    return aioredis.from_url(url, **options)
