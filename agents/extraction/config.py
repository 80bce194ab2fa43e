"""The extraction agents' own configurations (built by ``l9.settings.Settings``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import GraphConfig


@dataclass(frozen=True)
class PlannerConfig:
    policy_file: Path | None = None
    strict_mode: bool = True
    graph: GraphConfig = field(default_factory=GraphConfig)
    #: The stack the baseline probes; None: the probes must be given to the planner.
    redis_url: str | None = None
    #: None: no PostgreSQL configured (its probe fails; the planner never starts one).
    database_url: str | None = None


@dataclass(frozen=True)
class EnforcerConfig:
    policy_file: Path | None = None
    strict_mode: bool = True


@dataclass(frozen=True)
class GeneratorConfig:
    extractions_dir: Path = Path("extractions")
    sympy_deadline_s: float = 30.0


@dataclass(frozen=True)
class ValidatorConfig:
    test_timeout_s: float = 300.0
