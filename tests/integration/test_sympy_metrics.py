"""SymPy metrics in the real PostgreSQL: rows per operation and per code generation, written in
batches beside the replies; PostgreSQL away slows no reply and the rows arrive once it is back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from agents.sympy import OperationEvent, ParseRejected, SymPyTool
from bus import Keys, Publisher, RpcClient
from bus.connection import RedisClient
from bus.topology import SYMPY_EVENTS_STREAM as EVENTS_STREAM
from envelope import Signer, Verifier, decode, new_id
from memory.postgres import writer_dsn
from memory.postgres.metrics import Metric, MetricsWriter, OperationMetric, sympy_totals
from tests.conftest import AgentProcess, wait_for
from tests.integration.test_auditor import PgProxy, _proxied

pytestmark = pytest.mark.integration
FAST = {"L9_SYMPY_WORKERS": "1", "L9_SYMPY_METRICS_FLUSH_S": "0.2"}


@asynccontextmanager
async def sympy_tool(
    redis: RedisClient, keys: Keys, signer: Signer, verifier: Verifier, session: str
) -> AsyncIterator[SymPyTool]:
    async with RpcClient(redis, Publisher(redis, keys, signer), verifier) as rpc:
        # only catches a hang: a first request also waits for the agent to start (slow when loaded)
        yield SymPyTool(rpc, source="agent://test/caller", deadline_s=60, session=session)


async def rows(dsn: str, table: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(f"SELECT * FROM l9_metrics.{table} ORDER BY at, id")]
    finally:
        await conn.close()


async def count(dsn: str, table: str, n: int) -> bool:
    try:
        return len(await rows(dsn, table)) >= n
    except asyncpg.UndefinedTableError:  # the worker has not migrated yet
        return False


async def test_every_operation_and_code_generation_is_a_row(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    admin_dsn: str,
) -> None:
    started = datetime.now(UTC)
    spawn("sympy", env={**FAST, "DATABASE_URL": admin_dsn})
    async with sympy_tool(redis, keys, signer, verifier, "metrics-1") as tool:
        miss = await tool.evaluate("x**2 + 1", points={"x": [1, 2]}, backend="numpy")
        hit = await tool.evaluate("1 + x**2", points={"x": [1, 2]}, backend="numpy")
        code = await tool.generate_code("sin(x)*y", "fortran")
        with pytest.raises(ParseRejected):
            await tool.generate_code("__import__('os')", "c")
    await wait_for(lambda: count(admin_dsn, "sympy_metrics", 4), timeout=60)
    await wait_for(lambda: count(admin_dsn, "sympy_codegen_metrics", 2), timeout=60)
    ops = await rows(admin_dsn, "sympy_metrics")
    assert [(r["op"], r["backend"], r["cache_hit"], r["outcome"], r["error"]) for r in ops] == [
        ("evaluate", "numpy", False, "ok", None),
        ("evaluate", "numpy", True, "ok", None),
        ("generate_code", "fortran", False, "ok", None),
        ("generate_code", "c", False, "error", "forbidden.forbidden_name"),
    ]
    assert [r["expr_hash"] for r in ops] == [miss.expr_hash, hit.expr_hash, code.expr_hash, None]
    assert miss.expr_hash == hit.expr_hash
    assert all(r["session"] == "metrics-1" and r["requester"] == "agent://test/caller" for r in ops)
    assert all(r["duration_ms"] > 0 and started <= r["at"] <= datetime.now(UTC) for r in ops)
    events: Any = await redis.xrange(keys.stream(EVENTS_STREAM))
    published = [decode(fields, verifier)[0] for _, fields in events]
    # A row's id is its event's envelope id. Events go out with each request's ack, once its
    # handler is done (a code generation's graph write comes first): their order is not the rows'.
    assert {e.id: OperationEvent.model_validate(e.data).duration_ms for e in published} == {
        str(r["id"]): r["duration_ms"] for r in ops
    }
    codegen = await rows(admin_dsn, "sympy_codegen_metrics")
    assert [(r["op"], r["language"], r["success"], r["error"]) for r in codegen] == [
        ("generate_code", "fortran", True, None),
        ("generate_code", "c", False, "forbidden.forbidden_name"),
    ]
    assert [r["id"] for r in codegen] == [ops[2]["id"], ops[3]["id"]]
    totals = await sympy_totals(writer_dsn(admin_dsn), started - timedelta(seconds=1))
    assert totals["total"]["count"] == 4 and totals["total"]["errors"] == 1
    assert totals["operations"]["evaluate"]["hit_ratio"] == 0.5
    assert totals["codegen"]["fortran"]["succeeded"] == 1 and totals["codegen"]["c"]["succeeded"] == 0


async def test_postgres_away_slows_no_reply_and_the_rows_arrive_when_it_is_back(
    spawn: Callable[..., AgentProcess],
    redis: RedisClient,
    keys: Keys,
    signer: Signer,
    verifier: Verifier,
    admin_dsn: str,
) -> None:
    _, socket_path = _proxied(admin_dsn, 0)
    proxy = PgProxy(socket_path)
    await proxy.start()
    url, _ = _proxied(admin_dsn, proxy.port)
    worker = spawn("sympy", env={**FAST, "DATABASE_URL": url})
    async with sympy_tool(redis, keys, signer, verifier, "metrics-2") as tool:
        assert (await tool.expand("(x + 1)**2")).expr == "x**2 + 2*x + 1"
        await wait_for(lambda: count(admin_dsn, "sympy_metrics", 1), timeout=60)
        await proxy.cut()
        for i in range(40):  # every reply arrives with PostgreSQL away (a hang: the 60 s deadline)
            assert (await tool.evaluate(f"x + {i}", points={"x": [1]})).values == [1.0 + i]
        await wait_for(lambda: any(e.get("event") == "metrics.write_failed" for e in worker.log_events()))
        assert len(await rows(admin_dsn, "sympy_metrics")) == 1, "nothing was written while it was away"
        assert worker.proc.poll() is None
        await proxy.start()  # the same port
        await wait_for(lambda: count(admin_dsn, "sympy_metrics", 41), timeout=120)
    assert sorted(r["op"] for r in await rows(admin_dsn, "sympy_metrics")) == ["evaluate"] * 40 + ["expand"]
    assert worker.terminate() == 0
    await proxy.cut()


def metric(i: int) -> OperationMetric:
    return OperationMetric(
        new_id(), new_id(), "s", "simplify", "sympy", f"h{i}", float(i), False, "ok", None, "agent://t/t",
        datetime.now(UTC),
    )  # fmt: skip


async def test_a_full_buffer_drops_the_oldest_and_a_batch_is_written_once(admin_dsn: str) -> None:
    _, socket_path = _proxied(admin_dsn, 0)
    proxy = PgProxy(socket_path)
    await proxy.start()
    url, _ = _proxied(admin_dsn, proxy.port)
    await proxy.cut()
    writer = MetricsWriter(writer_dsn(url), admin_dsn=url, capacity=3, batch_rows=2)
    for i in range(5):
        writer.add(metric(i))
    assert (writer.pending, writer.dropped) == (3, 2)
    with pytest.raises(Exception, match="unavailable"):
        await writer.flush()
    assert writer.pending == 3, "a failed write keeps the rows"
    await proxy.start()
    assert await writer.flush() == 3 and writer.pending == 0
    again = [metric(9)]
    assert await writer._write(again) == 1 and await writer._write(again) == 0, "a batch written twice"
    await writer.close()
    stored = await rows(admin_dsn, "sympy_metrics")
    assert [r["expr_hash"] for r in stored] == ["h2", "h3", "h4", "h9"], "the two oldest were dropped"
    await proxy.cut()


class Busy(MetricsWriter):
    """A writer whose every write sees a new row arrive meanwhile."""

    async def _write(self, batch: Sequence[Metric]) -> int:
        self.add(metric(100 + self.pending))
        return await super()._write(batch)


async def test_a_flush_writes_what_was_buffered_and_leaves_later_rows_to_the_next(admin_dsn: str) -> None:
    writer = Busy(writer_dsn(admin_dsn), admin_dsn=admin_dsn, batch_rows=2)
    for i in range(3):
        writer.add(metric(i))
    assert await writer.flush() == 3 and writer.pending == 2, "a busy worker's flush must end"
    assert await writer.flush() == 2 and writer.pending == 1
    await writer.close()
