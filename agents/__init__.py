"""Agents: the base class, the process runner, and the agents that ship with L9."""

from .base import Agent, Context, handles
from .runtime import Runtime

__all__ = ["Agent", "Context", "Runtime", "handles"]
