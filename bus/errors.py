"""The bus's small exception vocabulary."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Redis is unreachable or slow: back off and try again, never crash.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


class BusError(Exception):
    """Base of every bus error."""


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
