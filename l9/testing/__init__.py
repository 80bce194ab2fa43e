"""Testing your own agents: a pytest plugin, an in-process harness, an in-memory mode.

Load it with ``pytest -p l9.testing`` (or ``pytest_plugins = ["l9.testing"]`` in the root
``conftest.py``); docs/TESTING.md walks through testing an agent with it.

* :func:`run_agents` (fixture ``agent_harness``): agent classes served in the test's
  process on the real Redis, as ``l9 agent run`` serves them; publish to them and await what
  they emit (:class:`AgentHarness`).
* :func:`run_in_memory` (fixture ``memory_harness``): the same harness over a fake Redis, for
  handler logic; no pending list, retries or dead letters (:mod:`l9.testing.memory`).
* The fixtures giving the servers, a namespace per test, settings and a subprocess
  environment: :mod:`l9.testing.plugin`.
"""

from .harness import (
    DEFAULT_TIMEOUT_S,
    AgentHarness,
    AgentSpec,
    Arrival,
    Build,
    HandlerFailed,
    HarnessTimeout,
    run_agents,
)
from .memory import memory_settings, run_in_memory
from .plugin import (
    TEST_TIMINGS,
    HarnessFactory,
    agent_harness,
    l9_env,
    l9_keyring,
    l9_namespace,
    l9_settings,
    l9_stack,
    memory_harness,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TEST_TIMINGS",
    "AgentHarness",
    "AgentSpec",
    "Arrival",
    "Build",
    "HandlerFailed",
    "HarnessFactory",
    "HarnessTimeout",
    "agent_harness",
    "l9_env",
    "l9_keyring",
    "l9_namespace",
    "l9_settings",
    "l9_stack",
    "memory_harness",
    "memory_settings",
    "run_agents",
    "run_in_memory",
]
