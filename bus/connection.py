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

On Redis Cluster (:func:`open_client` tells one from a standalone server by
``INFO cluster``) the client is redis-py's ``RedisCluster`` with the same
connection class on every node, and :func:`execute_many` sends each node its own
commands in one write, the nodes at once.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeAlias

import hiredis
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NO_REPLY
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, NoPermissionError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import tracing
from .errors import NotReplicated

#: A client of a standalone Redis or of a Redis Cluster: the commands L9 sends are the same.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster
#: ``auto``: ask the server (``INFO cluster``); ``yes`` / ``no``: a cluster, a standalone server.
ClusterMode = Literal["auto", "yes", "no"]
#: Rounds of redirections (MOVED, ASK, TRYAGAIN) one :func:`execute_many` call follows.
REDIRECTS = 5


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


async def execute_many(
    redis: RedisClient,
    commands: Sequence[Sequence[Any]],
    *,
    replicas: int = 0,
    replica_timeout_ms: int = 1000,
) -> list[Any]:
    """Send ``commands`` in one write on one connection and read every reply.

    What ``redis.pipeline(transaction=False).execute(raise_on_error=False)`` does for
    plain commands (replies unconverted by response callbacks: ids as bytes, counts as
    ints), without the per-pipeline bookkeeping redis-py 8 adds (~55 us a call, on the
    latency path of every publish and every RPC reply). An error reply comes back as
    its ``ResponseError`` in the list, after every reply was read (the connection stays
    in step); connection errors are retried under the connection's ``Retry`` policy, the
    connection dropped in between, as redis-py's own pipeline does. The connection is
    the pool's lane (:class:`_Lane`) when it is free, else one from the pool.

    On a cluster (:func:`_execute_on_cluster`) a ``MULTI`` ... ``EXEC`` block must keep to
    one slot, as Redis Cluster requires of any transaction.

    ``replicas``: each server written to must also have the writes acknowledged by that many
    of its replicas within ``replica_timeout_ms`` (a ``WAIT`` after them, its reply not
    returned), else :class:`~bus.errors.NotReplicated` is raised.
    """
    if tracing.tracer() is not None:
        with tracing.redis_span(commands):
            return await _execute_many(redis, commands, replicas, replica_timeout_ms)
    return await _execute_many(redis, commands, replicas, replica_timeout_ms)


async def _execute_many(
    redis: RedisClient, commands: Sequence[Sequence[Any]], replicas: int, replica_timeout_ms: int
) -> list[Any]:
    if isinstance(redis, RedisCluster):
        return await _execute_on_cluster(redis, commands, replicas, replica_timeout_ms)
    if replicas:
        waited = await _execute_many(redis, [*commands, ("WAIT", replicas, replica_timeout_ms)], 0, 0)
        _check_replicated(waited.pop(), replicas, replica_timeout_ms, _where(redis))
        return waited
    pool = redis.connection_pool
    lane: _Lane | None = getattr(pool, "_l9_lane", None)
    if lane is None:  # kept on the pool itself: it lives and dies with it
        lane = pool._l9_lane = _Lane()  # type: ignore[attr-defined]
    on_lane = not lane.busy
    if on_lane:
        lane.busy = True
    conn: Any = None

    async def attempt() -> list[Any]:
        return await _on_connection(conn, commands)

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


