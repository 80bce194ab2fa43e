"""Configuration shared by several agents' own configs (built by ``l9.settings``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GraphConfig:
    """Where an agent's graph writes go (what :func:`memory.graph.open_graph` reads)."""

    namespace: str = "l9"
    neo4j_url: str | None = None
    neo4j_user: str = "neo4j"
    neo4j_password: str | None = None
    neo4j_database: str | None = None
    graph_url: str | None = None
    graph_name: str | None = None
    graph_timeout_s: float = 5.0
    graph_hook_timeout_s: float = 1.0
