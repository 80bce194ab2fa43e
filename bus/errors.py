"""The bus's small exception vocabulary, and the one place Redis error replies are told apart."""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Redis is unreachable, slow or between states: back off and try again, never crash.
#: Besides lost connections and timeouts (LOADING after a restart is one): a cluster that is
#: down or has a slot nobody serves (CLUSTERDOWN, MASTERDOWN, no node for a slot, no node
#: reachable), a slot in migration (TRYAGAIN), and a write that reached a replica while a
#: failover goes on (READONLY).
TRANSIENT = (
    AskError,  # MOVED or ASK left after execute_many followed its redirections: a resharding storm
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
)


def error_code(exc: ResponseError) -> str:
    """The code a Redis error reply starts with: ``NOGROUP``, ``BUSYGROUP``, ``ERR``...

    redis-py has exception classes for some replies (``NoScriptError``, ``ReadOnlyError``...)
    but none for the consumer-group ones, so they are recognised here, by their code: redis-py
    8 keeps it in ``status_code``; older versions leave it as the message's first word.
    """
    code = getattr(exc, "status_code", None)
    return code if isinstance(code, str) else str(exc).partition(" ")[0]


def is_nogroup(exc: ResponseError) -> bool:
    """The consumer group (or its stream) is gone: Redis restarted or was flushed, or the
    stream was deleted."""
    return error_code(exc) == "NOGROUP"


def is_busygroup(exc: ResponseError) -> bool:
    """XGROUP CREATE of a group that exists already."""
    return error_code(exc) == "BUSYGROUP"


def is_no_such_key(exc: ResponseError) -> bool:
    """XINFO (and others) on a key that does not exist: a plain ``ERR`` reply."""
    return error_code(exc) == "ERR" and "no such key" in str(exc).lower()


def is_missing_stream(exc: ResponseError) -> bool:
    """XGROUP CREATE (without MKSTREAM) on a stream that does not exist: a plain ``ERR``
    reply, so only its text tells."""
    return "requires the key to exist" in str(exc)


class BusError(Exception):
    """Base of every bus error."""


class DeadLetter(BusError):
    """Refuses an entry for good: raised by a middleware step (``bus.middleware``) or a
    handler, it sends the entry to the dead-letter stream at once with ``reason`` and
    ``detail``, never retried. Any other exception is a failed attempt, retried."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class NotReplicated(BusError):
    """A publish reached its master but fewer replicas than asked for acknowledged it in time
    (``WAIT``): a failover of that master now could lose it. Publishing it again is safe for
    consumers that apply an envelope once by its id (it may then be delivered twice)."""

    def __init__(self, node: str, acknowledged: int, wanted: int, timeout_ms: int) -> None:
        self.node, self.acknowledged, self.wanted = node, acknowledged, wanted
        super().__init__(
            f"written to {node} but acknowledged by {acknowledged} of the {wanted} replica(s) "
            f"asked for within {timeout_ms} ms"
        )


class RpcTimeout(BusError, TimeoutError):
    """No reply arrived before the request's deadline."""

    def __init__(self, request_id: str, type_: str, timeout_s: float) -> None:
        self.request_id = request_id
        super().__init__(f"no reply to {type_} request {request_id} within {timeout_s:g}s")


class RemoteError(BusError):
    """The responder answered with an error envelope."""

    def __init__(self, request_id: str, error: str, detail: str) -> None:
        self.request_id = request_id
        self.error = error
        self.detail = detail
        super().__init__(f"request {request_id} failed remotely: {error}: {detail}")
