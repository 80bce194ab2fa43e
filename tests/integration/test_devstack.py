"""The embedded stack against real servers: Redis 8 + FalkorDB and PostgreSQL from wheels."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from l9.devstack import EmbeddedStack, StackEndpoints, resolve_endpoints
from l9.settings import Settings

pytestmark = pytest.mark.integration


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def _sql(url: str, *statements: str) -> Any:
    """Run the statements in one connection; the value of the last one."""

    async def run() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for sql in statements[:-1]:
                await conn.execute(sql)
            return await conn.fetchval(statements[-1])
        finally:
            await conn.close()

    return asyncio.run(run())


def _redis_servers(home: Path) -> list[psutil.Process]:
    """Live redis-server processes serving ``home`` (redis rewrites its cmdline; use the cwd)."""
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if proc.info["name"] != "redis-server" or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if Path(proc.cwd()) == home / "redis":
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(tmp_path_factory.mktemp("devstack"))
    try:
        yield s
    finally:
        s.down()


def test_lifecycle_reuse_and_persistence(stack: EmbeddedStack) -> None:
    ep = stack.up()
    first = stack.status()
    assert first["running"] is True
    redis_status, pg_status = first["redis"], first["postgres"]
    assert isinstance(redis_status, dict) and isinstance(pg_status, dict)
    assert redis_status["graph_module"] is True
    assert int(str(redis_status["version"]).split(".")[0]) >= 8
    assert redis_status["url"] == ep.redis_url and pg_status["url"] == ep.database_url

    # A second up() reuses the same servers.
    assert stack.up() == ep
    again = stack.status()
    assert again["redis"] == redis_status and again["postgres"] == pg_status
    assert len(_redis_servers(stack.home)) == 1
    assert json.loads((stack.home / "stack.json").read_text())["redis"]["url"] == ep.redis_url

    r = _redis(ep.redis_url)
    assert r.ping()
    reply = r.execute_command("GRAPH.QUERY", "g", "RETURN 1")  # type: ignore[no-untyped-call]
    assert reply[1] == [[1]]
    r.set("devstack:kept", "yes")
    r.close()
    assert _sql(ep.database_url, "SELECT 1") == 1
    assert _sql(ep.database_url, "SELECT current_database()") == "l9"
    _sql(ep.database_url, "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (42)", "SELECT 1")

    assert stack.down() is True
    _assert_down(stack, ep)
    assert stack.down() is False

    # Back up: same port, data kept (redis AOF, postgres PGDATA).
    ep2 = stack.up()
    assert ep2 == ep
    r = _redis(ep2.redis_url)
    assert r.get("devstack:kept") == b"yes"
    r.close()
    assert _sql(ep2.database_url, "SELECT v FROM kept") == 42
    pids = stack.status()
    assert pids["running"] is True
    assert pids["redis"] != redis_status  # new processes


def _assert_down(stack: EmbeddedStack, ep: StackEndpoints) -> None:
    with pytest.raises(redis.ConnectionError):
        _redis(ep.redis_url).ping()
    with pytest.raises(OSError):  # refused, or the socket file is gone
        _sql(ep.database_url, "SELECT 1")
    status = stack.status()
    assert status["running"] is False
    assert not _redis_servers(stack.home)


def test_concurrent_up_starts_one_stack(stack: EmbeddedStack) -> None:
    script = (
        "import json, sys; from pathlib import Path; from l9.devstack import EmbeddedStack; "
        "s = EmbeddedStack(Path(sys.argv[1])); s.up(); st = s.status(); "
        "print(json.dumps([st['redis']['pid'], st['postgres']['pid']]))"
    )
    cmd = [sys.executable, "-c", script, str(stack.home)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    first, second = (json.loads(out.strip().splitlines()[-1]) for out in outputs)
    assert first == second and None not in first
    assert len(_redis_servers(stack.home)) == 1


def test_resolve_endpoints_fills_only_what_is_missing(
    stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REDIS_URL", "L9_REDIS_URL", "DATABASE_URL", "L9_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    given = "redis://example.invalid:1/0"
    settings = Settings.model_validate({"REDIS_URL": given, "home": str(stack.home)})
    ep = resolve_endpoints(settings)
    assert ep.redis_url == given
    assert _sql(ep.database_url, "SELECT 1") == 1
    status = stack.status()
    assert status["postgres"]["running"] is True  # type: ignore[index]
    assert status["redis"]["running"] is False  # type: ignore[index]

    both = Settings.model_validate({"REDIS_URL": given, "DATABASE_URL": "postgresql://x/y"})
    assert resolve_endpoints(both) == StackEndpoints(given, "postgresql://x/y")
