"""The plugin as an author loads it (``pytest -p l9.testing``, in a folder of their own): the
servers of REDIS_URL / DATABASE_URL, a namespace per test, its keys deleted afterwards."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio
import pytest

from bus import open_client
from l9.devstack import StackEndpoints

pytestmark = pytest.mark.integration

AUTHOR_TESTS = """
import os
from pathlib import Path

import pytest

from agents.demo import Result, SquarerAgent, Task

pytestmark = pytest.mark.asyncio


async def test_one(l9_stack, l9_namespace, agent_harness):
    assert l9_stack.redis_url == os.environ["REDIS_URL"]
    assert l9_stack.database_url == os.environ["DATABASE_URL"]
    Path("namespaces").open("a").write(l9_namespace + "\\n")
    async with agent_harness(SquarerAgent) as h:
        await h.publish(Task(n=5))
        assert (await h.expect(Result)).payload.square == 25


async def test_two(l9_namespace, agent_harness):
    Path("namespaces").open("a").write(l9_namespace + "\\n")
    async with agent_harness("squarer") as h:
        await h.publish(Task(n=6))
        assert (await h.expect(Result)).payload.square == 36
"""


async def test_the_plugin_in_an_authors_folder(stack: StackEndpoints, tmp_path: Path) -> None:
    (tmp_path / "test_author.py").write_text(AUTHOR_TESTS)
    env = {"REDIS_URL": stack.redis_url, "DATABASE_URL": stack.database_url, "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "pytest", "-p", "l9.testing", "-p", "no:cacheprovider", "-q"]
    done = await anyio.to_thread.run_sync(
        partial(
            subprocess.run,
            [*command, "test_author.py"],
            cwd=tmp_path,
            env={**env, "HOME": str(tmp_path), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout
    first, second = (tmp_path / "namespaces").read_text().split()
    assert first != second, "a namespace per test"
    redis = await open_client(stack.redis_url)
    try:
        for namespace in (first, second):  # the streams, groups, windows and heartbeats: deleted
            assert [k async for k in redis.scan_iter(match=f"{namespace}:*")] == []
    finally:
        await redis.aclose()
