"""Choosing the store: Neo4j when ``NEO4J_URL`` is set, else FalkorDB (the embedded default)."""

from __future__ import annotations

from typing import Protocol

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from bus.connection import RedisClient

from .errors import GraphError
from .falkordb import FalkorBackend
from .port import GraphBackend
from .store import SemanticGraph


class GraphSettings(Protocol):
    """What :func:`open_graph` reads (``l9.settings.Settings`` has it all)."""

    @property
    def namespace(self) -> str: ...
    @property
    def neo4j_url(self) -> str | None: ...
    @property
    def neo4j_user(self) -> str: ...
    @property
    def neo4j_password(self) -> str | None: ...
    @property
    def neo4j_database(self) -> str | None: ...
    @property
    def graph_url(self) -> str | None: ...
    @property
    def graph_name(self) -> str | None: ...
    @property
    def graph_timeout_s(self) -> float: ...
    @property
    def graph_hook_timeout_s(self) -> float: ...


def graph_key(namespace: str) -> str:
    """The FalkorDB graph of a namespace: a Redis key beside its streams (``l9:graph``)."""
    return f"{namespace}:graph"


def open_graph(
    settings: GraphSettings, redis_url: str | None = None, *, redis: RedisClient | None = None
) -> SemanticGraph:
    """The semantic graph of ``settings.namespace``; nothing is connected until the first query.

    FalkorDB lives in ``L9_GRAPH_URL`` if set, else in the bus's Redis: ``redis`` (a client to
    share) or ``redis_url``.
    """
    backend: GraphBackend
    timeout = settings.graph_timeout_s
    if settings.neo4j_url:
        from .neo4j import Neo4jBackend  # the driver is imported only when it is used

        backend = Neo4jBackend(
            settings.neo4j_url,
            settings.neo4j_user,
            settings.neo4j_password,
            database=settings.neo4j_database,
            timeout_s=timeout,
        )
    else:
        key = settings.graph_name or graph_key(settings.namespace)
        if settings.graph_url:
            backend = FalkorBackend.from_url(settings.graph_url, key, timeout_s=timeout)
        elif redis is not None:
            backend = FalkorBackend(redis, key, where=_where(redis, key))
        elif redis_url:
            backend = FalkorBackend.from_url(redis_url, key, timeout_s=timeout)
        else:
            raise GraphError("no graph store: set NEO4J_URL or L9_GRAPH_URL, or pass the Redis URL")
    return SemanticGraph(backend, settings.namespace, timeout_s=timeout)


def _where(redis: RedisClient, key: str) -> str:
    """Where the graph is: the server's address (on a cluster: the node serving its key now)."""
    if isinstance(redis, RedisCluster):
        try:
            node = redis.get_node_from_key(key)
        except RedisError:  # no slot map yet: the client fetches it with its first command
            node = None
        if node is None:
            return "a Redis Cluster node"
        return f"redis://{node.host}:{node.port} (cluster)"
    kwargs = redis.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
