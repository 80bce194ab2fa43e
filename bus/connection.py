"""Redis clients for L9: redis-py asyncio, with a cheaper round trip.

:class:`HiredisPackingConnection` is redis-py's asyncio ``Connection`` with three
costs of every command taken off the path, its behaviour otherwise unchanged:

* commands are packed in C by ``hiredis.pack_command`` (redis-py packs them in
  Python for asyncio, ~9 us per XADD; its sync client already uses hiredis).
  Arguments hiredis refuses (None, bool, bytearray, ...) fall back to redis-py's
  packer, so errors stay redis-py's own;
* a write the socket takes at once is not awaited: with ``socket_timeout`` set
  (redis-py 8 sets 5 s by default) redis-py wraps every write in
  ``asyncio.wait_for``, a task per command (~30 us). When the transport's buffer
  is empty there is nothing to drain and nothing to time out; a write that has to
  wait for the buffer (or a health check) goes through redis-py as before;
* the read deadline (``socket_timeout``) is kept by one timer per connection,
  re-armed at most once a deadline, instead of a timeout scope per reply (~15 us).
  A reply later than ``socket_timeout`` still fails the read with redis-py's
  ``TimeoutError`` and drops the connection, as before.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def _split_command(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``("CONFIG GET", x)`` -> ``(b"CONFIG", b"GET", x)``, as redis-py does."""
    first = args[0]
    if isinstance(first, str):
        return (*first.encode().split(), *args[1:]) if " " in first else args
    if isinstance(first, bytes) and b" " in first:
        return (*first.split(), *args[1:])
    return args


class HiredisPackingConnection(Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: loop time the reply being read was first waited for; None when no read is on
        self._read_since: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._read_timed_out = False

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        writer = self._writer
        if (
            type(command) is list
            and writer is not None
            and self._reader is not None
            and not (check_health and self.health_check_interval)
            and not writer.transport.is_closing()
            and writer.transport.get_write_buffer_size() == 0
        ):
            writer.writelines(command)  # the socket takes it now: nothing to drain or time out
            return
        await super().send_packed_command(command, check_health)

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 -- redis-py's own signature
        *,
        disconnect_on_error: bool = True,
        push_request: bool | None = False,
    ) -> Any:
        if timeout is not None or not self.socket_timeout or self._read_since is not None:
            return await super().read_response(
                disable_decoding, timeout, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        loop = asyncio.get_running_loop()
        self._read_since, self._read_timed_out = loop.time(), False
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._read_since + self.socket_timeout, self._watch)
        try:
            return await super().read_response(
                disable_decoding, math.inf, disconnect_on_error=disconnect_on_error, push_request=push_request
            )
        except RedisConnectionError:
            if self._read_timed_out:
                raise RedisTimeoutError(f"Timeout reading from {self._host_error()}") from None
            raise
        finally:
            self._read_since = None

    def _watch(self) -> None:
        """The read deadline: abort the connection under a read older than ``socket_timeout``."""
        self._watchdog = None
        since, timeout, writer = self._read_since, self.socket_timeout, self._writer
        if since is None or not timeout or writer is None:
            return  # no read on: the next one arms the timer again
        due = since + timeout
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._watchdog = loop.call_at(due, self._watch)
            return
        self._read_timed_out = True
        writer.transport.abort()  # the read fails at once with a closed connection

    def pack_command(self, *args: Any) -> list[bytes]:
        try:
            return [hiredis.pack_command(_split_command(args))]
        except TypeError:
            return super().pack_command(*args)

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]:
        return [b"".join(b"".join(self.pack_command(*command)) for command in commands)]


class _Lane:
    """One connection of a pool kept out of it for :func:`execute_many`'s round trips.

    Taking a connection from redis-py 8's pool and giving it back costs ~10 us (a lock,
    connection-count metrics, a liveness probe); back-to-back round trips (a publisher
    awaiting each publish, the ack loop) take the lane's connection instead. A round trip
    that finds the lane busy (another task is on it) takes a pooled connection as before.
    A connection that failed is disconnected by redis-py and reconnects on its next use.
    """

    __slots__ = ("busy", "conn")

    def __init__(self) -> None:
        self.conn: Any = None
        self.busy = False


async def execute_many(redis: aioredis.Redis, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send ``commands`` in one write on one connection and read every reply.

    What ``redis.pipeline(transaction=False).execute(raise_on_error=False)`` does for
    plain commands (replies unconverted by response callbacks: ids as bytes, counts as
    ints), without the per-pipeline bookkeeping redis-py 8 adds (~55 us a call, on the
    latency path of every publish and every RPC reply). An error reply comes back as
    its ``ResponseError`` in the list, after every reply was read (the connection stays
    in step); connection errors are retried under the connection's ``Retry`` policy, the
    connection dropped in between, as redis-py's own pipeline does. The connection is
    the pool's lane (:class:`_Lane`) when it is free, else one from the pool.
    """
    pool = redis.connection_pool
    lane: _Lane | None = getattr(pool, "_l9_lane", None)
    if lane is None:  # kept on the pool itself: it lives and dies with it
        lane = pool._l9_lane = _Lane()  # type: ignore[attr-defined]
    on_lane = not lane.busy
    if on_lane:
        lane.busy = True
    conn: Any = None

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
        if on_lane and lane.conn is not None:
            conn = lane.conn
            try:  # the pool's check at checkout: a reply nobody read, or closed by the server
                stale = await conn.can_read()
            except (RedisConnectionError, OSError):
                stale = True
            if stale:
                await conn.disconnect()  # it reconnects with the write below
        else:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        replies: list[Any] = await conn.retry.call_with_retry(attempt, dropped)
        return replies
    finally:
        if on_lane:
            lane.conn = lane.conn if conn is None else conn
            lane.busy = False
        elif conn is not None:
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
