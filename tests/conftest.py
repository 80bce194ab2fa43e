"""Shared fixtures: the real embedded stack (or REDIS_URL/DATABASE_URL), namespaces, agent processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
from redis.typing import StreamRangeResponse, XReadGroupResponse

from bus import DeliveryPolicy, Keys, open_client
from bus.connection import RedisClient
from envelope import Signer, Verifier
from l9.devcluster import LocalCluster
from l9.devstack import EmbeddedStack, StackEndpoints

#: The delivery policy of in-process bus tests: small batches, quick retries, short leases.
FAST = DeliveryPolicy(
    max_in_flight=32,
    concurrency=4,
    block_ms=100,
    retry_backoff_ms=50,
    retry_backoff_max_ms=400,
    lease_ms=1500,
    heartbeat_ms=100,
    drain_timeout_s=2,
)

ROOT = Path(__file__).resolve().parents[1]
#: The shared development key (the default policy's identity.shared_keys): the HMAC mode.
KEYRING = {"dev": b"integration-test-secret"}

StreamEntry = tuple[bytes, dict[bytes, bytes]]
"""A stream entry as the tests' clients (no ``decode_responses``) return it: its id and its fields."""


def stream_entries(reply: StreamRangeResponse | None) -> list[StreamEntry]:
    """An XRANGE/XREVRANGE reply, typed as what it is here: redis-py's type also covers
    ``decode_responses`` clients (str) and the ``(None, None)`` of deleted entries, which
    only XREADGROUP/XCLAIM replies for an already pending id can hold."""
    assert reply is not None
    return cast(list[StreamEntry], reply)


def read_reply(reply: XReadGroupResponse) -> list[tuple[bytes, list[StreamEntry]]]:
    """An XREADGROUP/XREAD reply in redis-py's legacy (RESP2) shape, the tests' clients' default:
    ``[[stream, entries], ...]``, ``[]`` when nothing was read."""
    assert isinstance(reply, list)
    return cast(list[tuple[bytes, list[StreamEntry]]], reply)


#: ``cluster``: the integration tests marked ``cluster`` run on a local Redis Cluster
#: (3 masters + 3 replicas, ``l9.devcluster``) instead of the standalone Redis.
ON_CLUSTER = os.environ.get("L9_TEST_REDIS") == "cluster"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEndpoints]:
    """Real Redis 8 + FalkorDB and PostgreSQL: the embedded stack, or the servers in the env;
    with ``L9_TEST_REDIS=cluster``, a local Redis Cluster beside the embedded PostgreSQL."""
    redis_url, database_url = os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")
    home = tmp_path_factory.mktemp("stack")
    embedded = EmbeddedStack(home)
    if ON_CLUSTER:  # the local cluster, whatever REDIS_URL says
        cluster = LocalCluster(home)
        try:
            yield StackEndpoints(cluster.up().redis_url, database_url or embedded.up_postgres())
        finally:
            cluster.down()
            embedded.down()
        return
    if redis_url and database_url:
        yield StackEndpoints(redis_url, database_url)
        return
    try:
        yield embedded.up()
    finally:
        embedded.down()


@pytest.fixture
def namespace() -> str:
    """A fresh key namespace per test, so tests never see each other's streams."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def keys(namespace: str) -> Keys:
    return Keys(namespace)


@pytest.fixture
async def redis(stack: StackEndpoints, keys: Keys) -> AsyncIterator[RedisClient]:
    """A client of the tests' Redis: a cluster client when it is a cluster."""
    client = await open_client(stack.redis_url)
    yield client
    doomed = [k async for k in client.scan_iter(match=f"{keys.namespace}:*")]
    if doomed:
        await client.delete(*doomed)
    await client.aclose()


@pytest.fixture
def signer() -> Signer:
    return Signer(KEYRING, "dev")


@pytest.fixture
def verifier() -> Verifier:
    return Verifier(KEYRING)


@pytest.fixture
def agent_env(stack: StackEndpoints, namespace: str, tmp_path: Path) -> dict[str, str]:
    """Environment for agent processes: this test's namespace and quick timings."""
    return {
        **os.environ,
        "REDIS_URL": stack.redis_url,
        "DATABASE_URL": stack.database_url,
        "L9_NAMESPACE": namespace,
        "L9_HOME": str(tmp_path / "home"),
        "L9_SIGNING_KEYS": json.dumps({k: v.decode() for k, v in KEYRING.items()}),
        "L9_SIGNING_KEY_ID": "dev",
        "L9_HEARTBEAT_MS": "200",
        "L9_LEASE_MS": "5000",
        "L9_RETRY_BACKOFF_MS": "50",
        "L9_BLOCK_MS": "200",
        "L9_LOG_LEVEL": "info",
        "PYTHONPATH": str(ROOT),
    }


class AgentProcess:
    """``l9 agent run`` as a real OS process, its log captured to a file."""

    def __init__(self, spec: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "l9", "agent", "run", spec, *args],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_events(self) -> list[dict[str, object]]:
        events = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def spawn(agent_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    procs: list[AgentProcess] = []

    def start(spec: str, *args: str, env: dict[str, str] | None = None) -> AgentProcess:
        log = tmp_path / f"agent-{len(procs)}.log"
        proc = AgentProcess(spec, {**agent_env, **(env or {})}, log, *args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.close()


def run_l9(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m l9 ARGS`` from the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "l9", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A local TCP port nobody listens on (just released by the OS)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(predicate: Callable[[], object], timeout: float = 120.0, interval: float = 0.05) -> None:
    """Poll an async or sync predicate until it is truthy, or fail the test. The default deadline
    only catches a hang: on a loaded 2-core machine an agent process alone can take tens of
    seconds to start."""
    import inspect

    import anyio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await anyio.sleep(interval)
