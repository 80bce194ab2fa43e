"""Episodic memory of the rules runtime on the real PostgreSQL: the migration creates the
agent's schema, table and index (and may run twice, or from two processes at once); records
append once per envelope and come back latest first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from agents.rules import Episode, Episodic, RuleError
from l9.devstack import StackEndpoints
from tests.integration.conftest import drop_database, new_database

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0


@pytest.fixture
async def database(stack: StackEndpoints) -> AsyncIterator[str]:
    """A fresh, empty database per test."""
    url = await new_database(stack)
    yield url
    await drop_database(stack, url)


async def test_the_migration_creates_the_agents_schema_table_and_index(database: str) -> None:
    first, second = Episodic(database, "fraud", "alerts"), Episodic(database, "fraud", "alerts")
    try:
        async with anyio.create_task_group() as tg:  # two processes starting together
            tg.start_soon(first.migrate)
            tg.start_soon(second.migrate)
        await first.migrate()  # and again: nothing to do
    finally:
        await first.close()
        await second.close()
    conn = await asyncpg.connect(database)
    try:
        columns = await conn.fetch(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'l9_agent_fraud' AND table_name = 'alerts' ORDER BY ordinal_position"
        )
        index = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes "
            "WHERE schemaname = 'l9_agent_fraud' AND indexname = 'alerts_key_at'"
        )
        key = await conn.fetchval(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = 'l9_agent_fraud.alerts'::regclass AND i.indisprimary"
        )
    finally:
        await conn.close()
    assert [tuple(c) for c in columns] == [
        ("envelope_id", "text", "NO"),
        ("key", "text", "NO"),
        ("at", "timestamp with time zone", "NO"),
        ("record", "jsonb", "NO"),
    ]
    assert key == "envelope_id"
    assert index is not None and "(key, at DESC)" in index


async def test_records_append_once_and_come_back_latest_first(database: str) -> None:
    episodes = Episodic(database, "fraud", "alerts")
    try:
        await episodes.migrate()
        assert await episodes.latest("acct-1") is None
        assert await episodes.append("acct-1", {"risk": 0.4}, "e-1", T0)
        assert await episodes.append("acct-1", {"risk": 0.9, "why": ["velocity"]}, "e-3", T0 + 60.25)
        assert await episodes.append("acct-1", {"risk": 0.7}, "e-2", T0 + 30)
        assert await episodes.append("acct-2", {"risk": 0.1}, "e-4", T0 + 90)
        # a retried handler appends again: nothing changes, not even with another record
        assert not await episodes.append("acct-1", {"risk": 0.4}, "e-1", T0)
        assert not await episodes.append("acct-1", {"risk": 1.0}, "e-1", T0 + 500)
        latest = await episodes.latest("acct-1")
        assert latest == Episode("e-3", "acct-1", T0 + 60.25, {"risk": 0.9, "why": ["velocity"]})
        history = await episodes.history("acct-1", 10)
        assert [(e.envelope_id, e.at, e.record) for e in history] == [
            ("e-3", T0 + 60.25, {"risk": 0.9, "why": ["velocity"]}),
            ("e-2", T0 + 30, {"risk": 0.7}),
            ("e-1", T0, {"risk": 0.4}),
        ]
        assert [e.envelope_id for e in await episodes.history("acct-1", 2)] == ["e-3", "e-2"]
        assert [e.envelope_id for e in await episodes.history("acct-2", 10)] == ["e-4"]
    finally:
        await episodes.close()


async def test_a_shared_pool_is_used_and_left_open(database: str) -> None:
    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        episodes = Episodic(pool, "sensors", "readings")
        await episodes.migrate()
        assert await episodes.append("s1", {"t": 21.5}, "e-1", T0)
        await episodes.close()
        assert await pool.fetchval('SELECT count(*) FROM "l9_agent_sensors"."readings"') == 1
    finally:
        await pool.close()


async def test_misuse_is_named_in_one_line(database: str) -> None:
    episodes = Episodic(database, "fraud", "never_migrated")
    try:
        with pytest.raises(
            RuleError, match=r"^episodic l9_agent_fraud.never_migrated: append: .*run migrate\(\)"
        ):
            await episodes.append("k", {}, "e-1", T0)
        with pytest.raises(
            RuleError, match=r"^episodic l9_agent_fraud.never_migrated: the record is not JSON"
        ):
            await episodes.append("k", {"x": float("inf")}, "e-1", T0)
        with pytest.raises(RuleError, match=r"limit must be 1 to 10000, got 0$"):
            await episodes.history("k", 0)
    finally:
        await episodes.close()
    for agent, table, what in [
        ("fraud", 'x"; DROP TABLE y; --', "is not a table name"),
        ("Fraud", "alerts", "is not a name"),
        ("fraud", "a" * 57, "is not a table name"),
        ("f" * 55, "alerts", "longer than PostgreSQL's 63"),
    ]:
        with pytest.raises(RuleError, match=what):
            Episodic(database, agent, table)
