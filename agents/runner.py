"""The agents that ship with L9, by name, and :func:`load_agent` (``l9 agent run NAME``).

The process itself (endpoints, config, consumer name, signals) is wired by ``l9.start``.
"""

from __future__ import annotations

import importlib

from .base import Agent

#: Agents that ship with L9, by name.
BUILTIN: dict[str, str] = {
    "squarer": "agents.demo:SquarerAgent",
    "summer": "agents.demo:SummerAgent",
    "sympy": "agents.sympy.agent:SymPyAgent",
    "planner": "agents.extraction.planner_agent:PlannerAgent",
    "generator": "agents.extraction.generator.agent:GeneratorAgent",
    "enforcer": "agents.extraction.enforcer:EnforcerAgent",
    "validator": "agents.extraction.validator.agent:ValidatorAgent",
}


def load_agent(spec: str) -> type[Agent]:
    """An agent class from a built-in name or ``package.module:Class``."""
    target = BUILTIN.get(spec, spec)
    if ":" not in target:
        raise ValueError(f"unknown agent {spec!r}: use one of {sorted(BUILTIN)} or module:Class")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ValueError(f"{target} is not an Agent subclass")
    if not cls.consumes:
        raise ValueError(f"agent {cls.name!r} consumes no stream")
    return cls
