"""The FalkorDB adapter: ``GRAPH.QUERY`` / ``GRAPH.RO_QUERY`` on a Redis with the FalkorDB module.

The embedded default: the module is loaded in the bus's own Redis, and each
namespace has its graph under the key ``<namespace>:graph``. Parameters travel
in the query's ``CYPHER name=value ...`` header (:func:`cypher_literal` quotes
them; nothing from data is ever spliced into the query itself), and results
come in FalkorDB's compact form, decoded by :func:`decode_value`.

Only the redis-py client is used (the ``falkordb`` package checks for a
cluster with a blocking call when it is built); this module is the only one
that knows FalkorDB's wire format.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bus.connection import RedisClient, safe_url

from . import cypher
from .errors import GraphQueryError, GraphUnavailable
from .port import Params, Row

_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, AuthenticationError, OSError)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Compact result value types (FalkorDB ``ValueType``).
_NULL, _STRING, _INTEGER, _BOOLEAN, _DOUBLE, _ARRAY, _MAP = 1, 2, 3, 4, 5, 6, 10


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cypher_literal(value: Any) -> str:
    """``value`` as a Cypher literal for the parameter header."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GraphQueryError(f"cannot store the non-finite number {value!r}")
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise GraphQueryError("cannot store text containing a NUL character")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_map_key(k)}:{cypher_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(cypher_literal(v) for v in value) + "]"
    raise GraphQueryError(f"cannot send a {type(value).__name__} as a query parameter")


def _map_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise GraphQueryError(f"parameter map key {key!r} is not an identifier")
    return key


def with_params(query: str, params: Params) -> str:
    """``CYPHER a=1 b="x" <query>``."""
    if not params:
        return query
    return "CYPHER " + " ".join(f"{_map_key(k)}={cypher_literal(v)}" for k, v in params.items()) + " " + query


def decode_value(cell: Any) -> Any:
    """One compact result value: ``[type, value]``."""
    kind, value = cell[0], cell[1]
    if kind == _NULL:
        return None
    if kind == _STRING:
        return _text(value)
    if kind == _INTEGER:
        return int(value)
    if kind == _BOOLEAN:
        return _text(value) == "true"
    if kind == _DOUBLE:
        return float(_text(value))
    if kind == _ARRAY:
        return [decode_value(v) for v in value]
    if kind == _MAP:
        return {_text(value[i]): decode_value(value[i + 1]) for i in range(0, len(value), 2)}
    raise GraphQueryError(f"result value of FalkorDB type {kind}: the graph queries return scalars only")


def decode_rows(reply: Sequence[Any]) -> list[Row]:
    """The rows of a compact reply ``[header, rows, stats]`` (a write without RETURN: ``[stats]``)."""
    if len(reply) < 3:
        return []
    names = [_text(column[1]) for column in reply[0]]
    return [dict(zip(names, (decode_value(c) for c in row), strict=True)) for row in reply[1]]


class FalkorBackend:
    kind = "falkordb"

    def __init__(self, redis: RedisClient, graph_key: str, *, where: str, owned: bool = False) -> None:
        self.redis, self.graph_key, self._owned = redis, graph_key, owned
        self.where = f"{where} (graph {graph_key})"

    @classmethod
    def from_url(cls, url: str, graph_key: str, *, timeout_s: float = 5.0) -> FalkorBackend:
        client = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s * 2)
        return cls(client, graph_key, where=safe_url(url), owned=True)

    async def _command(self, command: str, query: str, params: Params) -> Any:
        text = with_params(query, params)
        try:
            return await self.redis.execute_command(command, self.graph_key, text, "--compact")
        except _UNAVAILABLE as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise GraphUnavailable(f"FalkorDB at {self.where} unreachable: {error}") from exc
        except ResponseError as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: ResponseError) -> Exception:
        text = str(exc)
        if "unknown command" in text.lower():
            return GraphUnavailable(f"the Redis at {self.where} has no FalkorDB (graph) module: {text}")
        if "LOADING" in text or "BUSY" in text or "timed out" in text.lower():
            return GraphUnavailable(f"FalkorDB at {self.where} is busy: {text}")
        return GraphQueryError(f"FalkorDB refused the query: {text}")

    async def setup(self) -> None:
        for statement in cypher.falkordb_indexes():
            try:
                await self._command("GRAPH.QUERY", statement, {})
            except GraphQueryError as exc:
                if "already indexed" not in str(exc):
                    raise

    async def index_entities(self, label: str) -> None:
        try:
            await self._command("GRAPH.QUERY", cypher.falkordb_entity_index(label), {})
        except GraphQueryError as exc:
            if "already indexed" not in str(exc):
                raise

    async def write(self, query: str, params: Params) -> None:
        await self._command("GRAPH.QUERY", query, params)

    async def read(self, query: str, params: Params) -> list[Row]:
        try:
            reply = await self._command("GRAPH.RO_QUERY", query, params)
        except GraphQueryError as exc:
            if "empty key" in str(exc):  # nothing written to this namespace yet
                return []
            raise
        return decode_rows(reply)

    async def close(self) -> None:
        if self._owned:
            with contextlib.suppress(*_UNAVAILABLE):
                await self.redis.aclose()
