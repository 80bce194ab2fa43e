"""``l9 sympy ...`` against a real worker process: answers as JSON, refusals and silence as exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import anyio
import asyncpg
import pytest

from tests.conftest import ROOT, AgentProcess, wait_for

pytestmark = pytest.mark.integration


async def l9(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await anyio.run_process(
        [sys.executable, "-m", "l9", "sympy", *args], env=env, cwd=ROOT, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_command_line_asks_the_worker_and_reads_the_cache_counters(
    spawn: Callable[..., AgentProcess], agent_env: dict[str, str], admin_dsn: str
) -> None:
    agent_env = {**agent_env, "DATABASE_URL": admin_dsn, "L9_SYMPY_METRICS_FLUSH_S": "0.2"}
    spawn("sympy", env=agent_env)
    code, out, _ = await l9(agent_env, "simplify", "sin(x)**2 + cos(x)**2 + y + x")
    assert code == 0 and json.loads(out)["expr"] == "x + y + 1"
    code, out, _ = await l9(agent_env, "eval", "x**2*y", "--at", "x=1,2", "--at", "y=3,0.5")
    assert code == 0 and json.loads(out)["values"] == [3.0, 2.0]
    code, out, _ = await l9(agent_env, "simplify", "x + y + sin(x)**2 + cos(x)**2")
    assert code == 0 and json.loads(out)["cached"] is True
    code, out, _ = await l9(agent_env, "codegen", "x**2 + y", "--lang", "fortran", "--name", "f")
    assert code == 0 and "real(kind=8) function f(x, y)" in json.loads(out)["source"]
    code, _, err = await l9(agent_env, "simplify", "__import__('os').system('id')")
    assert code == 1 and "forbidden: forbidden_name at 1:1 (offset 0): expr: __import__ is not allowed" in err
    code, out, _ = await l9(agent_env, "stats", "--json")
    stats = json.loads(out)  # the worker counted its hit from memory right after replying
    assert stats["cache"]["operations"]["simplify"] == {"hits": 1, "misses": 1, "hit_ratio": 0.5}
    # misses: simplify, evaluate, generate_code; a refusal is never looked up
    assert stats["cache"]["total"]["misses"] == 3
    window = stats["window"]["operations"]
    assert (window["simplify"]["count"], window["simplify"]["errors"]) == (3, 1)
    assert window["simplify"]["hit_ratio"] == 0.5 and window["simplify"]["p50_ms"] > 0
    assert window["evaluate"]["count"] == window["generate_code"]["count"] == 1
    code, out, _ = await l9(agent_env, "stats")
    assert code == 0 and "last 60s (sympy.events)" in out and "cache since created" in out
    await wait_for(lambda: _metric_rows(admin_dsn, 5), timeout=60)
    code, out, _ = await l9(agent_env, "stats", "--since", "1h", "--json")
    totals = json.loads(out)["postgres"]
    assert totals["operations"]["simplify"]["count"] == 3 and totals["operations"]["simplify"]["errors"] == 1
    fortran = totals["codegen"]["fortran"]
    assert (fortran["count"], fortran["succeeded"]) == (1, 1) and 0 < fortran["p50_ms"] <= fortran["max_ms"]
    code, out, _ = await l9(agent_env, "stats", "--since", "1h")
    assert code == 0 and "(PostgreSQL l9_metrics)" in out and "codegen fortran" in out


async def _metric_rows(dsn: str, n: int) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) >= $1 FROM l9_metrics.sympy_metrics", n))
    except asyncpg.UndefinedTableError:  # not migrated yet
        return False
    finally:
        await conn.close()


async def test_no_worker_is_a_clear_exit_code(agent_env: dict[str, str]) -> None:
    code, _, err = await l9(agent_env, "expand", "(x+1)**2", "--deadline", "0.5")
    assert code == 2 and "no SymPy worker answered within 0.5s" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("codegen", "x + 1", "--name", 'os.system("id")'), "error: invalid: bad_argument: name: "),
        (("diff", "x**2", "--wrt", "__class__"), "error: invalid: bad_argument: wrt: "),
        (("simplify", "x\udc80"), "error: invalid: bad_argument: expr: "),
    ],
    ids=["name", "wrt", "lone-surrogate"],
)
async def test_a_bad_argument_is_one_line_naming_it(
    agent_env: dict[str, str], args: tuple[str, ...], expected: str
) -> None:
    code, _, err = await l9(agent_env, *args, "--deadline", "0.5")
    lines = [line for line in err.splitlines() if not line.startswith("{")]  # log lines are JSON
    assert code == 1 and len(lines) == 1 and lines[0].startswith(expected), err
    assert "Traceback" not in err and "pydantic" not in err