async def _on_connection(conn: Any, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``commands`` in one write on ``conn``, every reply read (an error reply in the list).

    A reply the parser already holds whole is taken from it directly (hiredis' ``gets``): the
    replies of a batch mostly arrive together, and redis-py's ``read_response`` costs some
    3 us a reply in layers (a timeout scope, the parser's coroutine, push-message checks)
    that only matter while waiting for the socket. Waiting is left to ``read_response``, as
    is every connection whose parser is not hiredis. A RESP3 push message met on the way is
    handed to the parser's push handler, as ``read_response`` does."""
    await conn.send_packed_command(conn.pack_commands(commands))
    replies: list[Any] = []
    parser = _buffering_parser(conn)
    gets = None if parser is None else parser._reader.gets
    push = None if parser is None else parser._hiredis_PushNotificationType
    for _ in commands:
        reply = _NO_REPLY if gets is None else gets()
        while push is not None and isinstance(reply, push):
            await parser.handle_push_response(reply)
            reply = gets()  # type: ignore[misc]
        if reply is _NO_REPLY:
            try:
                reply = await conn.read_response()
            except ResponseError as exc:
                reply = exc
        elif isinstance(reply, RedisConnectionError) or (
            type(reply) is list and reply and isinstance(reply[0], RedisConnectionError)
        ):  # what read_response raises (a server still loading, say), the connection dropped
            await conn.disconnect(nowait=True)
            raise reply if isinstance(reply, RedisConnectionError) else reply[0]
        replies.append(reply)
    return replies


def _buffering_parser(conn: Any) -> Any:
    """``conn``'s hiredis parser, whose reader's ``gets`` gives the next whole reply it holds
    (or ``_NO_REPLY``); None where :func:`_on_connection` must read every reply with
    ``read_response``."""
    parser = getattr(conn, "_parser", None)
    if (
        type(parser) is not _AsyncHiredisParser
        or not parser._connected
        or getattr(parser, "_reader", None) is None
        or conn.health_check_interval  # read_response also schedules the next check
        or (conn.protocol not in (2, "2") and parser._hiredis_PushNotificationType is None)
    ):  # (an old hiredis could not tell a RESP3 push message from a reply)
        return None
    return parser


def _where(redis: aioredis.Redis) -> str:
    kwargs = redis.connection_pool.connection_kwargs
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _check_replicated(reply: Any, wanted: int, timeout_ms: int, node: str) -> None:
    """The reply of a WAIT: raise unless ``wanted`` replicas acknowledged."""
    if isinstance(reply, ResponseError):
        raise reply
    if int(reply) < wanted:
        raise NotReplicated(node, int(reply), wanted, timeout_ms)


def slot_of(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key`` (its hash tag's, when it has one)."""
    return key_slot(key if isinstance(key, bytes) else key.encode())


def key_of(command: Sequence[Any]) -> Any:
    """The key a command is routed by (its first key), None for a keyless one."""
    name = command[0].upper() if isinstance(command[0], str) else bytes(command[0]).decode().upper()
    if name in ("EVAL", "EVALSHA", "FCALL"):
        return command[3] if int(command[2]) > 0 else None
    if name in ("MULTI", "EXEC", "DISCARD", "PING", "ASKING"):
        return None
    return command[1] if len(command) > 1 else None


def _units(commands: Sequence[Sequence[Any]]) -> list[tuple[int, int, int]]:
    """``commands`` cut into units sent to one node each: a command, or a MULTI...EXEC block.
    Each unit: (start, end, slot); a block's slot is its first key's. A keyless command
    (PING) goes with the unit before it (the first with the first keyed one)."""
    units: list[tuple[int, int, int | None]] = []
    i = 0
    while i < len(commands):
        end = i + 1
        if str(commands[i][0]).upper() == "MULTI":
            while end < len(commands) and str(commands[end - 1][0]).upper() != "EXEC":
                end += 1
        keys = [k for k in (key_of(c) for c in commands[i:end]) if k is not None]
        units.append(
            (i, end, slot_of(keys[0] if isinstance(keys[0], bytes) else str(keys[0])) if keys else None)
        )
        i = end
    known = [slot for _, _, slot in units if slot is not None]
    last = known[0] if known else 0
    out: list[tuple[int, int, int]] = []
    for start, end, slot in units:
        last = last if slot is None else slot
        out.append((start, end, last))
    return out


def _redirect(replies: Sequence[Any]) -> ResponseError | None:
    """The redirection (MOVED, ASK) or TRYAGAIN among one unit's replies, if any."""
    for reply in replies:
        if isinstance(reply, MovedError | AskError | TryAgainError):
            return reply
    return None


async def _execute_on_cluster(
    cluster: RedisCluster,
    commands: Sequence[Sequence[Any]],
    replicas: int = 0,
    replica_timeout_ms: int = 1000,
) -> list[Any]:
    """:func:`execute_many` on a cluster: each node its commands in one write, the nodes at once.

    A unit (a command, or a MULTI...EXEC block) answered with MOVED is sent again to the
    slot's new owner (the slot map updated from the reply), one answered with ASK to the
    node named, after ASKING (a MULTI block, which ASKING cannot cover, waits for the
    migration to end), and one answered TRYAGAIN (a multi-key command during a migration)
    again after a pause, for :data:`REDIRECTS` rounds; after those the error
    replies are returned. A redirected unit was not applied, so sending it again cannot
    apply it twice. A connection error asks the client for a fresh slot map and is raised.
    """
    if cluster._initialize:
        await cluster.initialize()
    replies: list[Any] = [None] * len(commands)
    todo = _units(commands)
    asked: dict[int, ClusterNode] = {}  # unit start -> the node an ASK named
    for round_ in range(REDIRECTS + 1):
        by_node: dict[ClusterNode, list[tuple[int, int, int]]] = {}
        asking: set[int] = set()  # units sent to the node an ASK named, after ASKING
        for unit in todo:
            target = asked.pop(unit[0], None)
            if target is not None:
                asking.add(unit[0])
            node = target or cluster.nodes_manager.get_node_from_slot(unit[2])
            by_node.setdefault(node, []).append(unit)
        wait = ("WAIT", replicas, replica_timeout_ms) if replicas else None
        results = await asyncio.gather(
            *(_on_node(cluster, node, units, commands, asking, wait) for node, units in by_node.items())
        )
        todo, pause = [], False
        for node, units, (unit_replies, waited) in zip(by_node, by_node.values(), results, strict=True):
            if wait is not None and any(_redirect(got) is None for got in unit_replies):
                _check_replicated(waited, replicas, replica_timeout_ms, node.name)  # something applied there
            for unit, got in zip(units, unit_replies, strict=True):
                start, end, _slot = unit
                replies[start:end] = got
                redirect = _redirect(got)
                if redirect is None or round_ == REDIRECTS:
                    continue
                if isinstance(redirect, MovedError):
                    await cluster.nodes_manager.move_slot(redirect)
                elif isinstance(redirect, AskError) and end - start == 1:
                    host, port = cluster.nodes_manager.remap_host_port(redirect.host, redirect.port)
                    target = cluster.nodes_manager.get_node(host=host, port=port)
                    if target is None:
                        cluster._request_refresh()
                    else:
                        asked[start] = target
                else:  # TRYAGAIN, or a block in a migrating slot: ASKING covers one command
                    pause = True
                todo.append(unit)
        if not todo:
            break
        if pause:
            await asyncio.sleep(0.05 * (round_ + 1))
    return replies


async def _on_node(
    cluster: RedisCluster,
    node: ClusterNode,
    units: Sequence[tuple[int, int, int]],
    commands: Sequence[Sequence[Any]],
    asking: set[int],
    wait: tuple[str, int, int] | None = None,
) -> tuple[list[list[Any]], Any]:
    """The units sent to ``node`` in one write: the replies of each unit (an ``ASKING`` sent
    before a unit that an ASK sent here is not among them), and the reply of ``wait``, a WAIT
    after them all (None without one)."""
    sent: list[Sequence[Any]] = []
    for start, end, _slot in units:
        if start in asking:
            sent.append(("ASKING",))
        sent.extend(commands[start:end])
    if wait is not None:
        sent.append(wait)
    conn = node.acquire_connection()
    try:
        got = await _on_connection(conn, sent)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        await conn.disconnect()
        cluster._request_refresh(last_failed_node_name=node.name)
        raise
    finally:
        node.release(conn)
    waited = got.pop() if wait is not None else None
    out: list[list[Any]] = []
    at = 0
    for start, end, _slot in units:
        at += start in asking  # the ASKING's OK
        out.append(got[at : at + end - start])
        at += end - start
    return out, waited


def first_error(replies: Iterable[Any]) -> None:
    """Raise the first ``ResponseError`` among :func:`execute_many`'s replies."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply


def as_text(value: Any) -> str:
    """A Redis reply value (bytes unless decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, **options: Any) -> aioredis.Redis:
    """An asyncio client of the standalone Redis at ``url`` (TCP URLs get the
    hiredis-packing connection). :func:`open_client` also knows a cluster."""
    if url.startswith("redis://"):
        options.setdefault("connection_class", HiredisPackingConnection)
    return aioredis.from_url(url, **options)


def connect_cluster(url: str, **options: Any) -> RedisCluster:
    """An asyncio client of the Redis Cluster one of whose nodes is at ``url``; every node's
    connections are hiredis-packing ones for TCP URLs (redis-py's cluster client would make
    plain ones). The slot map is fetched by the first command."""
    cluster = RedisCluster.from_url(url, **options)
    if url.startswith("redis://"):
        cluster.connection_kwargs["connection_class"] = HiredisPackingConnection
        for node in cluster.nodes_manager.startup_nodes.values():
            node.connection_class = HiredisPackingConnection
    return cluster


async def is_cluster_server(url: str, **options: Any) -> bool:
    """Whether the server at ``url`` is a node of a Redis Cluster: ``CLUSTER INFO`` answers
    on a cluster node and is refused on a standalone server (an agent's ACL user may run it,
    not INFO)."""
    probe = connect(url, **options)
    try:
        await probe.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    except NoPermissionError as exc:
        raise NoPermissionError(
            f"{exc}: cannot tell whether {safe_url(url)} is a Redis Cluster node; "
            "allow the user +cluster|info (l9 acl render does), or set L9_REDIS_CLUSTER=yes or no"
        ) from exc
    except ResponseError as exc:
        if "cluster support disabled" in str(exc).lower():
            return False
        raise
    finally:
        await probe.aclose()
    return True


def safe_url(url: str) -> str:
    """``url`` without its password."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


async def open_client(url: str, *, cluster: ClusterMode = "auto", **options: Any) -> RedisClient:
    """A client of the Redis at ``url``: a cluster client when the server is a cluster node
    (``cluster="auto"`` asks it) or ``cluster="yes"``, else a standalone one."""
    if cluster == "auto":
        cluster = "yes" if await is_cluster_server(url, **options) else "no"
    if cluster == "yes":
        client = connect_cluster(url, **options)
        await client.initialize()
        return client
    return connect(url, **options)


def is_cluster(redis: RedisClient) -> bool:
    return isinstance(redis, RedisCluster)
