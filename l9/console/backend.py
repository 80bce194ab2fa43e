"""What the console's pages read from and write to: one Redis client, the audit trail and the
semantic graph (each opened on first use, so a page that needs neither works while PostgreSQL
is down), the settings' verifier and signer, and the policy file.

A store that cannot be reached is a :class:`Unavailable` naming it; pages show the message
instead of their content and try again on their next refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import structlog
from redis.exceptions import RedisError

from bus import Keys, open_client
from bus.connection import RedisClient
from envelope import Signer, Verifier
from governance import PolicyEngine, PolicyFileError
from l9.devstack import StackEndpoints, StackError, resolve_endpoints
from l9.settings import Settings
from l9.trail import open_trail, quiet_reconnect_warnings
from memory.audit import AuditRecorder, AuditStoreError
from memory.graph import SemanticGraph, open_graph

log = structlog.get_logger("l9.console")


class Unavailable(RuntimeError):
    """A store the page needs cannot be reached or read (the message says which and why)."""


@dataclass
class Backend:
    settings: Settings
    endpoints: StackEndpoints
    redis: RedisClient
    keys: Keys
    verifier: Verifier
    signer: Signer
    _trail: AuditRecorder | None = None
    _graph: SemanticGraph | None = None
    _lock: anyio.Lock = field(default_factory=anyio.Lock)

    @classmethod
    async def open(cls, settings: Settings, endpoints: StackEndpoints | None = None) -> Backend:
        """Connect to Redis (the trail and the graph wait for a page that needs them)."""
        endpoints = endpoints or resolve_endpoints(settings)
        redis = await open_client(endpoints.redis_url, cluster=settings.redis_cluster)
        quiet_reconnect_warnings()
        return cls(
            settings, endpoints, redis, Keys(settings.namespace), settings.verifier(), settings.signer()
        )

    async def trail(self) -> AuditRecorder:
        """The audit trail (opened, migrations applied, on first use)."""
        async with self._lock:
            if self._trail is None:
                try:
                    self._trail = await open_trail(self.settings, self.endpoints, max_size=4)
                except (AuditStoreError, StackError, OSError) as exc:
                    raise Unavailable(f"the audit trail (PostgreSQL) is unavailable: {exc}") from None
            return self._trail

    def graph(self) -> SemanticGraph:
        """The semantic graph (FalkorDB in the bus's Redis unless Neo4j or L9_GRAPH_URL is set)."""
        if self._graph is None:
            settings = self.settings
            shared = None if settings.neo4j_url or settings.graph_url else self.redis
            self._graph = open_graph(settings, redis=shared)
        return self._graph

    def policy(self) -> PolicyEngine:
        """The policy file's engine (read anew each time: an edited file is seen at once)."""
        try:
            return PolicyEngine.load(self.settings.policy_file, strict_mode=self.settings.strict_mode)
        except PolicyFileError as exc:
            raise Unavailable(f"the policy file is unusable: {exc}") from None

    async def close(self) -> None:
        if self._graph is not None:
            await self._graph.close()
        if self._trail is not None:
            await self._trail.close()
        await self.redis.aclose()


def redis_trouble(exc: RedisError) -> Unavailable:
    return Unavailable(f"Redis is unavailable: {type(exc).__name__}: {exc}")
