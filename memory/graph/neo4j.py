"""The Neo4j adapter (production): the official async driver, the shared Cypher.

The only module importing ``neo4j``. Every node carries the L9 namespace
(``ns``), so one database can hold several namespaces; uniqueness
constraints on each label's key make concurrent MERGEs safe.
"""

from __future__ import annotations

import contextlib
from typing import Any

from neo4j import AsyncDriver, AsyncGraphDatabase, Query, RoutingControl
from neo4j.exceptions import (
    AuthError,
    ConfigurationError,
    ConnectionPoolError,
    DriverError,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
    TransientError,
)

from . import cypher
from .errors import GraphError, GraphQueryError, GraphUnavailable
from .port import Params, Row

_UNAVAILABLE = (ServiceUnavailable, SessionExpired, TransientError, ConnectionPoolError, AuthError, OSError)


class Neo4jBackend:
    kind = "neo4j"

    def __init__(
        self,
        url: str,
        user: str | None,
        password: str | None,
        *,
        database: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.where = url + (f" (database {database})" if database else "")
        self.database, self.timeout_s = database, timeout_s
        auth = (user or "neo4j", password) if password is not None else None
        try:
            self.driver: AsyncDriver = AsyncGraphDatabase.driver(
                url,
                auth=auth,
                connection_timeout=timeout_s,
                connection_acquisition_timeout=timeout_s,
                max_transaction_retry_time=timeout_s,
            )
        except (ConfigurationError, ValueError) as exc:
            raise GraphError(f"NEO4J_URL {url!r} cannot be used: {exc}") from None

    async def _run(self, text: str, params: Params, routing: RoutingControl) -> list[Row]:
        query = Query(text, timeout=self.timeout_s)
        try:
            result: Any = await self.driver.execute_query(
                query, dict(params), routing_=routing, database_=self.database
            )
        except _UNAVAILABLE as exc:
            raise GraphUnavailable(f"Neo4j at {self.where} unavailable: {type(exc).__name__}: {exc}") from exc
        except (Neo4jError, DriverError) as exc:
            raise GraphQueryError(f"Neo4j refused the query: {type(exc).__name__}: {exc}") from exc
        return [record.data() for record in result.records]

    async def setup(self) -> None:
        for statement in cypher.neo4j_constraints():
            await self._run(statement, {}, RoutingControl.WRITE)

    async def index_entities(self, label: str) -> None:
        await self._run(cypher.neo4j_entity_constraint(label), {}, RoutingControl.WRITE)

    async def write(self, query: str, params: Params) -> None:
        await self._run(query, params, RoutingControl.WRITE)

    async def read(self, query: str, params: Params) -> list[Row]:
        return await self._run(query, params, RoutingControl.READ)

    async def close(self) -> None:
        with contextlib.suppress(*_UNAVAILABLE, DriverError):
            await self.driver.close()
