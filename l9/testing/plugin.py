"""The fixtures of the ``l9.testing`` pytest plugin (``-p l9.testing``; docs/TESTING.md).

============== ======== =====================================================================
fixture        scope    what it gives
============== ======== =====================================================================
l9_stack       session  the servers: ``REDIS_URL`` + ``DATABASE_URL`` when both are set, else
                        the embedded stack of ``L9_HOME`` when it is running (reused, left
                        running), else a fresh embedded stack of the session (stopped after)
l9_namespace   test     a fresh key namespace (``t`` + 12 hex digits)
l9_keyring     session  the HMAC keyring of the session: key ``dev``, a random secret
l9_settings    test     ``Settings`` on the stack, in the namespace, with that key and quick
                        delivery timings; the namespace's keys are deleted after the test
l9_env         test     the environment of an ``l9`` subprocess with those same settings
agent_harness  test     ``agent_harness(*agents)``: agents run in-process on the stack
                        (:func:`l9.testing.harness.run_agents`), an async context manager
memory_harness test     ``memory_harness(*agents)``: the same without servers
                        (:func:`l9.testing.memory.run_in_memory`)
============== ======== =====================================================================

Every fixture is synchronous: the tests themselves are async (pytest-asyncio or anyio's
plugin) and enter the harness with ``async with``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from bus import DeliveryPolicy
from l9.devstack import EmbeddedStack, StackEndpoints
from l9.settings import Settings

from .harness import AgentHarness, AgentSpec, Build, run_agents
from .memory import run_in_memory

#: The delivery timings of the tests' agents (settings field -> value): quick retries,
#: short leases, small batches. ``l9_env`` gives them to subprocesses as ``L9_*`` variables.
TEST_TIMINGS: dict[str, Any] = {
    "batch_size": 32,
    "concurrency": 4,
    "block_ms": 100,
    "max_deliveries": 3,
    "retry_backoff_ms": 50,
    "retry_backoff_max_ms": 400,
    "lease_ms": 5000,
    "heartbeat_ms": 200,
    "drain_timeout_s": 5,
}


class HarnessFactory(Protocol):
    """What ``agent_harness`` and ``memory_harness`` give: call it with the agents to run."""

    def __call__(
        self, *agents: AgentSpec, policy: DeliveryPolicy | None = None, build: Build | None = None
    ) -> AbstractAsyncContextManager[AgentHarness]: ...


@pytest.fixture(scope="session")
def l9_stack() -> Iterator[StackEndpoints]:
    """The servers of the session (see the module doc)."""
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    if redis_url and database_url:
        yield StackEndpoints(redis_url, database_url)
        return
    developer = EmbeddedStack(Settings().home_dir)
    if developer.status()["running"]:  # `l9 dev up` of this folder: reused, left running
        yield developer.up()
        return
    home = Path(tempfile.mkdtemp(prefix="l9-stack-"))
    stack = EmbeddedStack(home)
    try:
        yield stack.up()
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def l9_namespace() -> str:
    """A fresh key namespace per test: tests never see each other's streams."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def l9_keyring() -> dict[str, bytes]:
    """The session's HMAC keyring: ``dev``, the default policy's shared development key id."""
    return {"dev": secrets.token_hex(32).encode()}


@pytest.fixture
def l9_settings(
    l9_stack: StackEndpoints, l9_namespace: str, l9_keyring: dict[str, bytes], tmp_path: Path
) -> Iterator[Settings]:
    """Settings of this test on the stack; the namespace's keys are deleted after it."""
    yield Settings(
        redis_url=l9_stack.redis_url,
        database_url=l9_stack.database_url,
        namespace=l9_namespace,
        signing_scheme="hmac",
        signing_keys={k: v.decode() for k, v in l9_keyring.items()},
        signing_key_id="dev",
        home=tmp_path / "l9-home",
        **TEST_TIMINGS,
    )
    drop_namespace(l9_stack.redis_url, l9_namespace)


@pytest.fixture
def l9_env(l9_settings: Settings) -> dict[str, str]:
    """The environment of an ``l9`` subprocess (``l9 agent run``, ``l9 publish``...) of this test."""
    return {
        **os.environ,
        "REDIS_URL": l9_settings.redis_url or "",
        "DATABASE_URL": l9_settings.database_url or "",
        "L9_NAMESPACE": l9_settings.namespace,
        "L9_HOME": str(l9_settings.home_dir),
        "L9_SIGNING_SCHEME": "hmac",
        "L9_SIGNING_KEYS": json.dumps(l9_settings.signing_keys),
        "L9_SIGNING_KEY_ID": l9_settings.signing_key_id,
        **{f"L9_{name.upper()}": str(value) for name, value in TEST_TIMINGS.items()},
    }


@pytest.fixture
def agent_harness(l9_settings: Settings) -> HarnessFactory:
    """``async with agent_harness(MyAgent, "sympy") as h``: the agents in this process, on the stack."""

    def start(
        *agents: AgentSpec, policy: DeliveryPolicy | None = None, build: Build | None = None
    ) -> AbstractAsyncContextManager[AgentHarness]:
        return run_agents(*agents, settings=l9_settings, policy=policy, build=build)

    return start


@pytest.fixture
def memory_harness() -> HarnessFactory:
    """``async with memory_harness(MyAgent) as h``: the agents' handlers without servers."""

    def start(
        *agents: AgentSpec, policy: DeliveryPolicy | None = None, build: Build | None = None
    ) -> AbstractAsyncContextManager[AgentHarness]:
        if policy is not None:
            raise ValueError("the memory mode has no delivery policy (no retries, no pending list)")
        return run_in_memory(*agents, build=build)

    return start


def drop_namespace(url: str, namespace: str) -> None:
    """Delete every key of ``namespace`` (on a cluster, on every master)."""
    client: redis.Redis | redis.RedisCluster = redis.Redis.from_url(url)
    try:
        if client.info("cluster").get("cluster_enabled"):
            client.close()
            client = redis.RedisCluster.from_url(url)
        for key in client.scan_iter(match=f"{namespace}:*", count=1000):
            client.delete(key)
    finally:
        client.close()
