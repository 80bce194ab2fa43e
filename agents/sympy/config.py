"""The SymPy worker's own configuration (built by ``l9.settings.Settings.sympy_config``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import GraphConfig
from .operations import ToolConfig


@dataclass(frozen=True)
class MetricsConfig:
    """Where the per-operation metrics go (PostgreSQL) and how they are buffered."""

    dsn: str
    admin_dsn: str
    capacity: int = 10_000
    interval_s: float = 1.0


@dataclass(frozen=True)
class SymPyConfig:
    tool: ToolConfig = field(default_factory=ToolConfig)
    workers: int = 2
    #: One request's pool work together (parse, key, compute), within its own deadline.
    timeout_s: float = 10.0
    memory_mb: int = 1024
    #: Kernel builds at a time, in the agent, outside the pool (:mod:`.builds`).
    builds: int = 1
    cache_ttl_s: int = 86_400
    cache_max_bytes: int = 1_000_000
    policy_file: Path | None = None
    strict_mode: bool = True
    graph: GraphConfig = field(default_factory=GraphConfig)
    #: None: no metrics written.
    metrics: MetricsConfig | None = None
